"""The Packer builder: carry out a Packer plan. Render the configuration into the build folder
(:mod:`homelab.templates.packer_config`), run Packer on it (:mod:`homelab.adapters.packer`) with the
Proxmox login in its environment only, then tag and describe the new template.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from homelab.adapters.packer import Packer, progress_lines
from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.guests import list_guests
from homelab.errors import SecretError
from homelab.lab.models import Lab, Template
from homelab.state.builds import BuildUnderWay, record_build
from homelab.state.secrets import ProxmoxAuth, proxmox_auth
from homelab.templates.leftovers import BuildFailed, cleaning_up, left_alone, remove_build_vm, remove_half_built
from homelab.templates.packer_config import (
    MAIN_FILE,
    PRIVATE_FILES,
    RenderSpec,
    make_build_keys,
    render_files,
    write_files,
)
from homelab.templates.plan import BuildPlan, FinalizeTemplate, RemoveHalfBuilt, RenderPacker, RunPacker

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PackerSettings:
    """How homelab runs Packer. communicator "none" is for tests against a fake Proxmox (no VM boots)."""

    packer: str = "packer"
    communicator: str = "ssh"
    ssh_timeout: str = "45m"
    env: Mapping[str, str] = field(default_factory=dict)


def packer_credentials(
    lab: Lab, auth: ProxmoxAuth, version: tuple[int, int, int]
) -> tuple[dict[str, str], dict[str, str]]:
    """(plain env, secret env) that give Packer the Proxmox login."""
    if auth.token_id:
        if version < (1, 7, 0):
            raise SecretError(
                f"Packer {'.'.join(map(str, version))} logs in with a user and password only, and the lab uses "
                f"API token {auth.token_id}: set proxmox.user (password in HOMELAB_PROXMOX_PASSWORD) for "
                "Packer builds, install current Packer, or use builder: cloud-image"
            )
        return {"PKR_VAR_proxmox_username": auth.token_id}, {"PROXMOX_TOKEN": auth.token_secret or ""}
    return {"PKR_VAR_proxmox_username": auth.user or ""}, {"PKR_VAR_proxmox_password": auth.password or ""}


def render_build(
    lab: Lab,
    template: Template,
    plan: BuildPlan,
    action: RenderPacker,
    settings: PackerSettings,
    storage_type: str | None,
) -> None:
    """Write the configuration for this plan into its build folder (an ISO build also gets its login key)."""
    from homelab.adapters.proxmox.marks import describe_template

    spec = RenderSpec(
        version=plan.version,
        vm_id=plan.vmid,
        description=describe_template(plan.record),
        clone_vm=action.clone_vm,
        storage_type=storage_type,
        communicator=settings.communicator,
        ssh_timeout=settings.ssh_timeout,
        keys=make_build_keys(iso=action.source == "proxmox-iso"),
    )
    files = render_files(lab, template, spec)
    if action.directory.exists():
        shutil.rmtree(action.directory)
    write_files(action.directory, files)


def run_packer(lab: Lab, plan: BuildPlan, action: RunPacker, settings: PackerSettings, progress: Progress) -> None:
    """Run `packer build` on the rendered folder, the Proxmox login in its environment only."""
    packer = Packer.find(settings.packer)
    env, secret_env = packer_credentials(lab, proxmox_auth(lab), packer.version)
    env.update({"CHECKPOINT_DISABLE": "1", "PACKER_CACHE_DIR": str(action.directory / "cache")})
    if lab.proxmox.ca_bundle:
        # Packer is a Go program: it trusts the CAs in SSL_CERT_FILE.
        env["SSL_CERT_FILE"] = str(Path(lab.proxmox.ca_bundle).expanduser())
    env.update(settings.env)
    packer.build(
        action.directory,
        MAIN_FILE,
        env=env,
        secret_env=secret_env,
        log_path=action.log_path,
        on_line=progress_lines(progress),
        what=f"build template {plan.name}",
    )


def finalize(api: PveApi, lab: Lab, action: FinalizeTemplate) -> None:
    """Tag and describe the new template, and give it a serial console (what Packer 1.6 cannot set)."""
    api.put(f"/nodes/{action.node}/qemu/{action.vmid}/config", **dict(action.params))


def build_with_packer(
    api: PveApi,
    lab: Lab,
    template: Template,
    plan: BuildPlan,
    progress: Progress,
    settings: PackerSettings,
    storage_type: str | None,
) -> None:
    """Carry out a Packer plan; a failure after Packer started removes a template it left at the planned vmid.

    Ctrl-C too: the VM is removed, then the KeyboardInterrupt goes on.
    """
    started = False
    try:
        for action in plan.actions:
            progress(action.describe())
            if isinstance(action, RemoveHalfBuilt):
                remove_half_built(api, lab, plan.template, action)
            elif isinstance(action, RenderPacker):
                render_build(lab, template, plan, action, settings, storage_type)
            elif isinstance(action, RunPacker):
                started = True
                record_build(lab.name, BuildUnderWay(plan.vmid, plan.name, plan.template, plan.version), plan.vmid)
                try:
                    run_packer(lab, plan, action, settings, progress)
                finally:
                    for name in PRIVATE_FILES:
                        (action.directory / name).unlink(missing_ok=True)
            elif isinstance(action, FinalizeTemplate):
                finalize(api, lab, action)
            else:  # pragma: no cover - a plan from plan_packer holds nothing else
                raise TypeError(f"not a packer action: {action!r}")
        record_build(lab.name, None, plan.vmid)  # a template now, marked: no record needed
    except BaseException as exc:
        if not started:
            raise
        reason = str(exc) if isinstance(exc, Exception) else type(exc).__name__
        removed = None
        with cleaning_up(plan, exc, reason):
            leftover = [g for g in list_guests(api) if g.vmid == plan.vmid and g.name == plan.name]
            if leftover:
                progress(f"build failed; removing what Packer left at VM {plan.vmid}")
                # Packer describes the template only once it is done: a VM it is still making has no mark yet.
                removed = remove_build_vm(api, lab, plan, leftover[0].node, unmarked=True)
        if not leftover or removed:
            record_build(lab.name, None, plan.vmid)  # nothing left, or removed: not under way any more
        if not leftover or not isinstance(exc, Exception):
            raise  # nothing was left, or KeyboardInterrupt and the like: cleaned up, now let it through
        what = left_alone(plan.vmid) if removed is None else f"VM {plan.vmid} was removed"
        raise BuildFailed(f"building {plan.name} failed: {exc}; {what}") from exc


@dataclass(frozen=True)
class Rendered:
    """A Packer configuration written for a person to run: the files, and where the build's private keys are."""

    files: list[Path]
    private_dir: Path
    readme: Path


