"""The lab file as frozen models that forbid unknown keys.

Field descriptions double as the "what is expected" half of error messages and as the JSON Schema
that editors use to complete lab.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from homelab.lab.types import IPv4, OptionalSize, Size, Subnet, VmAddress, defaults, empty_dict, empty_list

DnsName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="lower-case letters, digits and '-' (a DNS label), e.g. docker-01"),
]
LabName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}$"),
    Field(description="lower-case letters, digits and '-', starting with a letter, at most 31 characters"),
]
Tag = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9_][a-z0-9_.+-]*$"),
    Field(description="a Proxmox tag: lower-case letters, digits, '_', '.', '+' and '-'"),
]
VmId = Annotated[int, Field(ge=100, le=999_999_999, description="a Proxmox VM id, 100 to 999999999")]
Cores = Annotated[int, Field(ge=1, le=128, description="an integer number of CPU cores, 1 to 128")]
Memory = Annotated[int, Field(ge=256, le=4_194_304, description="an integer number of MiB, 256 or more, e.g. 4096")]


class Strict(BaseModel):
    """Base of every lab model: frozen, unknown keys are errors."""

    # defer_build: a model's validator is built when first used, so loading a lab builds Lab's (which holds the
    # others) once instead of one per model at import: `homelab validate` starts faster.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False, defer_build=True)


class Proxmox(Strict):
    """How to reach the Proxmox API. The secret (token or password) never lives here."""

    url: Annotated[
        str,
        StringConstraints(pattern=r"^https://[^\s/]+(:\d+)?/?$"),
        Field(description="the API address, https://host:8006"),
    ]
    node: DnsName = Field(description="the node VMs are created on unless a VM names another")
    storage: str = Field("local-lvm", min_length=1, description="storage for VM disks, e.g. local-lvm")
    bridge: str = Field("vmbr0", pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", description="network bridge, e.g. vmbr0")
    token_id: str | None = Field(
        None,
        pattern=r"^[^\s!@]+@[^\s!@]+![A-Za-z][A-Za-z0-9._-]*$",
        description="API token id user@realm!name; its secret comes from HOMELAB_PROXMOX_TOKEN or the secrets file",
    )
    user: str | None = Field(
        None,
        pattern=r"^[^\s!@]+@[^\s!@]+$",
        description="user@realm for password login (prefer token_id); the password comes from "
        "HOMELAB_PROXMOX_PASSWORD or the secrets file",
    )
    verify_tls: bool = Field(True, description="verify the server certificate (leave on; use ca_bundle instead)")
    ca_bundle: str | None = Field(None, description="path of a PEM CA bundle that signed the Proxmox certificate")
    pool: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+){0,2}$",
        description="a resource pool (made beforehand, e.g. `pveum pool add homelab`) that every VM and template "
        "homelab creates joins, so a token whose rights are on /pool/<name> is enough",
    )


class CloudImage(Strict):
    """A distribution cloud image, downloaded by Proxmox itself."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$"), Field(description="the image's address")]
    checksum: Annotated[
        str,
        StringConstraints(pattern=r"^(sha256|sha512):[0-9a-f]{64,128}$"),
        Field(description="algorithm:hex, e.g. sha256:<64 hex digits>"),
    ]


class PackerSource(Strict):
    """How Packer starts the build: an installer ISO or a clone of an existing template."""

    source: Literal["iso", "clone"] = Field("clone", description="iso (proxmox-iso) or clone (proxmox-clone)")
    iso_file: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+:iso/[A-Za-z0-9._+-]+$",
        description="an ISO already on storage, e.g. local:iso/debian-12.iso",
    )
    clone_vm: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
        description="name of the VM template to clone from (a Proxmox VM name)",
    )


