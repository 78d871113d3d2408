"""doctor(api, lab): gather, check, report; and the refusal the commands that change things raise."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.preflight.checks import Finding, check, describe, purposes_of
from homelab.preflight.facts import AccessFacts, gather

ALL = ("vms", "build")


@dataclass(frozen=True)
class Report:
    """What doctor found: the problems (none: all is well), the facts, and how long the reads took."""

    findings: tuple[Finding, ...]
    facts: AccessFacts
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.findings

    def details(self, lab: Lab) -> list[str]:
        return describe(lab, self.facts)


class PreflightFailed(InputError):
    """Something the run needs is missing (a privilege, a storage's content type, the PVE version): exit 2,
    nothing changed. Each line is one problem and its fix."""

    def __init__(self, findings: Iterable[Finding], command: str):
        self.findings = tuple(findings)
        self.command = command
        super().__init__(f"{command}: {len(self.findings)} problem(s) found before changing anything")

    def lines(self) -> list[str]:
        return [
            *(str(f) for f in self.findings),
            f"{self.command} stopped before changing anything ({len(self.findings)} problem(s) above; "
            "`homelab doctor` checks again)",
        ]


def doctor(api: PveApi, lab: Lab, wanted: Iterable[str] = ALL, templates: Iterable[str] | str | None = None) -> Report:
    """Check what a run needing ``wanted`` (vms, build) requires; ``templates``: the ones a build would build
    (None: all of the lab's; ``"unbuilt"``: those with no version on Proxmox yet, as `homelab up` builds)."""
    started = time.monotonic()
    facts = gather(api, lab, guests=templates == "unbuilt")
    if isinstance(templates, str):
        templates = facts.unbuilt(lab)
    findings = check(lab, facts, purposes_of(lab, wanted, templates))
    return Report(tuple(findings), facts, time.monotonic() - started)


def preflight(
    api: PveApi, lab: Lab, command: str, wanted: Iterable[str] = ALL, templates: Iterable[str] | str | None = None
) -> Report:
    """doctor, raising PreflightFailed when something blocks."""
    report = doctor(api, lab, wanted, templates)
    if not report.ok:
        raise PreflightFailed(report.findings, command)
    return report


class NoAccess(InputError):
    """The token sees nothing to work with (PVE hides what it may not audit): how to make one that can."""

    def __init__(self, reason: str, setup: list[str]):
        self.setup = setup
        super().__init__(reason)

    def lines(self) -> list[str]:
        return [
            str(self),
            "On the Proxmox host, as root, make a user, the least-privilege role and a token homelab can work with:",
            *(f"  {line}" for line in self.setup),
            "then set HOMELAB_PROXMOX_TOKEN to the token's secret and run `homelab init` again (README: Access).",
        ]


def no_access(api: PveApi, reason: str, places: dict[str, str], token_id: str | None) -> NoAccess:
    """NoAccess with the setup lines for this Proxmox's version (PVE 8 and 9 differ)."""
    from homelab.adapters.proxmox.privileges import TOKEN_ID, parse_version, setup_lines
    from homelab.errors import ProxmoxError

    try:
        version = parse_version((api.get("/version") or {}).get("version")) or (9, 0, 0)
    except ProxmoxError:
        version = (9, 0, 0)
    return NoAccess(reason, setup_lines(version, places, token_id or TOKEN_ID))
