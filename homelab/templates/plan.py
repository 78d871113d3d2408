"""Planning a template build: facts in, an ordered tuple of actions out. Pure: no I/O.

Each action is a frozen object that describes itself; the executors (cloudimage.py, packer.py) carry them
out. The plan is shown before anything changes.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from homelab.adapters.proxmox.cluster import ClusterFacts
from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.marks import AGENT_TAG, describe_template, join_tags, template_tags
from homelab.adapters.proxmox.privileges import CLOUD_IMAGE_IMPORT, parse_version, show_version
from homelab.adapters.proxmox.versions import TemplateVersion, find_versions, pick_version, version_name
from homelab.errors import InputError, OperationError
from homelab.lab.models import Lab, Template
from homelab.lab.types import format_size
from homelab.templates.bake import BUILD_SETTINGS, BakeTemplateVm, SealTemplateVm
from homelab.templates.facts import HalfBuilt, next_free_vmid
from homelab.templates.images import Image, image_filename
from homelab.templates.naming import new_version

# The storage Proxmox installs put next to every node; preferred for downloads when it takes imports.
PREFERRED_IMPORT_STORAGE = "local"

# What packer.iso_file and packer.clone_vm may be. Both end up in the rendered HCL and a Packer command's
# view of the world, so anything else (a newline, a quote) is refused before rendering.
ISO_FILE = re.compile(r"^[A-Za-z0-9._-]+:iso/[A-Za-z0-9._+-]+$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
VM_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")  # PVE's own rule for VM names (dns-name)


@dataclass(frozen=True)
class BuildFacts(ClusterFacts):
    """What a build plan needs to know: the cluster's facts, plus what only a build reads."""

    # the versions of the template being built, oldest first
    versions: tuple[TemplateVersion, ...] = ()
    # cloud-image builds: storages of the node that take imports, and the image files already on them
    import_storages: tuple[str, ...] = ()
    import_files: frozenset[str] = frozenset()
    # packer builds: the Proxmox type of the disk storage (lvmthin, dir, zfspool, ...)
    storage_type: str | None = None
    # what /version reported (cloud-image builds; None: not read)
    pve_version: str | None = None
    # VMs an interrupted build of this template left (marked as the lab's, not templates): removed first
    half_built: tuple[HalfBuilt, ...] = ()


@dataclass(frozen=True)
class RemoveHalfBuilt:
    """Remove a VM an interrupted build left (it is re-checked against its mark right before)."""

    node: str
    vmid: int
    name: str
    version: str
    unmarked: bool = False  # a Packer build this machine recorded starting (Packer marks its VM only at the end)

    def describe(self) -> str:
        return f"remove VM {self.vmid} {self.name}: a build of version {self.version} that never finished"


@dataclass(frozen=True)
class DownloadImage:
    """Proxmox downloads the image to an import storage and verifies its checksum."""

    node: str
    storage: str
    filename: str
    url: str
    algorithm: str
    checksum: str

    @property
    def volid(self) -> str:
        return f"{self.storage}:import/{self.filename}"

    def describe(self) -> str:
        return f"download {self.url} to {self.volid} (verify {self.algorithm} {self.checksum[:16]}...)"


@dataclass(frozen=True)
class ReuseImage:
    """The image is already on storage under its checksum's name: no download."""

    volid: str

    def describe(self) -> str:
        return f"reuse {self.volid} (downloaded and verified by an earlier build)"


@dataclass(frozen=True)
class CreateTemplateVm:
    """Create the VM that becomes the template, its disk imported from the image."""

    node: str
    vmid: int
    name: str
    params: tuple[tuple[str, str | int], ...]

    def describe(self) -> str:
        params = dict(self.params)
        disk = str(params.get("scsi0", "")).split(",")
        source = next((p.split("=", 1)[1] for p in disk if p.startswith("import-from=")), "?")
        return (
            f"create VM {self.vmid} {self.name} on {self.node}: disk imported from {source} to "
            f"{disk[0].split(':')[0]}, cloud-init drive (for the build: user {params.get('ciuser')}, homelab's "
            f"admin key, {str(params.get('ipconfig0', '')).removeprefix('ip=')}), serial console, guest agent, "
            f"{params.get('cores')} cores, {params.get('memory')} MiB"
        )


@dataclass(frozen=True)
class GrowTemplateDisk:
    """Grow the imported disk to the template's size (never shrinks)."""

    node: str
    vmid: int
    disk: str
    size: str

    def describe(self) -> str:
        return f"grow {self.disk} of VM {self.vmid} to {self.size}"


@dataclass(frozen=True)
class ConvertToTemplate:
    """Turn the VM into a template."""

    node: str
    vmid: int
    name: str

    def describe(self) -> str:
        return f"convert VM {self.vmid} to template {self.name}"


@dataclass(frozen=True)
class RenderPacker:
    """Write the Packer configuration for this build."""

    directory: Path
    source: str  # proxmox-iso or proxmox-clone
    clone_vm: str | None = None

    def describe(self) -> str:
        return f"render the {self.source} configuration into {self.directory}"


