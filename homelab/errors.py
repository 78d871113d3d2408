"""One error tree. The CLI edge maps each kind to a message and an exit code."""

from __future__ import annotations

from dataclasses import dataclass


class HomelabError(Exception):
    """Base of every error homelab reports to a user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints."""
        return [str(self)]


class InputError(HomelabError):
    """Bad input from the user: a flag, an answers file, a missing file. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a lab file, pinned to a line and a key path."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class LabNotFound(InputError):
    """There is no lab file where the user pointed (or at the default ./lab.yml)."""

    def __init__(self, path: str, command: str = "homelab plan"):
        self.path = path
        super().__init__(
            f"{path}: no such file. Write a lab file with `homelab init`, or name yours: "
            f"`{command} --lab PATH` (or export HOMELAB_LAB=PATH)"
        )

    def for_command(self, command: str) -> LabNotFound:
        """The same error, its example naming the command the user ran."""
        return LabNotFound(self.path, command)


class LabFileError(InputError):
    """The lab file is not valid; carries one Problem per thing that is wrong."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class SecretError(InputError):
    """A secret is missing, or stored where anyone could read it."""


class OperationError(HomelabError):
    """An operation against an outside system failed (Proxmox, SSH, git, packer). Exit code 1."""


class ProxmoxError(OperationError):
    """The Proxmox API refused or failed a request; the message is PVE's own."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


class ConnectionLost(ProxmoxError):
    """No answer from the Proxmox API at all (refused, reset, timed out): retried for the lab's
    ``timeouts.connection`` seconds, then reported as what it is, whatever was being waited for."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message, transient=transient)


class TaskFailed(ProxmoxError):
    """A Proxmox worker task ended with something other than OK."""


class OperationTimeout(OperationError):
    """Waiting for something took longer than the lab allows."""


class Interrupted(HomelabError):
    """The user pressed Ctrl-C; work stops at its next step and a re-run finishes it."""

    exit_code = 130


class Aborted(HomelabError):
    """The user said no at a confirmation prompt."""

    exit_code = 1