def render_for_user(lab: Lab, name: str | None, directory: Path, version: str | None, vmid: int) -> Rendered:
    """`homelab template render`: the Packer configuration of template ``name`` (default: the lab's first packer
    template) in ``directory``, its private keys in the lab's state folder; no Proxmox needed."""
    from datetime import UTC, datetime

    from homelab.adapters.proxmox.marks import describe_template
    from homelab.errors import InputError
    from homelab.templates.facts import lab_template
    from homelab.templates.naming import new_version
    from homelab.templates.packer_config import make_build_keys, render_private_dir

    if name is None:
        name = next((t.name for t in lab.templates if t.builder == "packer"), None)
        if name is None:
            raise InputError("the lab has no template with builder: packer; name one with --template")
    model = lab_template(lab, name)
    if model.builder != "packer":
        raise InputError(f"template {model.name!r} uses builder: {model.builder}, not packer")
    version = version or new_version(datetime.now(UTC))
    record = {"lab": lab.name, "template": model.name, "version": version, "builder": "packer", "os": model.os}
    iso = model.packer is not None and model.packer.source == "iso"
    private_dir = render_private_dir(lab, model, directory)
    files = render_files(
        lab,
        model,
        version=version,
        vm_id=vmid,
        description=describe_template(record),
        keys=make_build_keys(iso),
        private_dir=private_dir,
    )
    return Rendered(write_files(directory, files, private_dir), private_dir, directory / "README.md")
