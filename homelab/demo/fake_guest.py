"""The guest inside a fake VM as its agent shows it: agent start, cloud-init, SSH host keys, across boots.

A real guest, as homelab meets it through Proxmox's guest agent:

* its agent answers some seconds after each start (``agent_delay``), and cloud-init finishes some seconds later
  still (``cloud_init_secs``; both PVE seconds, scaled by the fake's ``time_scale``);
* until cloud-init has finished, the files are what the disk kept from the previous boot: on the first boot no
  host key, no ``/var/lib/cloud/data/instance-id`` and no ``boot-finished``; after a reboot the old host key,
  the old instance id and the old instance's ``/var/lib/cloud/instance/boot-finished``;
* once it has finished, ``/var/lib/cloud/data/instance-id`` names the instance PVE seeded at this start,
  ``boot-finished`` exists for it and ``/run/cloud-init/result.json`` (fresh each boot) too; a NEW instance
  regenerated the SSH host keys (cloud-init's ssh module runs once per instance);
* PVE's NoCloud instance id is the sha1 of the user-data and network-config it generates from the VM's config
  (qemu-server's ``PVE/QemuServer/Cloudinit.pm``): name, searchdomain, ciuser, cipassword, sshkeys, ciupgrade,
  each ``netN``'s MAC with its ``ipconfigN``, nameserver (and the PVE host's resolv.conf when nameserver or
  searchdomain are unset: the fake's ``host_dns``). Changing any of them makes a new instance; cores or memory
  do not;
* reading a file that is not there fails as PVE reports qemu-ga's error (a 500 naming ``guest-file-open``), and
  any agent command of a VM whose config does not enable the agent fails with "No QEMU guest agent configured".

A VM mapped onto a real SSH test host (its address in the fake's ``host_keys``) gets that host's key whenever
cloud-init makes a new instance: a test that regenerates the test host's key and updates ``host_keys`` sees
the new key only from the next new instance on, as on a real guest.

:class:`GuestFiles` is a FakePve mixin (``cloudinit/dump`` and the file-read errors); :class:`GuestSim` drives
the timeline from the fake server's agent loop.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
INSTANCE_ID_FILE = "/var/lib/cloud/data/instance-id"
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
RESULT_JSON = "/run/cloud-init/result.json"
DRIVE = re.compile(r"^(ide|sata|scsi|virtio)\d+$")


# --- PVE's NoCloud seed ---------------------------------------------------------------------------------


def _props(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
    return out


def user_data(conf: Mapping[str, Any], vmid: int) -> str:
    """qemu-server's ``cloudinit_userdata`` (password not masked)."""
    hostname = str(conf.get("name") or f"VM{vmid}")
    search = conf.get("searchdomain")
    if "." in hostname:
        fqdn, hostname = hostname, hostname.split(".", 1)[0]
    else:
        fqdn = f"{hostname}.{search}" if search else hostname
    lines = ["#cloud-config", f"hostname: {hostname}", "manage_etc_hosts: true", f"fqdn: {fqdn}"]
    user = conf.get("ciuser")
    if user is not None:
        lines.append(f"user: {user}")
        if user == "root":
            lines.append("disable_root: False")
    if conf.get("cipassword") is not None:
        lines.append(f"password: {conf['cipassword']}")
    if conf.get("sshkeys") is not None:
        keys = [k.rstrip("\n") for k in unquote(str(conf["sshkeys"])).split("\n")]
        lines += ["ssh_authorized_keys:", *(f"  - {k}" for k in keys if k.strip())]
    lines += ["chpasswd:", "  expire: False"]
    if user != "root":
        lines += ["users:", "  - default"]
    if conf.get("ciupgrade") is None or str(conf["ciupgrade"]) not in ("0", "false"):
        lines.append("package_upgrade: true")
    return "\n".join(lines) + "\n"


def _mac(net: str) -> str:
    for part in str(net).split(","):
        value = part.partition("=")[2]
        if re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value):
            return value.lower()
    raise ValueError(f"network interface has no mac address: {net}")


