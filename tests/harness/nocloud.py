"""The NoCloud seed a Proxmox VE host writes for a VM's cloud-init drive, as qemu-server writes it.

Follows qemu-server's ``PVE/QemuServer/Cloudinit.pm`` (format ``nocloud``, PVE's default for Linux guests),
without custom snippets (``cicustom``):

* ``user-data``: ``#cloud-config`` with ``hostname``, ``manage_etc_hosts: true``, ``fqdn`` (name + searchdomain),
  ``user`` (ciuser), ``password`` (cipassword), ``ssh_authorized_keys`` (the URL-decoded ``sshkeys``, one per
  line), ``chpasswd: {expire: False}``, ``users: [default]`` unless the user is root, and
  ``package_upgrade: true`` while ``ciupgrade`` is unset or 1;
* ``network-config``: version 1, one ``physical`` entry per ``netN`` that has an ``ipconfigN`` (matched by the
  NIC's MAC, named ``ethN``; static, dhcp4, dhcp6 or SLAAC), then a ``nameserver`` entry from
  ``nameserver``/``searchdomain`` or, when unset, the PVE host's own resolv.conf;
* ``meta-data``: ``instance-id: <sha1 hex of user-data + network-config>``, so any change to those settings
  is a new instance for cloud-init (which then regenerates the SSH host keys);
* ``vendor-data``: empty.

The files go onto an ISO 9660 image labelled ``cidata`` (``genisoimage -iso-level 3 -J -R -V cidata``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

__all__ = ["HostDns", "NoCloudSeed", "nocloud_seed", "write_seed_iso"]


@dataclass(frozen=True)
class HostDns:
    """The PVE host's resolv.conf, used for VMs without ``nameserver``/``searchdomain``."""

    search: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoCloudSeed:
    """The four files of a NoCloud seed and the instance id they make."""

    user_data: str
    network_config: str
    meta_data: str
    vendor_data: str = ""
    instance_id: str = field(init=False)

    def __post_init__(self) -> None:
        match = re.match(r"instance-id: (\S+)", self.meta_data)
        object.__setattr__(self, "instance_id", match.group(1) if match else "")

    def files(self) -> dict[str, str]:
        """File name -> content, as they go on the ISO."""
        return {
            "user-data": self.user_data,
            "network-config": self.network_config,
            "meta-data": self.meta_data,
            "vendor-data": self.vendor_data,
        }


def _props(text: str, first_key: str | None = None) -> dict[str, str]:
    """A PVE property string (``a=1,b=2``; a bare first item becomes ``first_key``)."""
    out: dict[str, str] = {}
    for i, part in enumerate(str(text).split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep and i == 0 and first_key:
            out[first_key] = key
        else:
            out[key] = value
    return out


def _hostname_fqdn(conf: Mapping[str, Any], vmid: int) -> tuple[str, str]:
    hostname = str(conf.get("name") or f"VM{vmid}")
    if "." in hostname:
        return hostname.split(".", 1)[0], hostname
    search = conf.get("searchdomain")
    return hostname, f"{hostname}.{search}" if search else hostname


def user_data(conf: Mapping[str, Any], vmid: int) -> str:
    """PVE's ``cloudinit_userdata``."""
    hostname, fqdn = _hostname_fqdn(conf, vmid)
    lines = ["#cloud-config", f"hostname: {hostname}", "manage_etc_hosts: true", f"fqdn: {fqdn}"]
    username = conf.get("ciuser")
    if username is not None:
        lines.append(f"user: {username}")
        if username == "root":
            lines.append("disable_root: False")
    if conf.get("cipassword") is not None:
        lines.append(f"password: {conf['cipassword']}")
    if conf.get("sshkeys") is not None:
        keys = [k.rstrip("\n") for k in unquote(str(conf["sshkeys"])).split("\n")]
        lines.append("ssh_authorized_keys:")
        lines += [f"  - {k}" for k in keys if k.strip()]
    lines += ["chpasswd:", "  expire: False"]
    if username is None or username != "root":
        lines += ["users:", "  - default"]
    if conf.get("ciupgrade") is None or str(conf.get("ciupgrade")) not in ("0", "false"):
        lines.append("package_upgrade: true")
    return "\n".join(lines) + "\n"


def _netmask(prefix: str) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)