@dataclass(frozen=True)
class RunPacker:
    """packer build, its output streamed to the progress display and a log file."""

    directory: Path
    log_path: Path
    vmid: int
    name: str
    source: str
    clone_vm: str | None = None
    iso_file: str | None = None

    def describe(self) -> str:
        start = f"a full clone of {self.clone_vm}" if self.clone_vm else f"an install from {self.iso_file}"
        return f"packer build {self.source}: template {self.vmid} {self.name} from {start} (log: {self.log_path})"


@dataclass(frozen=True)
class FinalizeTemplate:
    """Set what Packer cannot (tags on Packer 1.6, serial console) and the description homelab reads."""

    node: str
    vmid: int
    params: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        keys = ", ".join(k for k, _ in self.params)
        return f"set {keys} of template {self.vmid}"


BuildAction = (
    RemoveHalfBuilt
    | DownloadImage
    | ReuseImage
    | CreateTemplateVm
    | GrowTemplateDisk
    | BakeTemplateVm
    | SealTemplateVm
    | ConvertToTemplate
    | RenderPacker
    | RunPacker
    | FinalizeTemplate
)


@dataclass(frozen=True)
class BuildPlan:
    """A template build: which version, where, and the actions that make it."""

    lab: str
    template: str
    builder: str
    version: str
    vmid: int
    node: str
    name: str
    record: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    actions: tuple[BuildAction, ...] = ()

    def describe(self) -> list[str]:
        """The plan as lines for people."""
        head = f"template {self.template}: build version {self.version} as VM {self.vmid} {self.name} ({self.builder})"
        return [head, *(f"  {i}. {a.describe()}" for i, a in enumerate(self.actions, 1))]


def choose_import_storage(storages: tuple[str, ...] | list[str], node: str) -> str:
    """The storage images are downloaded to: ``local`` if it takes imports, else the first that does."""
    if not storages:
        raise OperationError(
            f"no storage on node {node} takes disk images to import (content type 'import'): enable it on a "
            "file storage, e.g. `pvesm set local --content iso,vztmpl,backup,import`"
        )
    return PREFERRED_IMPORT_STORAGE if PREFERRED_IMPORT_STORAGE in storages else storages[0]


def check_import_version(template: Template, reported: str | None) -> None:
    """Refuse a cloud-image build below PVE 8.4, which cannot download a .qcow2 for import (OperationError)."""
    version = parse_version(reported)
    if version is not None and version < CLOUD_IMAGE_IMPORT:
        raise OperationError(
            f"template {template.name!r}: Proxmox VE {reported} cannot download a cloud image for import "
            f"(needs {show_version(CLOUD_IMAGE_IMPORT)} or later): upgrade the node or use builder: packer"
        )


def _cleanup(facts: BuildFacts) -> tuple[BuildAction, ...]:
    return tuple(RemoveHalfBuilt(h.node, h.vmid, h.name, h.version, h.unmarked) for h in facts.half_built)


