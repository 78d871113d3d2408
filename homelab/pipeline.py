"""The stages of `homelab up`, as library calls: templates, VMs, deploy key. Each plans before it changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from homelab.errors import OperationError
from homelab.lab.models import Lab
from homelab.provision.executor import ApplyResult, Reporter
from homelab.provision.facts import Facts
from homelab.proxmox.api import PveApi

Echo = Callable[[str], None]
Confirm = Callable[[str], None]  # raises to refuse


class Describes(Protocol):
    """A planned step that says what it does."""

    def describe(self) -> str: ...


@dataclass
class UpResult:
    """What each stage did."""

    built: list[str] = field(default_factory=list)
    vms: ApplyResult | None = None
    deploy_key: str = ""
    stacks: str = ""


def bake_missing(api: PveApi, lab: Lab, echo: Echo, confirm: Confirm) -> tuple[list[str], Facts]:
    """Build a first version of every template a VM needs and Proxmox lacks.

    Returns the versions built and the facts gathered before building (still current when none was built).
    """
    from homelab.provision.facts import gather
    from homelab.provision.plan import resolve_version
    from homelab.templates.build import plan_build, run_build

    facts = gather(api, lab)
    missing = sorted({lab.template_for(vm).name for vm in lab.vms if isinstance(resolve_version(lab, vm, facts), str)})
    if not missing:
        echo("Every template the VMs use has a version on Proxmox.")
    built = []
    for name in missing:
        plan, build_facts = plan_build(api, lab, name)
        for line in plan.describe():
            echo(f"  {line}")
        confirm(f"Build template {name}?")
        result = run_build(api, lab, plan, build_facts, build_progress(plan.actions, echo))
        echo(result.summary())
        built.append(result.version.name)
    return built, facts


def build_progress(steps: Sequence[Describes], echo: Echo) -> Callable[[str], None]:
    """Progress of a build whose plan was just shown: a step as its number (its words are on screen already),
    any other line (a failure, packer's own steps) in full; each with the seconds since the build started."""
    started = time.monotonic()
    numbers = {step.describe(): n for n, step in enumerate(steps, 1)}

    def show(line: str) -> None:
        n = numbers.get(line)
        shown = f"step {n}/{len(steps)}: {line.split(' ', 1)[0]}" if n else line
        echo(f"  [{time.monotonic() - started:6.1f}s] {shown}")

    return show


class StepsOnly:
    """A reporter that shows each VM's steps but not its result line: the apply summary lists every VM's result
    (vmid and address, or the error) once, so the reporter says only that the VM is done."""

    def __init__(self, reporter: Reporter):
        self._reporter = reporter

    def step(self, vm: str, message: str) -> None:
        self._reporter.step(vm, message)

    def finished(self, vm: str, ok: bool, message: str) -> None:
        self._reporter.step(vm, "done" if ok else "failed (the error is in the summary below)")


def converge_vms(
    api: PveApi,
    lab: Lab,
    echo: Echo,
    confirm: Confirm,
    reporter: Reporter,
    concurrency: int | None = None,
    facts: Facts | None = None,
) -> ApplyResult:
    """Plan the VMs (from ``facts`` when they are current), show the plan, confirm, apply."""
    from homelab import ui
    from homelab.provision.service import carry_out, make_plan

    planned = make_plan(lab, api=api, facts=facts)
    ui.render_plan(planned.plan)
    if planned.plan.blocked:
        raise OperationError("the plan has blocked steps (see '!' lines); nothing was changed")
    if planned.plan.changes:
        confirm(f"Apply {len(planned.plan.changes)} change(s) to {lab.proxmox.url}?")
    result = carry_out(planned, StepsOnly(reporter), concurrency)
    ui.render_apply(result)
    if not result.ok:
        raise OperationError("some VMs failed (see above); run `homelab up` again to finish them")
    return result


def install_deploy_key(lab: Lab, echo: Echo, confirm: Confirm) -> str:
    """Make the deploy key if there is none (and say where it goes); install it once it reads the repo."""
    from homelab.deploykeys import core
    from homelab.deploykeys.keys import KeyStore
    from homelab.hosts import load_hosts

    if lab.repo is None:
        echo("Skipped: the lab file has no repo: section.")
        return "skipped"
    store = KeyStore(lab)
    if store.current() is None:
        report = core.generate(lab)
        echo("New deploy key (read-only access to the config repo):")
        echo(f"  {report.key.public_line}")
        echo(f"  fingerprint: {report.key.fingerprint}")
        echo(f"Add it: {report.page.hint}")
        echo("Then run `homelab keys verify` and `homelab up` again to install it on the VMs.")
        return "generated"
    if not core.can_read(lab, store.require_current()):
        echo("The deploy key cannot read the repo yet, or the git host's key is not pinned: homelab keys verify")
        return "waiting"
    hosts = load_hosts(lab)
    confirm(f"Install the deploy key and check out {lab.repo.url} on {len(hosts)} VM(s)?")
    outcomes = core.install(lab, hosts)
    for outcome in outcomes:
        echo(f"  {outcome.host}: {'ok' if outcome.ok else 'FAILED'}: {outcome.detail}")
    if not all(o.ok for o in outcomes):
        raise OperationError("the deploy key could not be installed on every VM (see above)")
    return "installed"


def up(
    api: PveApi,
    lab: Lab,
    echo: Echo,
    confirm: Confirm,
    reporter: Reporter,
    concurrency: int | None = None,
    stage: Callable[[int, int, str], None] | None = None,
    deploy: bool = True,
    skip_reason: str = "--no-deploy",
) -> UpResult:
    """Templates, then VMs, then the deploy key, then Docker and the service stacks."""
    from homelab.adminkey import ensure_admin_key

    stage = stage or (lambda n, total, title: echo(f"==> [{n}/{total}] {title}"))
    ensure_admin_key(lab)
    result = UpResult()
    stage(1, 4, "templates")
    result.built, facts = bake_missing(api, lab, echo, confirm)
    stage(2, 4, "VMs")
    # Building a template changed the cluster; otherwise the facts just gathered are still the truth.
    result.vms = converge_vms(api, lab, echo, confirm, reporter, concurrency, None if result.built else facts)
    stage(3, 4, "deploy key for the config repo")
    result.deploy_key = install_deploy_key(lab, echo, confirm)
    stage(4, 4, "Docker and the service stacks")
    if deploy:
        from homelab.deploy.service import deploy_stacks

        deploy_stacks(lab, echo, confirm)
        result.stacks = "deployed"
    else:
        echo(f"Skipped ({skip_reason}).")
        result.stacks = "skipped"
    return result