class Template(Strict):
    """A versioned VM template. Versions are named <name>-<YYYYMMDDHHMM>."""

    name: DnsName
    builder: Literal["cloud-image", "packer"] = Field(
        "cloud-image", description="cloud-image (through the API, no Packer) or packer"
    )
    os: Literal["debian-12", "debian-13", "ubuntu-24.04"] = Field("debian-12", description="the guest OS")
    vmid_range: tuple[VmId, VmId] = Field((9000, 9099), description="[first, last] vmid for template versions")
    version: Annotated[
        str | None,
        StringConstraints(pattern=r"^\d{12}$"),
        Field(description="pin a version (YYYYMMDDHHMM); default: the newest"),
    ] = None
    image: CloudImage | None = Field(None, description="the cloud image (builder: cloud-image); default per os")
    packer: PackerSource | None = Field(None, description="Packer settings (builder: packer)")
    cores: Cores = 2
    memory: Memory = 2048
    disk: Size = Field(8 * 1024**3, description="disk size of the template, e.g. 8G")


class Network(Strict):
    """The network the VMs live on."""

    subnet: Subnet = Field(description="the VM network in CIDR form, e.g. 192.168.1.0/24")
    gateway: IPv4 = Field(description="the default gateway, inside subnet")
    dns: list[IPv4] = Field(default_factory=empty_list, description="DNS servers")
    domain: str | None = Field(
        None,
        pattern=r"^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        description="search domain, e.g. home.arpa",
    )
    build_ip: IPv4 | None = Field(
        None,
        description="a free address in subnet that a template build VM gets while homelab bakes the cloud image "
        "(installs qemu-guest-agent over SSH); required for builder: cloud-image",
    )


