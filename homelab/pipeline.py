"""The stages of `homelab up`, as library calls: templates, VMs, deploy key. Each plans before it changes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import Aborted, InputError, OperationError
from homelab.lab.models import Lab
from homelab.provision.executor import ApplyResult, Reporter
from homelab.provision.facts import Facts
from homelab.provision.plan import Plan, PlanOptions

if TYPE_CHECKING:
    from homelab.adapters.ansible import PlaybookRunner
    from homelab.provision.service import Planned
    from homelab.templates.bake import OpenShell

Echo = Callable[[str], None]
Confirm = Callable[[str], None]  # raises to refuse


class Describes(Protocol):
    """A planned step that says what it does."""

    def describe(self) -> str: ...


# What a stage did when its question was answered no (nothing of it happened).
DECLINED = {
    "templates": "declined, nothing built",
    "VMs": "declined, nothing changed",
    "deploy key": "declined, not installed",
    "deploy": "declined, nothing deployed",
}
# A VM action's kind -> what the VM stage says it did.
DONE = {
    "create": "created",
    "replace": "replaced",
    "update": "updated",
    "grow-disk": "disk grown",
    "add-data-disk": "data disk added",
    "move-data-disk": "data disk moved",
    "start": "started",
    "remove": "removed",
}
DEPLOY_KEY = {
    "skipped": "skipped (no repo: section)",
    "generated": "new key made, to add to the git host",
    "waiting": "the key cannot read the repo yet",
}


@dataclass
class UpResult:
    """What each stage did: ``stages`` in words, for people, as (stage, what it did)."""

    built: list[str] = field(default_factory=list)
    vms: ApplyResult | None = None
    deploy_key: str = ""
    stacks: str = ""
    stages: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = False  # a stage changed something (templates, VMs, a key, the VMs' stacks)

    def summary(self, declined: str | None = None) -> str:
        """One line: each stage that ran and what it did, then the one declined (if any)."""
        parts = [f"{stage}: {what}" for stage, what in self.stages]
        if not (self.changed or self.built):
            return f"Nothing was changed ({'; '.join([*parts, f'{declined}: declined'] if declined else parts)})."
        if declined:
            parts.append(f"{declined}: {DECLINED[declined]}")
        return "; ".join(parts)


def vm_stage_words(plan: Plan) -> str:
    """What applying ``plan`` did, counted by kind: "3 created", "1 updated, 1 disk grown"."""
    counts = Counter(a.kind for a in plan.changes)
    return ", ".join(f"{n} {DONE.get(kind, kind)}" for kind, n in counts.items()) or "nothing to change"


def bake_missing(
    api: PveApi,
    lab: Lab,
    echo: Echo,
    confirm: Confirm,
    built: list[str] | None = None,
    open_shell: OpenShell | None = None,
) -> tuple[list[str], Facts]:
    """Build a first version of every template a VM needs and Proxmox lacks.

    Returns the versions built (also appended to ``built`` as each is done, so a failure of the next one
    still leaves the record) and the facts gathered before building (still current when none was built).
    """
    from homelab.provision.facts import gather
    from homelab.provision.plan import resolve_version

    facts = gather(api, lab)
    missing = sorted({lab.template_for(vm).name for vm in lab.vms if isinstance(resolve_version(lab, vm, facts), str)})
    if not missing:
        echo("Every template the VMs use has a version on Proxmox.")
        return [] if built is None else built, facts
    return build_templates(api, lab, missing, echo, confirm, built=built, open_shell=open_shell), facts


def build_templates(
    api: PveApi,
    lab: Lab,
    names: Sequence[str],
    echo: Echo,
    confirm: Confirm,
    *,
    packer: str = "packer",
    dry_run: bool = False,
    built: list[str] | None = None,
    open_shell: OpenShell | None = None,
) -> list[str]:
    """Plan a new version of each template in ``names``, show the plans, ask once, build them one by one.

    Returns the versions built (appended to ``built`` as each finishes). ``dry_run`` stops after the plans.
    ``open_shell``: how a cloud-image bake reaches its build VM (default: SSH to network.build_ip).
    """
    from homelab.templates.build import plan_build, run_build
    from homelab.templates.packer import PackerSettings

    built = [] if built is None else built
    plans = [plan_build(api, lab, name) for name in names]
    for plan, _ in plans:
        for line in plan.describe():
            echo(f"  {line}")
    if dry_run or not plans:
        return built
    confirm(f"Build {len(plans)} template version(s)?")
    for plan, build_facts in plans:
        result = run_build(
            api, lab, plan, build_facts, build_progress(plan.actions, echo), PackerSettings(packer=packer), open_shell
        )
        echo(result.summary())
        if result.log_path:
            echo(f"packer's output: {result.log_path}")
        built.append(result.version.name)
    return built


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


def showing(reporter: Reporter) -> AbstractContextManager[Any]:
    """A reporter that draws on the screen (a live table) is shown only while the VMs are worked on: the plan,
    the question and the summary around it are plain lines."""
    return reporter if isinstance(reporter, AbstractContextManager) else nullcontext()


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
    options: PlanOptions | None = None,
    again: str = "homelab up",
) -> tuple[Plan, ApplyResult]:
    """Plan the VMs (from ``facts`` when they are current), show the plan, confirm, apply; the plan and result.

    ``again`` is the command that finishes what failed, named in the error. Under ``engine: terraform`` nothing
    is changed: see :func:`hand_over_vms`.
    """
    from homelab import ui
    from homelab.provision.backupjob import apply_job, job_change
    from homelab.provision.service import carry_out, make_plan

    planned = make_plan(lab, options, api=api, facts=facts)
    ui.render_plan(planned.plan)
    if lab.engine == "terraform":
        return planned.plan, hand_over_vms(planned, echo, reporter, concurrency)
    if planned.plan.blocked:
        raise OperationError("the plan has blocked steps (see '!' lines); nothing was changed")
    job = job_change(api, lab, planned.lab_vmids())
    if job and job.difference:
        echo(job.describe(lab) + (" (with the VM ids apply ends with)" if planned.plan.changes else ""))
    if planned.plan.changes or (job and job.difference):
        confirm(f"Apply {len(planned.plan.changes) + bool(job and job.difference)} change(s) to {lab.proxmox.url}?")
    else:
        echo("Nothing to change.")
    with showing(reporter):
        result = carry_out(planned, StepsOnly(reporter), concurrency)
    ui.render_apply(result)
    if not result.ok:
        raise OperationError(f"some VMs failed (see above); run `{again}` again to finish them")
    if job:
        names = {vm.name for vm in lab.vms}
        job = job.for_vmids(lab, sorted(o.vmid for o in result.outcomes if o.vmid and o.ok and o.vm in names))
        if job.difference:
            apply_job(api, job, lab)
            echo(job.describe(lab) + ": done")
    return planned.plan, result


def terraform_owns_vms(lab: Lab, what: str) -> InputError:
    """The refusal of a command that would change the VMs of a lab whose VMs Terraform changes (exit 2)."""
    return InputError(
        f"Terraform owns the VMs of lab {lab.name} (engine: terraform): {what}. Write its configuration with "
        "`homelab export terraform DIR` and run `terraform plan` and `terraform apply` there"
    )


def hand_over_vms(planned: Planned, echo: Echo, reporter: Reporter, concurrency: int | None = None) -> ApplyResult:
    """The VM stage under ``engine: terraform``: change nothing, record the running VMs' addresses and host keys
    for the later stages, and refuse (exit 2) when the plan just shown holds changes: they are Terraform's."""
    from homelab import ui
    from homelab.provision.service import record_running

    with showing(reporter):
        result = record_running(planned, StepsOnly(reporter), concurrency)
    recorded = sum(1 for outcome in result.outcomes if outcome.ok and outcome.address)
    ui.render_apply(result)
    pending = len(planned.plan.changes) + len(planned.plan.blocked)
    if pending:
        raise terraform_owns_vms(
            planned.lab,
            f"homelab changed no VM ({pending} step(s) above are Terraform's to make; "
            f"the addresses of {recorded} running VM(s) were recorded)",
        )
    echo(f"Terraform owns the VMs (engine: terraform); they are as the lab file says: {recorded} address(es) recorded.")
    return result


