"""Packer: which one is installed, and running `packer init` and `packer build` on a rendered folder.

Packer runs through :func:`homelab.adapters.process.run` (argv only, logged, secrets masked, its plugins
stopped with it). Debian's Packer 1.6 has the proxmox builders built in and rejects a
``required_plugins`` block, so it builds the main file alone; current Packer installs its plugins with
``packer init`` first and builds the whole folder. Rendering the configuration is the templates stage's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from homelab.adapters.process import OnLine, run
from homelab.errors import InputError

Version = tuple[int, int, int]


def packer_version(packer: str = "packer") -> Version:
    """The installed Packer's version, from `packer version`."""
    lines: list[str] = []
    run([packer, "version"], env={"CHECKPOINT_DISABLE": "1"}, on_line=lines.append, what="read the Packer version")
    match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", " ".join(lines))
    if not match:
        raise InputError(f"{packer}: cannot tell its version from {' '.join(lines)[:80]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def progress_lines(progress: Callable[[str], None]) -> OnLine:
    """Packer's step lines and Ansible's task lines go to ``progress``; the log gets every line anyway."""
    step = re.compile(r"^==> [\w.-]+: (.*)$")
    task = re.compile(r"^\s*[\w.-]+: (TASK \[.*\]|PLAY RECAP.*)")

    def on_line(line: str) -> None:
        match = step.match(line) or task.match(line)
        if match:
            progress(f"packer: {match.group(1).rstrip(' *')}")
        elif line.startswith(("Build '", "--> ")) or "rror" in line:
            progress(f"packer: {line.strip()}")

    return on_line


@dataclass(frozen=True)
class Packer:
    """An installed Packer: the program and its version."""

    program: str
    version: Version

    @classmethod
    def find(cls, program: str = "packer") -> Packer:
        """The Packer at ``program`` (a path, or a name on PATH), asked for its version."""
        return cls(program, packer_version(program))

    @property
    def needs_init(self) -> bool:
        """Current Packer (1.7 and later) installs its plugins with `packer init`; 1.6 has them built in."""
        return self.version >= (1, 7, 0)

    def build(
        self,
        directory: Path,
        main_file: str,
        *,
        env: Mapping[str, str],
        secret_env: Mapping[str, str],
        log_path: Path | None,
        on_line: OnLine,
        what: str,
    ) -> None:
        """`packer build` the folder (after `packer init` on current Packer; 1.6 builds ``main_file`` alone).

        Secrets go only in ``secret_env``. Raises ToolFailed when Packer fails.
        """
        target = main_file
        if self.needs_init:
            run(
                [self.program, "init", "."],
                env=env,
                cwd=directory,
                log_path=log_path,
                on_line=on_line,
                what="install Packer's plugins",
            )
            target = "."
        run(
            [self.program, "build", "-color=false", target],
            env=env,
            secret_env=secret_env,
            cwd=directory,
            log_path=log_path,
            on_line=on_line,
            what=what,
        )