def _record(lab: Lab, template: Template, version: str, now: datetime, **extra: str) -> dict[str, str]:
    record = {
        "lab": lab.name,
        "template": template.name,
        "version": version,
        "builder": template.builder,
        "os": template.os,
    }
    record.update({k: v for k, v in extra.items() if v})
    record["built"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return record


def _identity(template: Template, facts: BuildFacts, now: datetime) -> tuple[str, int, str]:
    # a half-built VM's version counts as taken: versions only grow, and no two VMs ever share a version's name
    version = new_version(now, [v.version for v in facts.versions] + [h.version for h in facts.half_built])
    vmid = next_free_vmid(facts.guests, template.vmid_range)
    return version, vmid, version_name(template.name, version)


def plan_cloud_image(
    lab: Lab, template: Template, facts: BuildFacts, image: Image, now: datetime, admin_key: str
) -> BuildPlan:
    """Plan a cloud-image build: download (or reuse) the image, create a VM importing it, bake the guest agent
    in over SSH at network.build_ip (logging in with homelab's ``admin_key``), make it a template."""
    node = lab.proxmox.node
    check_import_version(template, facts.pve_version)
    build_ip = lab.network.build_ip
    if build_ip is None:  # the lab's checks require it for cloud-image templates; a library caller may not
        raise InputError("network.build_ip: required key is missing (the address the build VM gets for its bake)")
    version, vmid, name = _identity(template, facts, now)
    storage = choose_import_storage(facts.import_storages, node)
    filename = image_filename(image)
    volid = f"{storage}:import/{filename}"
    fetch: BuildAction
    if volid in facts.import_files:
        fetch = ReuseImage(volid)
    else:
        fetch = DownloadImage(node, storage, filename, image.url, image.algorithm, image.checksum)
    record = _record(lab, template, version, now, image=image.url, checksum=image.pinned)
    params: tuple[tuple[str, str | int], ...] = (
        ("vmid", vmid),
        ("name", name),
        ("ostype", "l26"),
        ("cores", template.cores),
        ("memory", template.memory),
        ("scsihw", "virtio-scsi-single"),
        ("scsi0", f"{lab.proxmox.storage}:0,import-from={volid},discard=on"),
        ("ide2", f"{lab.proxmox.storage}:cloudinit"),
        ("boot", "order=scsi0"),
        ("serial0", "socket"),
        ("vga", "serial0"),
        ("agent", "enabled=1"),
        ("net0", f"virtio,bridge={lab.proxmox.bridge}"),
        ("tags", join_tags(template_tags(lab.name))),
        ("description", describe_template(record)),
        *_build_cloud_init(lab, build_ip, admin_key),
        *((("pool", lab.proxmox.pool),) if lab.proxmox.pool else ()),
    )
    build_only = tuple(key for key in BUILD_SETTINGS if key in dict(params))
    actions: tuple[BuildAction, ...] = (
        *_cleanup(facts),
        fetch,
        CreateTemplateVm(node, vmid, name, params),
        GrowTemplateDisk(node, vmid, "scsi0", format_size(template.disk)),
        BakeTemplateVm(node, vmid, build_ip, lab.access.user),
        SealTemplateVm(node, vmid, build_only, join_tags([*template_tags(lab.name), AGENT_TAG])),
        ConvertToTemplate(node, vmid, name),
    )
    return BuildPlan(lab.name, template.name, "cloud-image", version, vmid, node, name, record, actions)


def _build_cloud_init(lab: Lab, build_ip: str, admin_key: str) -> tuple[tuple[str, str], ...]:
    """The cloud-init settings of the build VM only: the lab's user with homelab's admin key (the bake logs in
    with it), the static build address with the lab's gateway, the lab's DNS. Removed before it is a template."""
    net = lab.network
    settings = [
        ("ciuser", lab.access.user),
        ("sshkeys", urllib.parse.quote(admin_key, safe="")),
        ("ipconfig0", f"ip={build_ip}/{net.subnet.split('/')[1]},gw={net.gateway}"),
    ]
    if net.dns:
        settings.append(("nameserver", " ".join(net.dns)))
    if net.domain:
        settings.append(("searchdomain", net.domain))
    return tuple(settings)


def check_packer_source(template: Template, *, iso_file: str | None = None, clone_vm: str | None = None) -> None:
    """Refuse an iso_file or clone_vm that is not a plain PVE volume id or VM name (InputError)."""
    if iso_file is not None and not ISO_FILE.match(iso_file):
        raise InputError(
            f"template {template.name!r}: packer.iso_file {iso_file!r} is not an ISO volume on Proxmox storage: "
            "write <storage>:iso/<file name>, e.g. local:iso/debian-12.iso (letters, digits, . _ + - only)"
        )
    if clone_vm is not None and not VM_NAME.match(clone_vm):
        raise InputError(
            f"template {template.name!r}: packer.clone_vm {clone_vm!r} is not a VM name: letters, digits and "
            "hyphens, in dot-separated parts of at most 63 characters (e.g. debian-docker)"
        )


def clone_source(lab: Lab, template: Template, guests: tuple[Guest, ...] | list[Guest]) -> str:
    """The VM name Packer clones: the newest version of a lab template named by clone_vm, else that VM itself."""
    wanted = template.packer.clone_vm if template.packer else None
    if not wanted:
        raise InputError(f"template {template.name!r}: packer.clone_vm is required when packer.source is clone")
    check_packer_source(template, clone_vm=wanted)
    for other in lab.templates:
        if other.name == wanted:
            return pick_version(find_versions(guests, other.name), other).name
    if any(g.name == wanted for g in guests):
        return wanted
    raise OperationError(
        f"template {template.name!r}: clone_vm {wanted!r} is neither a template of this lab nor a VM on Proxmox"
    )


def plan_packer(
    lab: Lab,
    template: Template,
    facts: BuildFacts,
    now: datetime,
    build_dir: Path,
    log_path: Path,
) -> BuildPlan:
    """Plan a Packer build: render, packer build, then tag and describe the new template through the API."""
    node = lab.proxmox.node
    version, vmid, name = _identity(template, facts, now)
    settings = template.packer
    source_kind = settings.source if settings else "clone"
    clone_vm = clone_source(lab, template, facts.guests) if source_kind == "clone" else None
    iso_file = settings.iso_file if settings and source_kind == "iso" else None
    if source_kind == "iso" and not iso_file:
        raise InputError(f"template {template.name!r}: packer.iso_file is required when packer.source is iso")
    check_packer_source(template, iso_file=iso_file)
    source = f"proxmox-{source_kind}"
    record = _record(lab, template, version, now, source=clone_vm or iso_file or "")
    finalize = (
        # templates/ansible/bake.yml installs and enables qemu-guest-agent
        ("tags", join_tags([*template_tags(lab.name), AGENT_TAG])),
        ("description", describe_template(record)),
        ("serial0", "socket"),
        ("vga", "serial0"),
    )
    actions: tuple[BuildAction, ...] = (
        *_cleanup(facts),
        RenderPacker(build_dir, source, clone_vm),
        RunPacker(build_dir, log_path, vmid, name, source, clone_vm, iso_file),
        FinalizeTemplate(node, vmid, finalize),
    )
    return BuildPlan(lab.name, template.name, "packer", version, vmid, node, name, record, actions)