def destroy_vms(
    api: PveApi,
    lab: Lab,
    echo: Echo,
    confirm: Confirm,
    reporter: Reporter,
    concurrency: int | None = None,
    purge_data: bool = False,
) -> Plan:
    """Plan removing every VM marked as the lab's, show it, confirm, remove them; the plan."""
    from homelab import ui
    from homelab.provision.service import carry_out, make_destroy_plan

    if lab.engine == "terraform":
        raise terraform_owns_vms(lab, "remove them with `terraform destroy` in the export's folder")

    planned = make_destroy_plan(lab, api, purge_data)
    ui.render_plan(planned.plan)
    if not planned.plan.changes:
        echo("Nothing to destroy.")
        return planned.plan
    if purge_data:
        question = "This deletes their boot disks AND THEIR DATA DISKS, with everything the stacks stored."
    else:
        question = "This deletes their boot disks; data disks are kept (--purge-data deletes them)."
    confirm(f"Destroy {len(planned.plan.changes)} VM(s) of lab {lab.name}? {question}")
    with showing(reporter):
        result = carry_out(planned, StepsOnly(reporter), concurrency)
    ui.render_apply(result)
    if not result.ok:
        raise OperationError("some VMs could not be removed (see above)")
    return planned.plan


def install_deploy_key(lab: Lab, echo: Echo, confirm: Confirm) -> str:
    """Make the deploy key if there is none (and say where it goes); install it once it reads the repo."""
    from homelab.repokeys import core
    from homelab.repokeys.keys import KeyStore

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
    install_key_on_vms(lab, echo, confirm)
    return "installed"


