"""The least-privilege role homelab's API token needs, as one table, and the Proxmox VE versions it depends on.

Every row is one privilege on one path (a template filled from the lab: ``{node}``, ``{storage}``,
``{import_storage}``, ``{bridge}``, ``{gpu}``), why homelab needs it, the PVE versions it applies to and what
needs it: ``vms`` (apply: clone, configure, start, read addresses), ``build`` (any template build),
``cloud-image`` (a cloud-image build: the download) or ``gpu`` (each GPU mapping the lab's VMs name). Read from
what homelab calls (adapters/proxmox, the stages) and from PVE's permission checks (qemu-server API2/Qemu.pm
and Qemu/Agent.pm, pve-storage API2/Storage/Status.pm, pve-manager API2/Network.pm). Add a row when homelab
starts calling something new (VM.Migrate for clusters, Pool.Audit for pools, VM.Console for a bake):
`homelab doctor`, the README's role and the fake's grants all read this table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Version = tuple[int, int, int]

ROLE = "Homelab"  # the role name the README and doctor's fixes use
TOKEN_ID = "homelab@pve!homelab"  # the README's user and token (a name, not a secret)
# download-url takes content=import with a .qcow2 file from libpve-storage-perl 8.3.6 on, which PVE 8.4 ships;
# PVE 8.3 knows content=import for OVAs only ("invalid filename or wrong extension"), 8.0 to 8.2 not at all.
CLOUD_IMAGE_IMPORT: Version = (8, 4, 0)
# The ``import`` content type of a storage exists from PVE 8.3 (libpve-storage-perl 8.2.8).
IMPORT_CONTENT: Version = (8, 3, 0)
NO_MAX: Version = (999, 0, 0)


@dataclass(frozen=True)
class Privilege:
    """One privilege on one path of the role, why homelab needs it, and when."""

    name: str
    path: str
    why: str
    needed_for: tuple[str, ...] = ("vms", "build")
    min_version: Version = (8, 0, 0)
    max_version: Version = NO_MAX  # exclusive

    def applies(self, version: Version, purposes: Iterable[str]) -> bool:
        """Whether this row counts on a PVE of ``version`` for a run needing ``purposes``."""
        return self.min_version <= version < self.max_version and bool(set(self.needed_for) & set(purposes))


VMS, STORAGE, IMPORTS, NODE, BRIDGE = (
    "{vms}",  # /vms, or /pool/<pool> for a lab with proxmox.pool (its VMs and templates all live there)
    "/storage/{storage}",
    "/storage/{import_storage}",
    "/nodes/{node}",
    ("/sdn/zones/localnetwork/{bridge}"),
)
GPU = "/mapping/pci/{gpu}"  # one row per GPU mapping the lab's VMs name (checked once per name)

PRIVILEGES: tuple[Privilege, ...] = (
    Privilege("VM.Audit", VMS, "see VMs and templates (PVE hides what a token may not audit)"),
    Privilege("VM.Allocate", VMS, "create, convert to template and remove VMs"),
    Privilege("VM.Clone", VMS, "clone VMs from a template version", ("vms",)),
    Privilege("VM.Config.Disk", VMS, "import and grow disks, add the cloud-init drive"),
    Privilege("VM.Config.CPU", VMS, "set cores"),
    Privilege("VM.Config.Memory", VMS, "set memory"),
    Privilege("VM.Config.Network", VMS, "put the NIC on the bridge"),
    Privilege("VM.Config.Options", VMS, "set name, tags, description mark, onboot, agent"),
    Privilege("VM.Config.HWType", VMS, "set the serial console, SCSI controller and display"),
    Privilege("VM.Config.Cloudinit", VMS, "set the cloud-init user, SSH keys, address and DNS"),
    Privilege("VM.PowerMgmt", VMS, "start, stop and reboot VMs", ("vms",)),
    Privilege(
        "VM.Monitor", VMS, "read addresses and SSH host keys through the guest agent", ("vms",), max_version=(9, 0, 0)
    ),
    Privilege("VM.GuestAgent.Audit", VMS, "read addresses through the guest agent", ("vms",), min_version=(9, 0, 0)),
    Privilege("VM.GuestAgent.FileRead", VMS, "read SSH host keys through the guest agent", ("vms",), (9, 0, 0)),
    Privilege("Datastore.AllocateSpace", STORAGE, "put VM disks on the lab's storage"),
    Privilege("SDN.Use", BRIDGE, "create and clone VMs with a NIC on the lab's bridge"),
    Privilege("Datastore.AllocateTemplate", IMPORTS, "download cloud images (download-url)", ("cloud-image",)),
    Privilege("Datastore.Audit", IMPORTS, "find downloaded images and import disks from them", ("cloud-image",)),
    Privilege(
        "Sys.AccessNetwork", NODE, "let Proxmox download a cloud image (download-url)", ("cloud-image",), (8, 2, 0)
    ),
    Privilege("VM.Migrate", VMS, "move a VM cloned from local storage to its node (clusters)", ("vms",)),
    Privilege("VM.Snapshot", VMS, "take and prune snapshots (homelab snapshot)", ("snapshots",)),
    Privilege("VM.Snapshot.Rollback", VMS, "return a VM to a snapshot (homelab rollback)", ("snapshots",)),
    Privilege("VM.Backup", VMS, "back up VMs with vzdump (homelab backup)", ("backups",)),
    # qemu-server's hostpci check: a mapped device needs Mapping.Use on its mapping (raw host= ids: root@pam only)
    Privilege("Mapping.Use", GPU, "pass the VM its GPU through the PCI resource mapping (vms[].gpu)", ("gpu",)),
    # Optional: without it apply keeps settings.concurrency disk tasks per node (homelab/provision/pacing.py).
    Privilege("Sys.Audit", NODE, "read the node's load (IO delay, CPU, memory) to pace clones", ("pacing",)),
)
# What the README's role covers: everything but the backup job of backup.schedule, which needs Sys.Modify on /
# (a broad right, granted only by those who want the job).
ROLE_PURPOSES = ("vms", "build", "cloud-image", "snapshots", "backups", "pacing", "gpu")


def parse_version(text: str | None) -> Version | None:
    """``9.0.10`` (``/version``'s version) as (9, 0, 10); None if it is not one."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def show_version(version: Version) -> str:
    return ".".join(str(part) for part in version)


def role_privileges(version: Version, purposes: Iterable[str] = ROLE_PURPOSES) -> list[str]:
    """The role's privileges on PVE ``version`` (sorted, each once)."""
    wanted = tuple(purposes)
    return sorted({p.name for p in PRIVILEGES if p.applies(version, wanted)})


@dataclass(frozen=True)
class Needed:
    """One privilege on one concrete path, and why."""

    name: str
    path: str
    why: str


def needed(version: Version, purposes: Iterable[str], places: Mapping[str, str]) -> list[Needed]:
    """The privileges a run needing ``purposes`` must hold, on the lab's concrete paths (``places`` fills the
    path templates: node, storage, import_storage, bridge; a row whose place is unknown is left out)."""
    wanted = tuple(purposes)
    places = {"vms": "/vms", **places}
    out = []
    for row in PRIVILEGES:
        if not row.applies(version, wanted):
            continue
        try:
            path = row.path.format(**places)
        except KeyError:
            continue
        out.append(Needed(row.name, path, row.why))
    return out


def holds(permissions: Mapping[str, Mapping[str, object]], path: str, privilege: str) -> bool:
    """Whether ``/access/permissions``' answer grants ``privilege`` on ``path``: the most specific path listed
    that is ``path`` or one of its parents decides (PVE's answer holds the effective privileges per path)."""
    covering = [p for p in permissions if _covers(p.rstrip("/") or "/", path)]
    if not covering:
        return False
    best = max(covering, key=lambda p: len(p.rstrip("/")))
    return bool(permissions[best].get(privilege))


def _covers(base: str, path: str) -> bool:
    return base == "/" or path == base or path.startswith(base + "/")


def acl_paths(places: Mapping[str, str], purposes: Iterable[str] = ROLE_PURPOSES) -> list[str]:
    """The paths the role is granted on for the lab's places (the README's `pveum acl modify` lines)."""
    wanted = tuple(purposes)
    places = {"vms": "/vms", **places}
    paths: list[str] = []
    for row in PRIVILEGES:
        if not set(row.needed_for) & set(wanted):
            continue
        try:
            path = row.path.format(**places)
        except KeyError:
            continue
        if path not in paths:
            paths.append(path)
    return paths


def principals(token_id: str | None, user: str | None) -> str:
    """The `pveum acl modify` options naming who gets a role: the user, and its token (a token with privilege
    separation holds only what both the user and the token hold)."""
    if token_id:
        owner = token_id.split("!", 1)[0]
        return f"--users {owner} --tokens '{token_id}'"
    return f"--users {user}"


def grant_command(path: str, token_id: str | None, user: str | None) -> str:
    return f"pveum acl modify {path} --roles {ROLE} {principals(token_id, user)}"


def role_command(privileges: Iterable[str], add: bool = False) -> str:
    privs = ",".join(privileges)
    if add:
        return f'pveum role add {ROLE} --privs "{privs}"'
    return f'pveum role modify {ROLE} --append 1 --privs "{privs}"'


def setup_lines(version: Version, places: Mapping[str, str], token_id: str = TOKEN_ID) -> list[str]:
    """The shell lines that make the user, the role, the token and their ACLs on PVE ``version``."""
    user, token = token_id.split("!", 1)
    lines = [
        f"pveum user add {user}",
        role_command(role_privileges(version), add=True),
        f"pveum user token add {user} {token} --privsep 1   # prints the secret once",
    ]
    lines += [grant_command(path, token_id, None) for path in acl_paths(places)]
    return lines
