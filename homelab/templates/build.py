"""`homelab template build`: gather facts, plan, then carry the plan out with the template's builder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.cluster import ClusterFacts, gather_cluster
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.errors import OperationError
from homelab.lab.models import Lab, Template
from homelab.paths import state_dir
from homelab.templates.bake import OpenShell
from homelab.templates.facts import half_built, import_storages, lab_template, storage_files
from homelab.templates.images import Fetch, fetch_text, image_for
from homelab.templates.packer import PackerSettings, build_with_packer
from homelab.templates.plan import BuildFacts, BuildPlan, choose_import_storage, plan_cloud_image, plan_packer

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    """A finished build: the new version, how long it took and how many API calls homelab made."""

    plan: BuildPlan
    version: TemplateVersion
    seconds: float
    api_calls: int
    downloaded: bool | None = None
    log_path: Path | None = None

    def summary(self) -> str:
        """One line for people."""
        return (
            f"template {self.plan.template}: version {self.version.version} is VM {self.version.vmid} "
            f"{self.version.name} on {self.version.node} ({self.seconds:.1f}s, {self.api_calls} API calls)"
        )


def gather_build_facts(api: PveApi, lab: Lab, template: Template, cluster: ClusterFacts | None = None) -> BuildFacts:
    """Read what planning a build needs (GETs only): the cluster's facts (or those just gathered, ``cluster``)
    and the node's storages."""
    cluster = cluster or gather_cluster(api)
    versions = tuple(cluster.versions_of(template.name))
    leftovers = half_built(api, lab, template, cluster.guests)
    node = lab.proxmox.node
    if template.builder == "cloud-image":
        storages = tuple(import_storages(api, node))
        files: frozenset[str] = frozenset()
        if storages:
            files = frozenset(storage_files(api, node, choose_import_storage(storages, node), "import"))
        reported = str((api.get("/version") or {}).get("version") or "") or None
        return BuildFacts(
            cluster.guests,
            versions,
            import_storages=storages,
            import_files=files,
            used_vmids=cluster.used_vmids,
            pve_version=reported,
            half_built=leftovers,
        )
    storage_type = None
    for item in api.get(f"/nodes/{node}/storage") or []:
        if item.get("storage") == lab.proxmox.storage:
            storage_type = str(item.get("type") or "") or None
    return BuildFacts(
        cluster.guests, versions, storage_type=storage_type, used_vmids=cluster.used_vmids, half_built=leftovers
    )


def build_paths(lab: Lab, template: Template, version: str) -> tuple[Path, Path]:
    """(Packer's build folder, the build's log file) under the lab's state folder."""
    root = state_dir(lab.name)
    return root / "packer" / template.name, root / "logs" / f"template-{template.name}-{version}.log"


def plan_build(
    api: PveApi,
    lab: Lab,
    template: Template | str,
    *,
    now: datetime | None = None,
    fetch: Fetch = fetch_text,
    cluster: ClusterFacts | None = None,
) -> tuple[BuildPlan, BuildFacts]:
    """Gather facts (the cluster's may be given, if nothing changed since they were read) and plan the build of
    one template (nothing changes yet)."""
    model = lab_template(lab, template)
    facts = gather_build_facts(api, lab, model, cluster)
    now = now or datetime.now(UTC)
    if model.builder == "cloud-image":
        from homelab.adapters.sshkeys import ensure_admin_key

        # the bake logs in with homelab's admin key, the one apply puts on every VM (made once, 0600)
        admin_key = ensure_admin_key(lab)
        return plan_cloud_image(lab, model, facts, image_for(model, fetch), now, admin_key), facts
    from homelab.templates.naming import new_version

    build_dir, log_path = build_paths(lab, model, new_version(now, [v.version for v in facts.versions]))
    return plan_packer(lab, model, facts, now, build_dir, log_path), facts


def run_build(
    api: PveApi,
    lab: Lab,
    plan: BuildPlan,
    facts: BuildFacts,
    progress: Progress,
    packer: PackerSettings | None = None,
    open_shell: OpenShell | None = None,
) -> BuildResult:
    """Carry out a build plan and find the new version on Proxmox. ``open_shell``: how the bake reaches the
    build VM (default: SSH to network.build_ip)."""
    model = lab_template(lab, plan.template)
    calls_before = sum(api.calls.values())
    started = time.monotonic()
    downloaded: bool | None = None
    log_path = None
    if plan.builder == "cloud-image":
        from homelab.templates.cloudimage import build_cloud_image

        downloaded = build_cloud_image(api, lab, plan, progress, open_shell)
    else:
        build_with_packer(api, lab, model, plan, progress, packer or PackerSettings(), facts.storage_type)
        from homelab.templates.plan import RunPacker

        log_path = next((a.log_path for a in plan.actions if isinstance(a, RunPacker)), None)
    versions = gather_cluster(api).versions_of(model.name)
    built = next((v for v in versions if v.vmid == plan.vmid and v.version == plan.version), None)
    if built is None:
        raise OperationError(f"the build finished but Proxmox shows no template {plan.name} at VM {plan.vmid}")
    return BuildResult(
        plan,
        built,
        time.monotonic() - started,
        sum(api.calls.values()) - calls_before,
        downloaded,
        log_path,
    )


def build_template(
    api: PveApi,
    lab: Lab,
    template: Template | str,
    progress: Progress = lambda _line: None,
    *,
    packer: PackerSettings | None = None,
    now: datetime | None = None,
    fetch: Fetch = fetch_text,
    open_shell: OpenShell | None = None,
) -> BuildResult:
    """Plan and build one template version (the library call behind `homelab template build`)."""
    plan, facts = plan_build(api, lab, template, now=now, fetch=fetch)
    for line in plan.describe():
        progress(line)
    return run_build(api, lab, plan, facts, progress, packer, open_shell)