def install_key_on_vms(lab: Lab, echo: Echo, confirm: Confirm) -> None:
    """Show the VMs the deploy key goes to (and whether each host key is pinned), ask, install, report each."""
    from homelab.errors import InputError
    from homelab.repokeys import core
    from homelab.state.hosts import load_hosts

    hosts = load_hosts(lab)
    if not hosts:
        raise InputError("no VMs recorded yet: run `homelab apply` first")
    key = core.show(lab).key
    assert lab.repo is not None
    echo(f"Will install deploy key {key.fingerprint} and check out {lab.repo.url} ({lab.repo.branch}) on:")
    for host in hosts:
        pinned = "host key pinned" if host.host_key else "HOST KEY NOT PINNED: will refuse"
        echo(f"  {host.name} ({host.user}@{host.address}, {pinned})")
    confirm(f"Install the deploy key and check out {lab.repo.url} on {len(hosts)} VM(s)?")
    outcomes = core.install(lab, hosts)
    for outcome in outcomes:
        echo(f"  {outcome.host}: {'ok' if outcome.ok else 'FAILED'}: {outcome.detail}")
    failed = [o.host for o in outcomes if not o.ok]
    if failed:
        raise OperationError(f"the deploy key could not be installed on {', '.join(failed)}")


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
    deploy_runner: PlaybookRunner | None = None,
    open_shell: OpenShell | None = None,
    new_admin_key: bool = False,
) -> UpResult:
    """Templates, then VMs, then the deploy key, then Docker and the service stacks.

    A question answered no ends it with Aborted, whose message says what each stage did up to there.
    ``deploy_runner`` runs the deploy's playbook (default: Ansible). ``new_admin_key``: a lost admin key may be
    replaced on the VMs (else that refuses, see homelab.provision.localstate).
    """
    from homelab.adapters.sshkeys import ensure_admin_key
    from homelab.provision.localstate import check_admin_key

    stage = stage or (lambda n, total, title: echo(f"==> [{n}/{total}] {title}"))
    check_admin_key(api, lab, allow_new=new_admin_key)
    ensure_admin_key(lab)
    result = UpResult()
    current = "templates"
    try:
        stage(1, 4, "templates")
        _, facts = bake_missing(api, lab, echo, confirm, result.built, open_shell)
        result.stages.append(("templates", f"built {', '.join(result.built)}" if result.built else "none missing"))
        result.changed = bool(result.built)
        current = "VMs"
        stage(2, 4, "VMs")
        # Building a template changed the cluster; otherwise the facts just gathered are still the truth.
        vm_plan, result.vms = converge_vms(
            api, lab, echo, confirm, reporter, concurrency, None if result.built else facts
        )
        result.stages.append(("VMs", vm_stage_words(vm_plan)))
        result.changed = result.changed or bool(vm_plan.changes)
        current = "deploy key"
        stage(3, 4, "deploy key for the config repo")
        result.deploy_key = install_deploy_key(lab, echo, confirm)
        result.stages.append(("deploy key", DEPLOY_KEY.get(result.deploy_key, result.deploy_key)))
        result.changed = result.changed or result.deploy_key in ("generated", "installed")
        current = "deploy"
        stage(4, 4, "Docker and the service stacks")
        if deploy:
            from homelab.deploy.plan import DeployOptions
            from homelab.deploy.service import deploy_stacks
            from homelab.provision.snapshotting import removal_hook

            hook = removal_hook(api, lab, echo)
            deploy_stacks(lab, echo, confirm, DeployOptions(before_removal=hook), runner=deploy_runner)
            result.stacks = "deployed"
        else:
            echo(f"Skipped ({skip_reason}).")
            result.stacks = "skipped"
    except Aborted:
        # "Nothing was changed." would be untrue once an earlier stage changed something: say what each did.
        raise Aborted(result.summary(declined=current)) from None
    return result
