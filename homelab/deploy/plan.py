"""What a deploy will do, before it touches anything: its options, its target VMs and the deploy record.

Each VM that lists stacks is a target, and so is a VM that lists none any more but got stacks from an
earlier deploy (the deploy record says which). A target needs a host record with a pinned host key
(written by `homelab apply`); one without is reported as failed and the others still deploy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homelab.deploy import firstvisit
from homelab.deploy.overlay import auth_for
from homelab.deploy.render import Secrets, VmRender, missing_requirements, render_lab
from homelab.errors import InputError
from homelab.lab.models import Lab
from homelab.paths import state_dir
from homelab.stacks import for_lab
from homelab.state.hosts import Host, load_hosts
from homelab.state.reading import StateFileError, notice, read_state_json


@dataclass(frozen=True)
class DeployOptions:
    """What a deploy does besides copying the stacks' files."""

    install_packages: bool = True  # install Docker and compose (lab.docker.source) where missing
    start_stacks: bool = True  # create the homelab network and run `docker compose up -d`
    vms: tuple[str, ...] = ()  # only these VMs; empty: every VM that lists stacks (or must be cleared of them)
    keep_removed: bool = False  # leave stacks the lab file no longer lists where they are (and say so)
    purge_data: tuple[str, ...] = ()  # removed stacks whose state (STATE_DIR) is deleted too (--purge-data)
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    # called with the VMs stacks are about to be taken off, before the run (a snapshot of each; see
    # settings.snapshot_before_changes); None: nothing
    before_removal: Callable[[Sequence[str]], None] | None = field(default=None, compare=False)

    def extravars(self) -> dict[str, Any]:
        return {
            "homelab_install_packages": self.install_packages,
            "homelab_start_stacks": self.start_stacks,
            **self.extra_vars,
        }


@dataclass(frozen=True)
class Target:
    """A VM to deploy to: what it gets, and its host record (or why it cannot be reached)."""

    render: VmRender
    host: Host | None
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.render.vm

    @property
    def clear_only(self) -> bool:
        """The VM lists no stacks any more: it is only cleared of those homelab put there."""
        return not self.render.stacks


@dataclass(frozen=True)
class Deployment:
    """What a deploy will do, before it touches anything."""

    lab: Lab
    targets: tuple[Target, ...]
    options: DeployOptions
    warnings: tuple[str, ...] = ()

    @property
    def ready(self) -> list[Target]:
        return [t for t in self.targets if t.problem is None]

    @property
    def blocked(self) -> list[Target]:
        return [t for t in self.targets if t.problem is not None]

    def describe(self) -> list[str]:
        """The plan in words: hosts, their stacks, what happens to Docker and the stacks."""
        user = self.lab.access.user
        lines = [f"Deploy to {len(self.targets)} VM(s), as {user}, into /home/{user}/stacks:"]
        for t in self.targets:
            stacks = ", ".join(s.name for s in t.render.stacks) or "no stacks (those deployed before are removed)"
            where = f" ({t.host.address})" if t.host else ""
            lines.append(f"  {t.name}{where}: {stacks}" + (f"  ! {t.problem}" if t.problem else ""))
        lines += [f"  note: {w}" for w in self.warnings]
        claims = first_visits(self.lab, [s.name for t in self.targets for s in t.render.stacks])
        if claims:
            lines.append("First visits (nothing left for a stranger to claim):")
            lines += [f"  {line}" for line in claims]
        opts = self.options
        lines.append(
            "Docker: "
            + (
                (
                    "Docker Engine and the compose plugin installed from Docker's apt repository where missing"
                    if self.lab.docker.source == "docker"
                    else "docker.io and compose installed from the distribution where missing"
                )
                if opts.install_packages
                else "left as it is (not installed by this deploy)"
            )
        )
        lines.append(
            "Stacks: "
            + (
                "the homelab network made, then `docker compose up -d` in each"
                if opts.start_stacks
                else "files only, not started"
            )
        )
        data = f"/home/{user}/data/stacks/<name>"
        if opts.keep_removed:
            gone = "kept as they are (--keep-removed)"
        elif opts.start_stacks:
            gone = f"`docker compose down`, then their folder is deleted; their data in {data} is kept"
        else:
            gone = f"their folder is deleted (compose not run: --no-start); their data in {data} is kept"
        lines.append(f"Stacks no longer listed: {gone}")
        if opts.purge_data and not opts.keep_removed:
            names = ", ".join(opts.purge_data)
            lines.append(f"!!! --purge-data: THE DATA OF {names.upper()} IS DELETED FOR GOOD ({data}); no undo !!!")
        return lines