class Access(Strict):
    """Who can log in to the VMs (cloud-init)."""

    user: DnsName = Field("homelab", description="the login user cloud-init creates")
    ssh_keys: list[
        Annotated[str, StringConstraints(pattern=r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+")]
    ] = Field(default_factory=empty_list, description="public SSH keys (one OpenSSH line each)")


class Timeouts(Strict):
    """Seconds to wait for each kind of operation."""

    task: int = Field(600, ge=1, description="any Proxmox task (seconds)")
    clone: int = Field(1800, ge=1, description="a clone; full clones on slow disks take minutes (seconds)")
    start: int = Field(300, ge=1, description="a VM start (seconds)")
    agent: int = Field(
        600,
        ge=1,
        description="the agent answering and cloud-init finishing after a start; a template's build VM letting "
        "homelab in over SSH (seconds)",
    )
    connection: int = Field(
        45, ge=1, description="a lost connection to the Proxmox API is retried this long, then reported (seconds)"
    )


class Settings(Strict):
    """How homelab works against this lab."""

    concurrency: int = Field(
        4, ge=1, le=64, description="clones and other disk tasks at once per Proxmox node (fewer while it is busy)"
    )
    api_readers: int = Field(
        64,
        ge=1,
        le=128,
        description="API reads in flight at once, one kept-alive connection each, while gathering facts (a config "
        "read per VM): they hide the round trip (500 VMs: about 8); pveproxy's 3 workers answer one read at a "
        "time each, so more readers mean fewer waits, not more load on Proxmox",
    )
    full_clone: bool = Field(False, description="full clones instead of linked clones, lab-wide")
    data_disk: OptionalSize | None = Field(
        None,
        description="a data disk for every VM that runs stacks (unless the VM sets data_disk), e.g. 100G; it holds "
        "the stacks' state and survives replacements",
    )
    snapshots_keep: int = Field(
        3, ge=0, le=100, description="snapshots homelab took (`homelab snapshot`) kept per VM; older ones are pruned"
    )
    snapshot_before_changes: bool = Field(
        True,
        description="snapshot a VM before a change that could lose data (a replacement: the new VM with the moved "
        "data disk, before its first start; a stack removal), so `homelab rollback VM` can return to it",
    )
    ciupgrade: bool = Field(
        False,
        description="let cloud-init upgrade every package on a new VM's first boot (PVE's own default is on); off: "
        "templates are versioned and rebuilt instead, and no upgrade races the deploy's apt",
    )
    timeouts: Timeouts = Field(default_factory=defaults(Timeouts))
    auth: AuthName = Field(
        "none",
        description="forward-auth for every stack's web UIs unless the stack says otherwise (stacks.<name>.auth): "
        "authelia (its stack must run on the VM) or none",
    )


class Backup(Strict):
    """Backups of the lab's VMs with Proxmox's vzdump: `homelab backup` now, or a PVE backup job on a schedule."""

    storage: str | None = Field(
        None, min_length=1, description="a storage with backup content; default: the first one the node has"
    )
    schedule: str | None = Field(
        None,
        pattern=r"^[a-z0-9:,.*/ -]+$",
        description="a PVE calendar event, e.g. 'sun 02:00' or 'daily'; homelab keeps a backup job for the lab's "
        "VMs (needs Sys.Modify on /); unset: no job",
    )
    keep_last: int = Field(7, ge=1, le=1000, description="backups kept per VM (prune-backups keep-last)")
    mode: Literal["snapshot", "suspend", "stop"] = Field("snapshot", description="vzdump mode")


class Vm(Strict):
    """One VM of the lab."""

    name: DnsName
    template: DnsName | None = Field(None, description="template name; default: the lab's only/first template")
    cores: Cores = 2
    memory: Memory = 2048
    disk: Size = Field(32 * 1024**3, description="disk size, e.g. 32G; disks only ever grow")
    ip: VmAddress = "dhcp"
    vmid: VmId | None = None
    node: DnsName | None = Field(None, description="node; default proxmox.node")
    tags: list[Tag] = Field(default_factory=empty_list)
    stacks: list[DnsName] = Field(default_factory=empty_list, description="service stacks this VM runs")
    full: bool | None = Field(None, description="full clone for this VM; default settings.full_clone")
    data_disk: OptionalSize | None = Field(
        None,
        description="size of the VM's data disk (mounted at /home/homelab/data), e.g. 200G; it moves to the new VM "
        "when the VM is replaced and is kept when the VM is destroyed; default settings.data_disk for VMs with stacks",
    )
    ciupgrade: bool | None = Field(None, description="package upgrade on first boot; default settings.ciupgrade")
    gpu: str | None = Field(
        None,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="a Proxmox PCI resource mapping (Datacenter > Resource Mappings) passed to the VM; its "
        "stacks get /dev/dri (Jellyfin transcodes on it)",
    )


class Repo(Strict):
    """The private config repo the VMs check out into /home/homelab/config."""

    url: Annotated[
        str,
        StringConstraints(pattern=r"^(ssh://[^\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+)$"),
        Field(description="an SSH clone URL, e.g. git@github.com:me/homelab-config.git"),
    ]
    branch: str = Field("main", pattern=r"^[A-Za-z0-9._/-]+$")


EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")]
AuthName = Literal["authelia", "none"]


class ServiceExtension(Strict):
    """What the lab adds to one service of a stack (rendered into compose.homelab.yml, an overlay)."""

    environment: dict[EnvName, str] = Field(default_factory=empty_dict, description="extra environment (no secrets)")
    labels: dict[Annotated[str, StringConstraints(min_length=1)], str] = Field(
        default_factory=empty_dict, description="extra labels"
    )
    volumes: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=empty_list, description="extra volumes, e.g. /mnt/photos:/photos:ro"
    )


class StackExtension(Strict):
    """A built-in stack extended from the lab file without copying it."""

    services: dict[Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9._-]+$")], ServiceExtension] = Field(
        default_factory=empty_dict, description="per service: environment, labels, volumes to add"
    )


class StackSettings(Strict):
    """Per-stack settings (non-secret)."""

    subdomain: DnsName | None = Field(None, description="host name under network.domain for the stack's UI")
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$", description="image tag to pin")
    env: dict[Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")], str] = Field(
        default_factory=empty_dict,
        description="extra non-secret environment for the stack (secrets go in the secrets file: `homelab secrets`)",
    )
    extend: StackExtension | None = Field(
        None, description="environment, labels and volumes added to the stack's services (compose.homelab.yml)"
    )
    auth: AuthName | None = Field(
        None, description="forward-auth in front of the stack's web UIs: authelia, or none (default settings.auth)"
    )
    setup_done: list[str] = Field(
        default_factory=empty_list,
        description="web UIs of the stack whose first-visit setup you have done (e.g. Jellyseerr once its admin "
        "exists): the login homelab put in front of their setup is lifted",
    )


