"""The Packer configuration of a template build, rendered (pure) and written: HCL2 from templates/packer,
the unattended install files of an ISO build, the build's throwaway keys, a README.

The rendered configuration works with Debian's Packer 1.6 (proxmox builders built in) and with current
Packer plus the proxmox and ansible plugins. The ``required_plugins`` block, which 1.6 rejects, lives in
its own file (see :mod:`homelab.adapters.packer` for how each is run). Secrets are never rendered: the
Proxmox login only ever travels in Packer's environment.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homelab import __version__
from homelab.adapters.proxmox.api import with_port
from homelab.adapters.ssh import ssh_args
from homelab.adapters.sshkeys import new_key_pair
from homelab.errors import InputError
from homelab.lab.models import Lab, Template
from homelab.lab.types import format_size
from homelab.paths import data_dir, state_dir
from homelab.state.files import write_atomic, write_secret
from homelab.templates.plan import check_packer_source

MAIN_FILE = "homelab.pkr.hcl"
PLUGINS_FILE = "required-plugins.pkr.hcl"
BUILD_KEY = "build-key"
PROXY_HOST_KEY = "proxy-host-key"
KNOWN_HOSTS = "build-known-hosts"
HTTP_DIR = "http"
# Files that hold a private key: written 0600, removed once Packer is done.
PRIVATE_FILES = frozenset({BUILD_KEY, PROXY_HOST_KEY, f"{HTTP_DIR}/preseed.cfg", f"{HTTP_DIR}/user-data"})
# Ansible accepts only the pinned host key (an ed25519 key). ControlPath=none: a master connection an
# earlier run left open to the same address would otherwise be reused without any host key check.
ANSIBLE_SSH_ARGS = ssh_args(KNOWN_HOSTS, extra=("HostKeyAlgorithms=ssh-ed25519", "ControlPath=none"))
# Keeps cloud-init from replacing an ISO build's host key on the installed system's first boot; the bake
# removes it again.
BUILD_CLOUD_CFG = "/etc/cloud/cloud.cfg.d/50-homelab-build.cfg"
# Where Debian and Ubuntu keep sftp-server (Packer's proxy defaults to /usr/lib/sftp-server).
SFTP_COMMAND = "/usr/lib/openssh/sftp-server -e"

# PVE storage types as Packer 1.6's storage_pool_type names them (current Packer ignores the setting).
STORAGE_POOL_TYPES = {"lvmthin": "lvm-thin", "dir": "directory", "zfspool": "zfspool", "lvm": "lvm", "rbd": "rbd"}

BOOT_COMMANDS = {
    # Debian's netinst: the installer's "auto" entry reads the preseed from Packer's HTTP server.
    "debian": [
        "<esc><wait>",
        "auto url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/preseed.cfg priority=critical<enter>",
    ],
    # Ubuntu's live server: autoinstall from the NoCloud seed Packer serves.
    "ubuntu": [
        "c<wait>",
        "linux /casper/vmlinuz --- autoinstall "
        'ds="nocloud-net;seedfrom=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"<enter><wait>',
        "initrd /casper/initrd<enter><wait>",
        "boot<enter>",
    ],
}
# The user a cloud image's cloud-init creates (and Packer's clone builder logs in as).
CLOUD_USERS = {"debian": "debian", "ubuntu": "ubuntu"}


def hcl_string(value: Any) -> str:
    """A value as an HCL2 quoted string: escapes, and no ${ or %{ template sequences."""
    text = str(value)
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    text = text.replace("\t", "\\t").replace("${", "$${").replace("%{", "%%{")
    return f'"{text}"'


def _family(os_name: str) -> str:
    return os_name.split("-", 1)[0]


def _release(os_name: str) -> str:
    return os_name.split("-", 1)[1]


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(data_dir("templates") / "packer"), str(data_dir("templates") / "http")]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 - HCL, preseed and YAML, not HTML; HCL values go through the hcl filter
    )
    env.filters["hcl"] = hcl_string
    return env


def make_build_key(comment: str = "homelab-template-build") -> tuple[bytes, str]:
    """A throwaway ed25519 key pair: (private OpenSSH PEM, public line). By default an ISO build's login key."""
    return new_key_pair(comment)


@dataclass(frozen=True)
class BuildKeys:
    """The throwaway SSH keys of one build, each (private OpenSSH PEM, public line), made fresh per build.

    host: the host key Ansible pins (build-known-hosts). An ISO build's VM is given it by the unattended
    install and Ansible connects to the VM itself; a clone build cannot give its VM a host key (Packer 1.6's
    clone builder takes no cloud-init user-data), so Ansible goes through Packer's local proxy, which
    presents this key and forwards over Packer's own SSH connection.
    login: the key an ISO build logs in with (a clone build logs in with a key Packer makes itself).
    """

    host: tuple[bytes, str]
    login: tuple[bytes, str] | None = None


def make_build_keys(iso: bool) -> BuildKeys:
    """Fresh keys for one build (a login key only for an ISO build)."""
    return BuildKeys(host=make_build_key("homelab-build-host"), login=make_build_key() if iso else None)


def host_key_script(host: tuple[bytes, str]) -> str:
    """A shell line (no single quotes in it) that installs the build's host key on the installed system."""
    private = base64.b64encode(host[0]).decode()
    public = " ".join(host[1].split()[:2])
    return (
        f"umask 077; echo {private} | base64 -d > /etc/ssh/ssh_host_ed25519_key; "
        f'echo "{public}" > /etc/ssh/ssh_host_ed25519_key.pub; chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub; '
        f'mkdir -p /etc/cloud/cloud.cfg.d; echo "ssh_deletekeys: false" > {BUILD_CLOUD_CFG}'
    )


def known_hosts_line(public: str) -> str:
    """The build's known_hosts entry: the pinned key for any address (the VM's address comes from DHCP)."""
    key_type, key = public.split()[:2]
    return f"* {key_type} {key}\n"


def packer_username(lab: Lab) -> str:
    """The Proxmox login Packer uses: the API token id or the user (not a secret)."""
    return lab.proxmox.token_id or lab.proxmox.user or ""


@dataclass(frozen=True)
class RenderSpec:
    """One rendering of a template's Packer configuration: what it needs besides the lab and the template.

    keys: the build's throwaway keys (make_build_keys); required unless communicator is "none". The files
    named in PRIVATE_FILES hold their private halves. private_dir: where write_files puts the private part
    (is_private) when it is not beside the rest; the configuration then refers to it by this absolute path.
    """

    version: str
    vm_id: int = 0  # 0: Proxmox picks
    description: str = ""
    clone_vm: str | None = None  # the template a clone build starts from; default: the lab's packer.clone_vm
    storage_type: str | None = None  # the PVE type of lab.proxmox.storage (Packer 1.6 wants it)
    communicator: str = "ssh"
    ssh_timeout: str = "45m"
    keys: BuildKeys | None = None
    private_dir: Path | None = None


def render_files(lab: Lab, template: Template, spec: RenderSpec | None = None, **fields: Any) -> dict[str, str]:
    """The Packer configuration for a template as {relative path: text}. Pure: nothing is written.

    ``fields`` are RenderSpec's, for a caller that passes them one by one instead of a ``spec``.
    """
    spec = spec if spec is not None else RenderSpec(**fields)
    source, clone_vm = _source(template, spec)
    iso = source == "iso"
    if spec.communicator != "none" and (spec.keys is None or (iso and spec.keys.login is None)):
        raise ValueError("a build that connects over SSH needs its keys (make_build_keys)")
    env = _environment()
    files = {
        MAIN_FILE: env.get_template(f"proxmox-{source}.pkr.hcl.j2").render(_context(lab, template, spec, clone_vm)),
        PLUGINS_FILE: (data_dir("templates") / "packer" / PLUGINS_FILE).read_text(encoding="utf-8"),
        "ansible/bake.yml": (data_dir("templates") / "ansible" / "bake.yml").read_text(encoding="utf-8"),
    }
    if spec.keys is not None:
        files.update(_key_files(spec.keys, iso))
    if iso:
        files.update(_unattended_files(env, lab, template, spec.keys))
    files["README.md"] = _readme(lab, template, source, iso, spec.private_dir)
    return files


def _source(template: Template, spec: RenderSpec) -> tuple[str, str | None]:
    """The build's source ("iso" or "clone") and the template a clone starts from, both checked."""
    settings = template.packer
    source = settings.source if settings else "clone"
    iso = source == "iso"
    clone_vm = spec.clone_vm
    if source == "clone" and not clone_vm:
        clone_vm = settings.clone_vm if settings else None
        if not clone_vm:
            raise InputError(f"template {template.name!r}: packer.clone_vm is required when packer.source is clone")
    if source == "iso" and not (settings and settings.iso_file):
        raise InputError(f"template {template.name!r}: packer.iso_file is required when packer.source is iso")
    # Every value reaches the HCL through hcl_string only; these two are also checked to be plain names.
    check_packer_source(template, iso_file=settings.iso_file if settings and iso else None, clone_vm=clone_vm)
    return source, clone_vm


def _context(lab: Lab, template: Template, spec: RenderSpec, clone_vm: str | None) -> dict[str, Any]:
    """The values the HCL templates are rendered with."""
    iso = template.packer is not None and template.packer.source == "iso"
    family = _family(template.os)
    private_dir, storage_type = spec.private_dir, spec.storage_type
    return {
        "homelab_version": __version__,
        "lab": lab.name,
        "template": template,
        "version": spec.version,
        "vm_id": spec.vm_id,
        "node": lab.proxmox.node,
        "storage": lab.proxmox.storage,
        "storage_pool_type": STORAGE_POOL_TYPES.get(storage_type or "lvmthin", storage_type or "lvm-thin"),
        "bridge": lab.proxmox.bridge,
        "proxmox_url": with_port(lab.proxmox.url) + "/api2/json",
        "pool": lab.proxmox.pool,
        "proxmox_username": packer_username(lab),
        "insecure_skip_tls_verify": not lab.proxmox.verify_tls,
        "description": spec.description,
        "disk_size": format_size(template.disk),
        "iso_file": template.packer.iso_file if template.packer else None,
        "clone_vm": clone_vm,
        "communicator": spec.communicator,
        "ssh_username": lab.access.user if iso else CLOUD_USERS[family],
        "ssh_private_key_file": _private_path(private_dir, BUILD_KEY) if iso else None,
        "ssh_timeout": spec.ssh_timeout,
        "http_directory": _private_path(private_dir, HTTP_DIR),
        "use_proxy": not iso,
        "proxy_host_key_file": _private_path(private_dir, PROXY_HOST_KEY),
        "sftp_command": SFTP_COMMAND,
        "ansible_ssh_args": ANSIBLE_SSH_ARGS,
        "homelab_user": lab.access.user,
        "boot_command": BOOT_COMMANDS[family],
        "unattended": "preseed.cfg" if family == "debian" else "autoinstall user-data",
    }


def _key_files(keys: BuildKeys, iso: bool) -> dict[str, str]:
    """The pinned host key for Ansible, and the private key an ISO build logs in with or a clone build's
    proxy presents."""
    files = {KNOWN_HOSTS: known_hosts_line(keys.host[1])}
    if iso and keys.login is not None:
        files[BUILD_KEY] = keys.login[0].decode()
    if not iso:
        files[PROXY_HOST_KEY] = keys.host[0].decode()
    return files


def _unattended_files(env: Any, lab: Lab, template: Template, keys: BuildKeys | None) -> dict[str, str]:
    """An ISO build's unattended install, served by Packer's HTTP server: a preseed or autoinstall user-data."""
    unattended = {
        "build_key": keys.login[1] if keys and keys.login else "",
        "host_key_script": host_key_script(keys.host) if keys else "",
        "homelab_user": lab.access.user,
        "release": _release(template.os),
    }
    if _family(template.os) == "debian":
        return {"http/preseed.cfg": env.get_template("debian/preseed.cfg.j2").render(unattended)}
    return {
        "http/user-data": env.get_template("ubuntu/user-data.j2").render(unattended),
        "http/meta-data": (data_dir("templates") / "http" / "ubuntu" / "meta-data").read_text(),
    }


def _private_path(private_dir: Path | None, relative: str) -> str:
    return str(private_dir / relative) if private_dir else relative


def is_private(relative: str) -> bool:
    """Whether a rendered file belongs to the private part: the keys, and the http folder (its unattended
    install files carry the build's host key)."""
    return relative in PRIVATE_FILES or relative.startswith(f"{HTTP_DIR}/")


def render_private_dir(lab: Lab, template: Template, directory: Path) -> Path:
    """Where `homelab template render` keeps the private part for a folder: under the lab's state folder,
    never in ``directory`` (which is likely inside the lab repo)."""
    tag = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]
    return state_dir(lab.name) / "render" / f"{template.name}-{tag}"


def _readme(lab: Lab, template: Template, source: str, iso: bool, private_dir: Path | None) -> str:
    login = (
        "export PROXMOX_TOKEN=<the token's secret>        # current Packer only; the username is the token id"
        if lab.proxmox.token_id
        else "export PKR_VAR_proxmox_password=<the password of " + (lab.proxmox.user or "the user") + ">"
    )
    lines = [
        f"# Packer configuration for template {template.name} (lab {lab.name})",
        "",
        f"Rendered by `homelab template render`: a {source} build with an Ansible provisioner",
        "(ansible/bake.yml) that bakes Docker engine, compose, qemu-guest-agent and the homelab user.",
        "",
        "Secrets are never written here. Give Packer the Proxmox login through its environment:",
        "",
        f"    {login}",
        "",
        "Debian's Packer 1.6 (builders built in; it rejects required-plugins.pkr.hcl, so name the file):",
        "",
        f"    packer build -var vm_id=<free vmid in {template.vmid_range[0]}-{template.vmid_range[1]}> {MAIN_FILE}",
        "",
        "Current Packer (1.7 and later):",
        "",
        "    packer init .",
        f"    packer build -var vm_id=<free vmid in {template.vmid_range[0]}-{template.vmid_range[1]}> .",
        "",
        "`homelab template build` does all of this itself, picks the vmid and version, then tags the",
        "template so that `homelab template list` and `homelab apply` find it.",
    ]
    lines += ["", "Ansible accepts only the host key in `" + KNOWN_HOSTS + "`, made for this render:"]
    if iso:
        lines += [
            "the unattended install gives the VM that host key, and the install logs in with the throwaway",
            f"key `{BUILD_KEY}` (mode 0600); the playbook removes both from the image before it becomes a template.",
        ]
    else:
        lines += [
            f"Ansible talks to Packer's local proxy, which presents `{PROXY_HOST_KEY}` (mode 0600) and forwards",
            "over Packer's own SSH connection to the VM.",
        ]
    if private_dir:
        what = f"`{BUILD_KEY}` and the `{HTTP_DIR}` folder" if iso else f"`{PROXY_HOST_KEY}`"
        lines += [
            "",
            f"The private part ({what}) is not in this folder but in {private_dir}",
            "(mode 0700, outside the lab repo); the configuration refers to it there. Delete it after the build.",
        ]
    return "\n".join(lines) + "\n"


def write_files(directory: Path, files: Mapping[str, str], private_dir: Path | None = None) -> list[Path]:
    """Write rendered files into a folder (atomically each); those holding a private key 0600 from birth.

    private_dir: put the private part (is_private) there instead, as render_files was told; the folder is
    made afresh, 0700.
    """
    if private_dir is not None:
        shutil.rmtree(private_dir, ignore_errors=True)
        private_dir.mkdir(parents=True, mode=0o700)
    written = []
    for relative, text in sorted(files.items()):
        private = is_private(relative)
        path = (private_dir if private and private_dir else directory) / relative
        if private:
            write_secret(path, text.encode("utf-8"))
        else:
            write_atomic(path, text)
        written.append(path)
    return written