def first_visits(lab: Lab, stacks: Sequence[str]) -> list[str]:
    """What of the stacks' first-visit setups is guarded or seeded, and where the credentials are."""
    known = for_lab(lab)
    found: list[str] = []
    for name in dict.fromkeys(stacks):
        if name in known:
            found += firstvisit.describe(lab, known[name], auth_for(lab, name))[0]
    return found


def prepare(
    lab: Lab,
    options: DeployOptions | None = None,
    hosts: list[Host] | None = None,
    deployed: Collection[str] | None = None,
    secrets: Secrets | None = None,
) -> Deployment:
    """The targets of a deploy, from the lab, the recorded hosts and the deploy record; renders every VM's files.

    A VM that lists no stacks is a target only when an earlier deploy put stacks on it (``deployed``,
    read from the deploy record when not given): the deploy then clears it of them. ``secrets``: the stack
    secrets' values (:func:`homelab.deploy.secretvalues.stack_secret_values`); None renders them masked.
    """
    options = options or DeployOptions()
    renders = render_lab(lab, secrets)
    deployed = deployed_vms(lab) if deployed is None else deployed
    for vm in lab.vms:
        # a VM that lists no stacks is cleared of those deployed before, or has their kept data purged
        purging = bool(options.purge_data) and vm.name in options.vms
        if vm.name not in renders and (vm.name in deployed or purging):
            renders[vm.name] = VmRender(vm.name, lab.access.user, ())
    known_vms = {vm.name for vm in lab.vms}
    for name in options.vms:
        if name not in known_vms:
            raise InputError(f"no VM named {name!r} in the lab (VMs: {', '.join(sorted(known_vms)) or 'none'})")
        if name not in renders:
            raise InputError(f"VM {name!r} lists no stacks: add one with `homelab stack add NAME --vm {name}`")
    recorded = {h.name: h for h in (load_hosts(lab) if hosts is None else hosts)}
    targets = []
    warnings = []
    for vm in lab.vms:
        if vm.name not in renders or (options.vms and vm.name not in options.vms):
            continue
        host = recorded.get(vm.name)
        problem = None
        if host is None:
            problem = "no address recorded yet: run `homelab apply` first"
        elif not host.host_key:
            problem = "its SSH host key is not pinned: run `homelab apply` to read it through the guest agent"
        targets.append(Target(renders[vm.name], host, problem))
        for stack, needed in missing_requirements(lab, vm):
            warnings.append(f"{vm.name}: {stack} is reached through {needed}, which this VM does not run")
        for rendered in renders[vm.name].stacks:
            known = for_lab(lab).get(rendered.name)
            if known is not None:
                warnings += [f"{vm.name}: {w}" for w in firstvisit.describe(lab, known, "none")[1]]
    return Deployment(lab, tuple(targets), options, tuple(warnings))


def workdir(lab: Lab) -> Path:
    """Where the last deploy's staged files, inventory and Ansible artifacts are kept."""
    return state_dir(lab.name) / "deploy"


UNREADABLE_DEPLOY_RECORD = (
    "stacks on VMs since dropped from the lab file are left as they are; the next deploy writes a new record"
)


def deployed_file(lab: Lab) -> Path:
    """The deploy record: the VMs an earlier deploy put stacks on."""
    return workdir(lab) / "deployed.json"


def deployed_vms(lab: Lab) -> frozenset[str]:
    """The VMs the deploy record names (none when there is no record). A record that cannot be read clears
    nothing (no stack is taken down on its word) and is named in a line saying so."""
    path = deployed_file(lab)
    try:
        data = read_state_json(path, "deploy record")
        if data is None:
            return frozenset()  # no deploy yet
        vms = data.get("vms", []) if isinstance(data, dict) else None
        if not isinstance(vms, list):
            raise StateFileError(path, 'the deploy record is not {"vms": [...]}')
    except StateFileError as exc:
        notice(f"{exc}: {UNREADABLE_DEPLOY_RECORD}")
        return frozenset()
    return frozenset(str(vm) for vm in vms)