class Acme(Strict):
    """Certificates from an ACME CA (Let's Encrypt by default) for the lab's domain."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the ACME account's e-mail address")
    challenge: Literal["dns", "http"] = Field(
        "dns", description="dns (DNS-01: a wildcard certificate, no open port needed) or http (HTTP-01 on port 80)"
    )
    dns_provider: str = Field(
        "cloudflare",
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="the DNS provider (a lego provider name, e.g. cloudflare); its API token is a secret of "
        "the traefik stack (secrets file or environment), never in this file",
    )
    server: str | None = Field(
        None,
        pattern=r"^https://\S+$",
        description="the ACME directory URL; default Let's Encrypt (its staging or a local test CA for trials)",
    )


class Https(Strict):
    """How the stacks' web UIs get their certificates. Plain HTTP only ever redirects to HTTPS."""

    ca: Literal["local", "acme"] = Field(
        "local",
        description="local (a CA homelab makes for the lab; trust its certificate once: `homelab secrets ca`) "
        "or acme (a public CA such as Let's Encrypt; needs a domain you own)",
    )
    acme: Acme | None = Field(None, description="the ACME settings (ca: acme)")


class Docker(Strict):
    """Where the VMs' Docker Engine and compose plugin come from."""

    source: Literal["docker", "distribution"] = Field(
        "docker",
        description="docker (Docker's own apt repository: current Engine and the compose v2 plugin) or "
        "distribution (the distribution's packages; Debian 12 has Docker 20.10 and compose v1)",
    )
    repository: str | None = Field(
        None,
        pattern=r"^https?://[^\s'\"]+$",
        description="a mirror of Docker's apt repository (source: docker), laid out as Docker's: "
        "<url>/dists/<release>/stable; {distribution} in it becomes debian or ubuntu; "
        "default https://download.docker.com/linux/{distribution}",
    )
    key_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s'\"]+$",
        description="where the VMs fetch the repository's signing key (apt checks every package against it: "
        "fetch it over https or from a host you trust); default <repository>/gpg",
    )


class Lab(Strict):
    """A whole lab: one file, validated."""

    name: LabName = Field(description="the lab's name; VMs it manages are tagged homelab-<name>")
    proxmox: Proxmox
    network: Network
    templates: list[Template] = Field(min_length=1, description="the VM templates (at least one)")
    access: Access = Field(default_factory=defaults(Access))
    settings: Settings = Field(default_factory=defaults(Settings))
    engine: Literal["homelab", "terraform"] = Field(
        "homelab",
        description="who changes the VMs: homelab (apply, up) or terraform (`homelab export terraform DIR` writes "
        "its configuration; apply and up then leave the VMs to it and only record their addresses)",
    )
    vms: list[Vm] = Field(default_factory=empty_list)
    repo: Repo | None = None
    stacks: dict[DnsName, StackSettings] = Field(default_factory=empty_dict, description="settings per stack")
    backup: Backup = Field(default_factory=defaults(Backup))
    timezone: str = Field(
        "Etc/UTC",
        pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        description="the stacks' TZ, e.g. Europe/Berlin",
    )
    https: Https = Field(default_factory=defaults(Https))
    docker: Docker = Field(default_factory=defaults(Docker))
    _folder: Path | None = PrivateAttr(default=None)

    @property
    def folder(self) -> Path | None:
        """The folder of the lab file (its own stacks are in <folder>/stacks/); None for a lab not read from one."""
        return self._folder

    def data_disk_for(self, vm: Vm) -> int | None:
        """The size of a VM's data disk, or None for a VM without one."""
        if vm.data_disk is not None:
            return vm.data_disk
        return self.settings.data_disk if vm.stacks else None

    def template_for(self, vm: Vm) -> Template:
        """The template a VM is cloned from."""
        name = vm.template or self.templates[0].name
        return next(t for t in self.templates if t.name == name)

    @property
    def tag(self) -> str:
        """The tag that marks a VM as managed by this lab."""
        return f"homelab-{self.name}"