def network_config(conf: Mapping[str, Any], host_dns: Mapping[str, Any] | None = None) -> str:
    """qemu-server's ``nocloud_network`` (version 1)."""
    out = "version: 1\nconfig:\n"
    i, j = "    ", "      "
    for key in sorted(k for k in conf if re.fullmatch(r"net\d+", k)):
        n = key[3:]
        if not conf.get(f"ipconfig{n}"):
            continue
        ip = _props(str(conf[f"ipconfig{n}"]))
        if not ip.get("ip") and not ip.get("ip6"):
            ip = {"ip": "dhcp", "ip6": "dhcp"}
        out += f"{i}- type: physical\n{i}  name: eth{n}\n{i}  mac_address: '{_mac(str(conf[key]))}'\n{i}  subnets:\n"
        if "ip" in ip:
            if ip["ip"] == "dhcp":
                out += f"{j}- type: dhcp4\n"
            else:
                addr, prefix = ip["ip"].split("/")
                mask = ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask
                out += f"{j}- type: static\n{j}  address: '{addr}'\n{j}  netmask: '{mask}'\n"
                out += f"{j}  gateway: '{ip['gw']}'\n" if ip.get("gw") else ""
        if "ip6" in ip:
            if ip["ip6"] in ("dhcp", "auto"):
                out += f"{j}- type: {'dhcp6' if ip['ip6'] == 'dhcp' else 'ipv6_slaac'}\n"
            else:
                out += f"{j}- type: static6\n{j}  address: '{ip['ip6']}'\n"
                out += f"{j}  gateway: '{ip['gw6']}'\n" if ip.get("gw6") else ""
    dns = host_dns or {}
    search = str(conf["searchdomain"]).split() if conf.get("searchdomain") is not None else list(dns.get("search", []))
    servers = str(conf["nameserver"]).split() if conf.get("nameserver") is not None else list(dns.get("servers", []))
    out += f"{i}- type: nameserver\n"
    if servers:
        out += f"{i}  address:\n" + "".join(f"{i}  - '{s}'\n" for s in servers)
    if search:
        out += f"{i}  search:\n" + "".join(f"{i}  - '{s}'\n" for s in search)
    return out


def instance_id(conf: Mapping[str, Any], vmid: int, host_dns: Mapping[str, Any] | None = None) -> str:
    """The NoCloud instance id PVE seeds for this config."""
    seed = user_data(conf, vmid) + network_config(conf, host_dns)
    return hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()


def has_cloudinit_drive(conf: Mapping[str, Any]) -> bool:
    """Whether the VM has a cloud-init drive: PVE's ``vm-<id>-cloudinit``, or (as fakepve allocates it) a cdrom
    on a storage volume that is not an ISO image."""
    for key, value in conf.items():
        volume, *props = str(value).split(",")
        if DRIVE.match(key) and (
            "cloudinit" in volume or ("media=cdrom" in props and ":" in volume and ":iso/" not in volume)
        ):
            return True
    return False


def agent_enabled(conf: Mapping[str, Any]) -> bool:
    """Whether the VM's ``agent`` option enables the guest agent (``1`` or ``enabled=1,...``)."""
    value = str(conf.get("agent", "0"))
    return value.split(",")[0].split("=")[-1] == "1" or "enabled=1" in value


def fake_host_key(seed: str) -> str:
    """A well-formed ed25519 public key line, stable per seed, for a guest that maps to no real host."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + hashlib.sha256(seed.encode()).digest()
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


# --- the FakePve side ------------------------------------------------------------------------------------


class GuestFiles:
    """FakePve mixin: ``GET .../cloudinit/dump`` as PVE answers it, and file-read of a missing file failing."""

    cloudinit_host_dns: Mapping[str, Any] | None = None  # the PVE host's resolv.conf: {"search", "servers"}

    def _routes_guest(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/nodes/{node}/qemu/{vmid}/cloudinit/dump", self._guest_cloudinit_dump)]

    async def _guest_cloudinit_dump(self, v: dict[str, Any], user: str) -> str:
        vm = self.find(v["node"], int(v["vmid"]))  # type: ignore[attr-defined]
        kind = v["type"]
        if kind == "user":
            return user_data(vm.config, vm.vmid)
        if kind == "network":
            return network_config(vm.config, self.cloudinit_host_dns)
        return f"instance-id: {instance_id(vm.config, vm.vmid, self.cloudinit_host_dns)}\n"

    async def _agent_call(self, match: Any, values: dict[str, Any]) -> Any:
        from fakepve import PveError
        from fakepve import agent as guest_agent

        vm = self.find(values["node"], values["vmid"])  # type: ignore[attr-defined]
        command = match.template.rsplit("/", 1)[1]
        if not agent_enabled(vm.config):  # PVE's assert_agent_available, before it asks the guest
            raise PveError(500, "No QEMU guest agent configured")
        if command == "file-read" and vm.status == "running" and vm.agent is not None and not vm.agent_hangs:
            path = str(values["file"])
            if path not in (vm.agent.get("files") or {}):
                guest_agent.record(vm, command, values)
                raise PveError(
                    500,
                    f"VM {vm.vmid} qga command 'guest-file-open' failed - "
                    f"failed to open file '{path}' (mode: 'r'): No such file or directory",
                )
        return await super()._agent_call(match, values)  # type: ignore[misc]


# --- the timeline ----------------------------------------------------------------------------------------


@dataclass
class GuestDisk:
    """What a VM's disk keeps across boots."""

    instance: str | None = None
    host_key: str | None = None
    boot_finished: str | None = None


