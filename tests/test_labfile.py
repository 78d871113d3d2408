"""The lab file: the example validates; every kind of bad input gets one clear line, exit 2, no traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from homelab.cli import cli
from homelab.lab import load_lab
from homelab.lab.schema import lab_schema

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example" / "lab.yml"
INVALID = sorted((REPO / "tests" / "labs" / "invalid").glob("*.yml"))
EXPECT = re.compile(r"^# expect: (\d+): ([^:]*): (.*)$")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_example_lab_validates() -> None:
    code, out, err = run("--lab", str(EXAMPLE), "validate")
    assert (code, err) == (0, "")
    assert "valid" in out
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
    code, out, err = run("--lab", str(path), "validate")
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert lines[0].startswith(prefix), f"{lines[0]!r} does not start with {prefix!r}"
    assert text in lines[0]
    assert "Traceback" not in err


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    lab.write_text(
        (REPO / "tests" / "labs" / "base.yml")
        .read_text()
        .replace("memory: 2048", "memory: 12")
        .replace("ip: 10.10.0.11", "ip: 10.10.0.10")
    )
    code, _, err = run("--lab", str(lab), "validate")
    assert code == 2
    assert err.splitlines() == [
        f"{lab}:14: vms[0].memory: 12 is too small: must be at least 256 "
        "(an integer number of MiB, 256 or more, e.g. 4096)",
    ]
    # cross-field checks run once the shapes are right
    lab.write_text(lab.read_text().replace("memory: 12", "memory: 1024").replace("name: db", "name: web"))
    code, _, err = run("--lab", str(lab), "validate")
    assert code == 2
    assert [line.split(": ")[1] for line in err.splitlines()] == ["vms[1].name", "vms[1].ip"]


def test_lab_path_from_environment_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("validate")
    assert code == 2 and err.startswith("lab.yml: no such file")
    monkeypatch.setenv("HOMELAB_LAB", str(EXAMPLE))
    code, out, _ = run("validate")
    assert code == 0 and str(EXAMPLE) in out


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    code, _, err = run("--lab", str(tmp_path), "validate")
    assert (code, err.strip()) == (2, f"{tmp_path}: is a folder, not a lab file")
    binary = tmp_path / "lab.yml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    code, _, err = run("--lab", str(binary), "validate")
    assert (code, err.strip()) == (2, f"{binary}:2: not UTF-8 text")


def test_validate_never_changes_the_file(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yml"
    original = (REPO / "tests" / "labs" / "invalid" / "memory_not_int.yml").read_bytes()
    lab.write_bytes(original)
    run("--lab", str(lab), "validate")
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
    code, _, err = run("--lab", str(EXAMPLE), "validate")
    assert code == 1
    assert "unexpected error: RuntimeError: disk on fire" in err
    log = tmp_path / "state" / "debug.log"
    assert str(log) in err
    assert "Traceback" in log.read_text() and "Traceback" not in err


def test_schema_matches_models_and_the_committed_copy() -> None:
    code, out, _ = run("schema")
    assert code == 0
    schema = json.loads(out)
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
    code, out, _ = run("--version")
    assert code == 0 and re.match(r"homelab, version \d+\.\d+\.\d+", out)


def test_a_pasted_token_secret_is_never_echoed() -> None:
    code, out, err = run("--lab", str(REPO / "tests" / "labs" / "invalid" / "token_with_secret.yml"), "validate")
    assert code == 2 and "secret" in err
    assert "9f0c1d2e" not in out + err
