"""The one way tests run the command line: in-process through Click's CliRunner, as people type it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from homelab.cli import cli


def run_cli(*args: str, lab: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``homelab [--lab LAB] ARGS``; ``env`` adds environment variables for this run.

    An exception the CLI does not turn into a message is not caught: it fails the test with its traceback.
    """
    argv = ["--lab", str(lab), *args] if lab is not None else list(args)
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False, prog_name="homelab")