@dataclass
class Boot:
    """One start of a VM."""

    started_at: float
    seeded: str | None  # the instance PVE seeded at this start (None: no cloud-init drive)
    finished: bool = False
    # len(vm.agent_requests) when cloud-init finished: the requests before it saw the files of the last boot.
    finished_after: int | None = None


@dataclass
class GuestSim:
    """The guests of the fake's VMs; ``host_keys`` (address -> key line) is the server's, shared."""

    host_keys: dict[str, str]
    host_dns: Mapping[str, Any] | None = None
    disks: dict[int, GuestDisk] = field(default_factory=dict)
    boots: dict[int, Boot] = field(default_factory=dict)

    def tick(
        self, vm: Any, now: float, agent_after: float, finished_after: float, interfaces: Callable[[], Any]
    ) -> None:
        """Advance a running VM whose agent is enabled: a new boot, its agent coming up, cloud-init finishing
        (``agent_after``/``finished_after``: real seconds after the start / after the agent came up)."""
        boot = self.boots.get(vm.vmid)
        started = vm.started_at or now
        if boot is None or boot.started_at != started:
            seeded = instance_id(vm.config, vm.vmid, self.host_dns) if has_cloudinit_drive(vm.config) else None
            boot = self.boots[vm.vmid] = Boot(started, seeded)
            vm.agent = None  # the last boot's agent is gone with it
        if vm.agent is None and now - started >= agent_after:
            vm.agent = {"interfaces": interfaces(), "files": self._files(vm, boot)}
        if vm.agent is not None and not boot.finished and now - started >= agent_after + finished_after:
            self._finish(vm, boot, now - started)

    def settled(self, vm: Any) -> bool:
        """Nothing is left to advance for this VM until it boots again: its agent is up and cloud-init finished
        (``tick`` would change nothing)."""
        boot = self.boots.get(vm.vmid)
        return (
            boot is not None and boot.finished and vm.agent is not None and bool(vm.started_at)
            and boot.started_at == vm.started_at
        )  # fmt: skip

    def _finish(self, vm: Any, boot: Boot, uptime: float) -> None:
        disk = self.disks.setdefault(vm.vmid, GuestDisk())
        if (boot.seeded is not None and boot.seeded != disk.instance) or disk.host_key is None:
            address = _address(vm.agent.get("interfaces") or [])
            disk.host_key = self.host_keys.get(address or "") or fake_host_key(f"{vm.vmid}/{boot.seeded}")
            disk.instance = boot.seeded
        stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        disk.boot_finished = f"{uptime + 10:.2f} - {stamp} - v. 24.1.3\n"
        boot.finished = True
        boot.finished_after = len(vm.agent_requests)
        vm.agent["files"] = self._files(vm, boot)

    def _files(self, vm: Any, boot: Boot) -> dict[str, str]:
        disk = self.disks.get(vm.vmid) or GuestDisk()
        files: dict[str, str] = {}
        if disk.host_key:
            files[HOST_KEY_FILE] = f"{disk.host_key} root@{vm.name}\n"
        if disk.instance:
            files[INSTANCE_ID_FILE] = disk.instance + "\n"
        if disk.boot_finished:
            files[BOOT_FINISHED] = disk.boot_finished
        if boot.finished:
            files[RESULT_JSON] = '{"v1": {"datasource": "DataSourceNoCloud", "errors": []}}\n'
        return files

    def describe(self, vm: Any) -> dict[str, Any]:
        """For the control socket: the guest's disk state, this boot and the agent requests it saw."""
        disk = self.disks.get(vm.vmid) or GuestDisk()
        boot = self.boots.get(vm.vmid)
        return {
            "instance": disk.instance,
            "host_key": disk.host_key,
            "seeded": boot.seeded if boot else None,
            "finished": bool(boot and boot.finished),
            "finished_after": boot.finished_after if boot else None,
            "agent_requests": [[c, dict(p)] for c, p in vm.agent_requests],
        }


def _address(interfaces: list[dict[str, Any]]) -> str | None:
    for iface in interfaces:
        if iface.get("name") == "lo":
            continue
        for entry in iface.get("ip-addresses") or []:
            if entry.get("ip-address-type") == "ipv4":
                return str(entry["ip-address"])
    return None