def _mac(net: str) -> str:
    props = _props(net, "model")
    if "macaddr" in props:
        return props["macaddr"].lower()
    for value in props.values():
        if re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value or ""):
            return value.lower()  # model=MAC, as PVE writes it: virtio=BC:24:11:...
    raise ValueError(f"network interface has no mac address: {net}")


def network_config(conf: Mapping[str, Any], host_dns: HostDns = HostDns()) -> str:
    """PVE's ``nocloud_network``."""
    out = "version: 1\nconfig:\n"
    ids = sorted(k for k in conf if re.fullmatch(r"net\d+", k))  # PVE sorts the keys as strings
    for key in ids:
        n = key[3:]
        ipconfig = conf.get(f"ipconfig{n}")
        if not ipconfig:
            continue
        ip = _props(str(ipconfig))
        if not ip.get("ip") and not ip.get("ip6"):
            ip = {"ip": "dhcp", "ip6": "dhcp"}
        i = "    "
        out += f"{i}- type: physical\n{i}  name: eth{n}\n{i}  mac_address: '{_mac(str(conf[key]))}'\n{i}  subnets:\n"
        i += "  "
        if "ip" in ip:
            if ip["ip"] == "dhcp":
                out += f"{i}- type: dhcp4\n"
            else:
                addr, prefix = ip["ip"].split("/")
                out += f"{i}- type: static\n{i}  address: '{addr}'\n{i}  netmask: '{_netmask(prefix)}'\n"
                if ip.get("gw"):
                    out += f"{i}  gateway: '{ip['gw']}'\n"
        if "ip6" in ip:
            if ip["ip6"] == "dhcp":
                out += f"{i}- type: dhcp6\n"
            elif ip["ip6"] == "auto":
                out += f"{i}- type: ipv6_slaac\n"
            else:
                out += f"{i}- type: static6\n{i}  address: '{ip['ip6']}'\n"
                if ip.get("gw6"):
                    out += f"{i}  gateway: '{ip['gw6']}'\n"
    search = str(conf["searchdomain"]).split() if conf.get("searchdomain") is not None else list(host_dns.search)
    servers = str(conf["nameserver"]).split() if conf.get("nameserver") is not None else list(host_dns.servers)
    # PVE tests two array references here, which are always true: the entry is always written.
    i = "    "
    out += f"{i}- type: nameserver\n"
    if servers:
        out += f"{i}  address:\n" + "".join(f"{i}  - '{s}'\n" for s in servers)
    if search:
        out += f"{i}  search:\n" + "".join(f"{i}  - '{s}'\n" for s in search)
    return out


def nocloud_seed(conf: Mapping[str, Any], vmid: int, host_dns: HostDns = HostDns()) -> NoCloudSeed:
    """The seed PVE generates at VM start for this config."""
    user = user_data(conf, vmid)
    network = network_config(conf, host_dns)
    instance = hashlib.sha1((user + network).encode()).hexdigest()
    return NoCloudSeed(user, network, f"instance-id: {instance}\n")


def write_seed_iso(seed: NoCloudSeed, path: Path, extra: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the seed as a ``cidata`` ISO at ``path`` (as PVE's genisoimage call does); returns ``path``."""
    with tempfile.TemporaryDirectory(prefix="hl-seed-") as tmp:
        for name, content in [*seed.files().items(), *extra]:
            Path(tmp, name).write_text(content)
        subprocess.run(
            ["genisoimage", "-quiet", "-iso-level", "3", "-J", "-R", "-V", "cidata", "-o", str(path), tmp],
            check=True,
            capture_output=True,
        )
    return path
