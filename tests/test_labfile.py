"""The lab file: the example validates; every kind of bad input gets one clear line, exit 2, no traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from homelab.lab import load_lab
from homelab.lab.schema import lab_schema
from tests.harness.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example" / "lab.yml"
INVALID = sorted((REPO / "tests" / "labs" / "invalid").glob("*.yml"))
EXPECT = re.compile(r"^# expect: (\d+): ([^:]*): (.*)$")


def test_example_lab_validates() -> None:
    result = run_cli("validate", lab=EXAMPLE)
    assert (result.exit_code, result.stderr) == (0, "")
    assert "valid" in result.stdout
    lab = load_lab(EXAMPLE)
    assert lab.vms[0].stacks == ["traefik", "portainer", "media", "homepage"]
    assert lab.vms[0].disk == 64 * 1024**3


def test_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_lab_gets_one_clear_line(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    match = EXPECT.match(header)
    assert match, f"{path.name} needs a '# expect: LINE: PATH: TEXT' first line"
    line, key, text = match.groups()
    result = run_cli("validate", lab=path)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert lines[0].startswith(prefix), f"{lines[0]!r} does not start with {prefix!r}"
    assert text in lines[0]
    assert "Traceback" not in result.stderr


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    lab.write_text(
        (REPO / "tests" / "labs" / "base.yml")
        .read_text()
        .replace("memory: 2048", "memory: 12")
        .replace("ip: 10.10.0.11", "ip: 10.10.0.10")
    )
    result = run_cli("validate", lab=lab)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{lab}:15: vms[0].memory: 12 is too small: must be at least 256 "
        "(an integer number of MiB, 256 or more, e.g. 4096)",
    ]
    # vms[0] is not valid, so its address is not compared with the others' until it is
    lab.write_text(lab.read_text().replace("memory: 12", "memory: 1024").replace("name: db", "name: web"))
    result = run_cli("validate", lab=lab)
    assert result.exit_code == 2
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == ["vms[1].name", "vms[1].ip"]


def test_model_errors_and_the_checks_of_the_valid_parts_are_reported_in_one_run(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    text = (
        (REPO / "tests" / "labs" / "base.yml")
        .read_text()
        .replace("memory: 2048", "memory: lots")
        .replace("  - name: db\n", "  - name: db\n    vmid: 9001\n")
        .replace("ip: 10.10.0.11", "ip: 10.10.1.11")
    )
    lab.write_text(text)
    result = run_cli("validate", lab=lab)
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"{lab}:15: vms[0].memory: must be an integer, found the text 'lots' "
        "(an integer number of MiB, 256 or more, e.g. 4096)",
        f"{lab}:20: vms[1].vmid: 9001 is inside templates[0].vmid_range",
        f"{lab}:22: vms[1].ip: 10.10.1.11 is outside network.subnet 10.10.0.0/24",
    ]


def test_checks_that_need_a_part_that_is_not_valid_wait_for_it(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    text = (
        (REPO / "tests" / "labs" / "base.yml")
        .read_text()
        .replace("subnet: 10.10.0.0/24", "subnet: 10.10.0.0/33")
        .replace("  - name: base\n", "  - name: base\n    vmid_range: [9000]\n")
        .replace("  - name: db\n", "  - name: db\n    vmid: 9001\n    template: base\n")
        .replace("ip: 10.10.0.11", "ip: 10.10.1.11")
    )
    lab.write_text(text)
    result = run_cli("validate", lab=lab)
    assert result.exit_code == 2
    # no address is compared with a subnet that is not valid, no vmid with a range, no template name looked up
    assert [line.split(": ")[1] for line in result.stderr.splitlines()] == [
        "network.subnet",
        "templates[0].vmid_range[1]",
    ]


def test_lab_path_from_environment_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("validate")
    assert result.exit_code == 2 and result.stderr.startswith("lab.yml: no such file")
    monkeypatch.setenv("HOMELAB_LAB", str(EXAMPLE))
    result = run_cli("validate")
    assert result.exit_code == 0 and str(EXAMPLE) in result.stdout


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    result = run_cli("validate", lab=tmp_path)
    assert (result.exit_code, result.stderr.strip()) == (2, f"{tmp_path}: is a folder, not a lab file")
    binary = tmp_path / "lab.yml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    result = run_cli("validate", lab=binary)
    assert (result.exit_code, result.stderr.strip()) == (2, f"{binary}:2: not UTF-8 text")


def test_validate_never_changes_the_file(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    original = (REPO / "tests" / "labs" / "invalid" / "memory_not_int.yml").read_bytes()
    lab.write_bytes(original)
    run_cli("validate", lab=lab)
    assert lab.read_bytes() == original


@pytest.mark.parametrize("name", ["disk_with_space", "not_yaml", "top_level_list"])
def test_real_command_exits_2_without_traceback(name: str) -> None:
    path = REPO / "tests" / "labs" / "invalid" / f"{name}.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "homelab", "--lab", str(path), "validate"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_unexpected_error_goes_to_debug_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import homelab.lab as labfile  # the App loads the lab through homelab.lab.load_lab

    def boom(path: Path) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(labfile, "load_lab", boom)
    result = run_cli("validate", lab=EXAMPLE)
    assert result.exit_code == 1
    assert "unexpected error: RuntimeError: disk on fire" in result.stderr
    log = tmp_path / "state" / "debug.log"
    assert str(log) in result.stderr
    assert "Traceback" in log.read_text() and "Traceback" not in result.stderr


def test_schema_matches_models_and_the_committed_copy() -> None:
    result = run_cli("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == lab_schema()
    assert set(schema["required"]) == {"name", "proxmox", "network", "templates"}
    assert schema["additionalProperties"] is False
    committed = json.loads((REPO / "inventories" / "lab.schema.json").read_text())
    assert committed == schema, "run: homelab schema > inventories/lab.schema.json"
    assert EXAMPLE.read_text().startswith("# yaml-language-server: $schema=../lab.schema.json")


def test_schema_accepts_the_example() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), lab_schema())


def test_help_lists_commands_without_importing_heavy_modules() -> None:
    code = (
        "import sys; from homelab.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('proxmoxer', 'paramiko', 'ansible_runner', 'pydantic', 'rich') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "validate" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0 and re.match(r"homelab, version \d+\.\d+\.\d+", result.stdout)


def test_a_pasted_token_secret_is_never_echoed() -> None:
    result = run_cli("validate", lab=REPO / "tests" / "labs" / "invalid" / "token_with_secret.yml")
    assert result.exit_code == 2 and "secret" in result.stderr
    assert "9f0c1d2e" not in result.stdout + result.stderr


# Hostile lab files: each is refused in one line, quickly and in little memory. The bounds asserted are loose
# (a noisy machine), yet far below what loading these files cost before they were refused: an alias bomb kept
# validate busy for minutes, 10000 nested "[" ended in a RecursionError, a 16 MB file took 27 s.
BASE = (REPO / "tests" / "labs" / "base.yml").read_text()
WEB_TAGS = "    stacks: [traefik]\n"  # the line after which the first VM's tags go


def _line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def alias_bomb() -> tuple[str, int, str, str]:
    levels = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    text = BASE.replace("vms:\n", "x-anchors:\n" + "\n".join(levels) + "\nvms:\n").replace(
        WEB_TAGS, WEB_TAGS + "    tags: *l9\n"
    )
    # l0..l3 expand to 8302 values; l4's first alias passes 10000
    return text, _line_of(text, "&l4"), "x-anchors.l4[0]", "aliases expand the file to more than 10000 values"


def many_aliases() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags: [&t web" + ", *t" * 100_000 + "]\n")
    return text, _line_of(text, "tags:"), "vms[0].tags[1001]", "more than 1000 aliases"


def many_values() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags: [" + ", ".join(["web"] * 100_000) + "]\n")
    return text, _line_of(text, "tags:"), "vms[0].tags[", "the file has more than 10000 values"


def alias_loop() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags: &loop [web, *loop]\n")
    return text, _line_of(text, "tags:"), "vms[0].tags[1]", "alias *loop is inside its own anchor &loop"


def deep_lists() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags: " + "[" * 10_000 + "]" * 10_000 + "\n")
    return text, _line_of(text, "tags:"), "vms[0].tags", "nested more than 64 levels deep"


def deep_mappings() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags: " + "{a: " * 10_000 + "b" + "}" * 10_000 + "\n")
    return text, _line_of(text, "tags:"), "vms[0].tags", "nested more than 64 levels deep"


def deep_block_lists() -> tuple[str, int, str, str]:
    text = BASE.replace(WEB_TAGS, WEB_TAGS + "    tags:\n      " + "- " * 10_000 + "web\n")
    return text, _line_of(text, "tags:") + 1, "vms[0].tags[0]", "nested more than 64 levels deep"


HOSTILE = [alias_bomb, many_aliases, many_values, alias_loop, deep_lists, deep_mappings, deep_block_lists]


def validate_measured(path: Path) -> tuple[int, str, str, float, int]:
    """Run `homelab --lab PATH validate`: exit code, stdout, stderr, seconds, peak bytes allocated.

    Timed in a run of its own: tracing every allocation makes Python several times slower.
    """
    start = time.perf_counter()
    result = run_cli("validate", lab=path)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        again = run_cli("validate", lab=path)
        assert (again.exit_code, again.stdout, again.stderr) == (result.exit_code, result.stdout, result.stderr)
        return result.exit_code, result.stdout, result.stderr, seconds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", HOSTILE, ids=[make.__name__ for make in HOSTILE])
def test_a_hostile_lab_file_is_refused_in_one_line_quickly(tmp_path: Path, make: Any) -> None:
    text, line, key, words = make()
    lab = tmp_path / "lab.yml"
    lab.write_text(text)
    code, out, err, seconds, peak = validate_measured(lab)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1, err[:500]
    assert err.startswith(f"{lab}:{line}: {key}"), err[:500]
    assert words in err
    assert seconds < 5, f"{seconds:.1f} s"
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_a_huge_lab_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    filler = "".join(f"# note {i}: {'x' * 60}\n" for i in range(40_000))  # 2.8 MB of text
    lab.write_text(BASE + filler)
    with lab.open("r+b") as file:
        file.truncate(4 * 2**30)  # and then 4 GiB, sparse: reading all of it would show in time and memory
    limit_line = (BASE + filler).encode()[: 2**20].count(b"\n") + 1
    code, out, err, seconds, peak = validate_measured(lab)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"{lab}:{limit_line}: the file goes on past 1 MiB here: a lab file is a few KB"]
    assert seconds < 5, f"{seconds:.1f} s"
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_aliases_and_merge_keys_still_work_and_errors_point_where_the_value_is_written(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    vms = (
        "vms:\n"
        "  - &web {name: web, cores: 1, memory: 100, tags: [front]}\n"
        "  - {<<: *web, name: db, memory: 1024}\n"
        "  - {<<: *web, name: cache}\n"
    )
    lab.write_text(BASE.split("vms:\n")[0] + vms)
    result = run_cli("validate", lab=lab)
    assert result.exit_code == 2
    # cache's memory is web's (line 13); db's own memory overrides it
    assert [line.split(": ")[:2] for line in result.stderr.splitlines()] == [
        [f"{lab}:13", "vms[0].memory"],
        [f"{lab}:13", "vms[2].memory"],
    ]
    lab.write_text(lab.read_text().replace("memory: 100", "memory: 512"))
    result = run_cli("validate", lab=lab)
    assert (result.exit_code, result.stderr) == (0, "")
    loaded = load_lab(lab)
    assert [(vm.name, vm.cores, vm.memory, vm.tags) for vm in loaded.vms] == [
        ("web", 1, 512, ["front"]),
        ("db", 1, 1024, ["front"]),
        ("cache", 1, 512, ["front"]),
    ]
