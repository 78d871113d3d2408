"""Doctor's checks: the lab and the facts in, one finding per problem out (pure: no I/O).

A finding is one line: what is wrong, why homelab needs it, and the exact command that fixes it (`pveum` for a
privilege, `pvesm set ... --content` that adds to a storage's content types and keeps the ones it has).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from homelab.adapters.proxmox.privileges import (
    CLOUD_IMAGE_IMPORT,
    grant_command,
    holds,
    needed,
    role_command,
    show_version,
)
from homelab.lab.models import Lab
from homelab.preflight.facts import AccessFacts, Storage

PREFERRED_IMPORT_STORAGE = "local"  # what a Proxmox install puts on every node


@dataclass(frozen=True)
class Finding:
    """One problem, as the one line doctor prints."""

    line: str

    def __str__(self) -> str:
        return self.line


def purposes_of(lab: Lab, wanted: Iterable[str], templates: Iterable[str] | None = None) -> tuple[str, ...]:
    """``wanted`` (vms, build), plus cloud-image when a build is wanted and one of the ``templates`` (default: all
    of the lab's) is built from a cloud image."""
    out = tuple(wanted)
    names = set(templates) if templates is not None else {t.name for t in lab.templates}
    if "build" in out and any(t.builder == "cloud-image" and t.name in names for t in lab.templates):
        out += ("cloud-image",)
    return out


def import_storage(facts: AccessFacts) -> tuple[str, Storage | None]:
    """The storage cloud images go to (``local`` if it takes imports, else the first that does), and None; or,
    when none does, the storage to give the ``import`` content type (``local``, else the first file storage)."""
    takers = [s for s in facts.storages if "import" in s.content and s.active]
    if takers:
        chosen = next((s for s in takers if s.name == PREFERRED_IMPORT_STORAGE), takers[0])
        return chosen.name, None
    files = [s for s in facts.storages if s.file_based]
    candidate = next((s for s in files if s.name == PREFERRED_IMPORT_STORAGE), files[0] if files else None)
    return (candidate.name if candidate else PREFERRED_IMPORT_STORAGE), candidate


def add_content(storage: Storage, content: str) -> str:
    """`pvesm set` adding ``content`` to what the storage takes (never replacing it)."""
    kept = [c for c in storage.content if c != "none"]
    return f"pvesm set {storage.name} --content {','.join([*kept, content])}"


def check(lab: Lab, facts: AccessFacts, purposes: tuple[str, ...]) -> list[Finding]:
    """Every problem that would stop a run needing ``purposes`` (vms, build, cloud-image)."""
    px = lab.proxmox
    node = px.node
    out: list[Finding] = [
        Finding(f"cannot read {what} from {px.url}: {error}") for what, error in sorted(facts.failed.items())
    ]
    if facts.version is None:
        return out or [Finding(f"{px.url} did not say its Proxmox VE version (/version)")]
    version = facts.version
    shown = show_version(version)
    cloud = "cloud-image" in purposes
    if cloud and version < CLOUD_IMAGE_IMPORT:
        names = ", ".join(t.name for t in lab.templates if t.builder == "cloud-image")
        out.append(
            Finding(
                f"Proxmox VE {shown} cannot build cloud-image templates ({names}): downloading a .qcow2 cloud image "
                f"for import needs Proxmox VE {show_version(CLOUD_IMAGE_IMPORT)} or later; upgrade the node "
                "(apt full-upgrade) or use builder: packer"
            )
        )
    for vm_node in sorted({node, *(vm.node for vm in lab.vms if vm.node)}):
        status = facts.nodes.get(vm_node)
        if status is None and facts.nodes:
            out.append(Finding(f"node {vm_node} is not in the cluster (nodes: {', '.join(sorted(facts.nodes))})"))
        elif status not in (None, "online"):
            out.append(Finding(f"node {vm_node} is {status}"))
    places = {
        "node": node,
        "storage": px.storage,
        "bridge": px.bridge,
        "vms": f"/pool/{px.pool}" if px.pool else "/vms",
    }
    importing, candidate = import_storage(facts)
    if cloud:
        places["import_storage"] = importing
    missing = set()
    if "permissions" not in facts.failed:
        wants = needed(version, purposes, places)
        if "vms" in purposes:  # each GPU mapping the lab's VMs name (vms[].gpu)
            for gpu in sorted({vm.gpu for vm in lab.vms if vm.gpu}):
                wants += needed(version, ("gpu",), {**places, "gpu": gpu})
        for want in wants:
            if not holds(facts.permissions, want.path, want.name):
                missing.add(want.path)
                fix = f"{role_command([want.name])} && {grant_command(want.path, px.token_id, px.user)}"
                out.append(Finding(f"{_who(lab)} lacks {want.name} on {want.path} ({want.why}): {fix}"))
    out += _storages(lab, facts, missing)
    if cloud and version >= CLOUD_IMAGE_IMPORT and f"/storage/{importing}" not in missing:
        out += _imports(node, facts, candidate)
    bridge_hidden = f"/sdn/zones/localnetwork/{px.bridge}" in missing or "network" in facts.failed
    if px.bridge not in facts.bridges and not bridge_hidden:
        there = ", ".join(facts.bridges) or "none"
        out.append(Finding(f"bridge {px.bridge} is not on node {node} (bridges there: {there}); set proxmox.bridge"))
    return out


def _imports(node: str, facts: AccessFacts, candidate: Storage | None) -> list[Finding]:
    if any("import" in s.content and s.active for s in facts.storages):
        return []
    if candidate is None:
        return [Finding(f"no file storage on node {node} can take cloud images to import: add a directory storage")]
    return [
        Finding(
            f"no storage on node {node} takes cloud images to import (content type import): "
            f"{add_content(candidate, 'import')}"
        )
    ]


def _storages(lab: Lab, facts: AccessFacts, missing: set[str]) -> list[Finding]:
    px = lab.proxmox
    store = facts.storage(px.storage)
    if f"/storage/{px.storage}" in missing or "node storage" in facts.failed:
        return []  # a token without rights on it does not see it: the privilege's line says what to do
    if store is None:
        elsewhere = " (it is not enabled there)" if px.storage in facts.configured else ""
        there = ", ".join(s.name for s in facts.storages) or "none"
        return [Finding(f"storage {px.storage} is not on node {px.node}{elsewhere} (storages there: {there})")]
    if "images" not in store.content:
        return [
            Finding(f"storage {px.storage} does not take VM disks (content images): {add_content(store, 'images')}")
        ]
    if not store.active:
        return [Finding(f"storage {px.storage} is not active on node {px.node}")]
    return []


def _who(lab: Lab) -> str:
    px = lab.proxmox
    return f"token {px.token_id}" if px.token_id else f"user {px.user}"


def describe(lab: Lab, facts: AccessFacts) -> list[str]:
    """What doctor found, for people (``homelab doctor -v``): the version and what it allows, nodes, storages."""
    lines = []
    if facts.version is not None:
        version = facts.version
        cloud = "can" if version >= CLOUD_IMAGE_IMPORT else "cannot"
        agent = "VM.GuestAgent.Audit and .FileRead" if version >= (9, 0, 0) else "VM.Monitor"
        lines.append(
            f"Proxmox VE {facts.version_text}: {cloud} import cloud images (needs "
            f"{show_version(CLOUD_IMAGE_IMPORT)}); the guest agent needs {agent}"
        )
    lines.append("nodes: " + ", ".join(f"{n} ({s})" for n, s in sorted(facts.nodes.items())))
    for s in facts.storages:
        where = "shared" if s.shared else "local"
        lines.append(f"storage {s.name} on {lab.proxmox.node}: {s.type}, {where}, content {','.join(s.content)}")
    lines.append(f"bridges on {lab.proxmox.node} this token may use: {', '.join(facts.bridges) or 'none'}")
    return lines
