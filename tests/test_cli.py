"""The command line as people type it: --lab anywhere, -y wherever --yes is, -V, completion from the lab file."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from homelab.cli import COMMANDS, cli
from tests.harness.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example" / "lab.yml"


def all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(path: str, command: click.Command) -> None:
        found.append((path, command))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(f"{path} {name}", sub)

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk(name, command)
    return found


@pytest.mark.parametrize(
    "args",
    [
        ["--lab", str(EXAMPLE), "validate"],
        ["validate", "--lab", str(EXAMPLE)],
        ["stack", "list", "--lab", str(EXAMPLE)],
        ["stack", "--lab", str(EXAMPLE), "list"],
    ],
    ids=["before", "after", "after-nested", "on-the-group"],
)
def test_lab_option_before_or_after_the_subcommand(args: list[str], tmp_path: Path) -> None:
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "example" in result.stdout or "docker-01" in result.stdout


def test_lab_option_after_the_subcommand_wins(tmp_path: Path) -> None:
    result = run_cli("--lab", str(tmp_path / "nowhere.yml"), "validate", "--lab", str(EXAMPLE))
    assert result.exit_code == 0 and str(EXAMPLE) in result.stdout, result.stderr


def test_missing_lab_file_shows_the_exact_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("keys", "rotate", "--yes")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "lab.yml: no such file. Write a lab file with `homelab init`, or name yours: "
        "`homelab keys rotate --lab PATH` (or export HOMELAB_LAB=PATH)"
    ]


def test_every_yes_has_a_short_y_and_every_command_takes_lab() -> None:
    with_yes = 0
    for path, command in all_commands():
        options = {opt for param in command.params for opt in param.opts}
        assert "--lab" in options, f"homelab {path} does not take --lab"
        if "--yes" in options:
            with_yes += 1
            yes = next(p for p in command.params if "--yes" in p.opts)
            assert "-y" in yes.opts, f"homelab {path}: --yes without -y"
    assert with_yes >= 8  # apply, destroy, up, deploy, stack add, template build/prune, keys verify/rotate/install


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag: str) -> None:
    from homelab import __version__

    result = run_cli(flag)
    assert result.exit_code == 0 and result.stdout.strip() == f"homelab, version {__version__}"


def complete(words: str) -> list[str]:
    parts = words.split(" ")
    result = run_cli(env={"_HOMELAB_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(parts) - 1)})
    assert result.exit_code == 0
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_completion_reads_names_from_the_lab_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert complete(f"homelab deploy --lab {EXAMPLE} --vm ") == ["docker-01"]
    assert complete(f"homelab --lab {EXAMPLE} deploy --vm d") == ["docker-01"]
    assert complete(f"homelab --lab {EXAMPLE} deploy --vm x") == []
    assert complete(f"homelab template build --lab {EXAMPLE} ") == ["debian-docker"]
    monkeypatch.setenv("HOMELAB_LAB", str(EXAMPLE))
    assert complete("homelab template prune ") == ["debian-docker"]
    assert "media" in complete("homelab stack add m")


def test_completion_of_an_unreadable_lab_is_empty_and_quiet(tmp_path: Path) -> None:
    bad = tmp_path / "lab.yml"
    bad.write_text("name: [unclosed\n")
    assert complete(f"homelab deploy --lab {bad} --vm ") == []
    assert complete(f"homelab deploy --lab {tmp_path / 'missing.yml'} --vm ") == []
