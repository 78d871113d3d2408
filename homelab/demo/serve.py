"""Serve a fake Proxmox VE for the demo and the tests: ``python -m homelab.demo.serve CONFIG.json``.

Runs fakepve (the ``demo`` extra; AGPL, used only as a separate process) with:
- the guests, storages and nodes named in the JSON config,
- API tokens registered in-process (fakepve only knows tokens set that way),
- a guest agent, only in VMs whose image has one (fake_agent.py: stock cloud images do not), that comes up a
  little after a VM starts and reports the address from its cloud-init ipconfig0 (or a DHCP-style address),
  and a guest whose cloud-init finishes later still and regenerates the host key for a new instance
  (:mod:`fake_guest`),
- a control socket (JSON lines over a Unix socket) for fault injection and inspection.

It prints one line ``READY <url>`` when it accepts connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import sys
import time
from functools import partial
from typing import Any

from homelab.demo import fake_access
from homelab.demo.fake_guest import GuestFiles, GuestSim
from homelab.lab.types import drive_size, format_size


def _agent_enabled(config: dict[str, Any]) -> bool:
    value = str(config.get("agent", "0"))
    return value.startswith("1") or "enabled=1" in value


def _interfaces(vm: Any, dhcp_net: ipaddress.IPv4Network, addr_map: dict[str, str]) -> list[dict[str, Any]]:
    ipconfig = str(vm.config.get("ipconfig0", ""))
    match = re.search(r"ip=([0-9.]+)/(\d+)", ipconfig)
    if match:
        address, prefix = match.group(1), int(match.group(2))
    else:
        hosts = list(dhcp_net.hosts())
        address, prefix = str(hosts[(vm.vmid * 7) % len(hosts)]), dhcp_net.prefixlen
    address = addr_map.get(address, address)
    return [
        {
            "name": "lo",
            "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}],
        },
        {
            "name": "eth0",
            "hardware-address": f"bc:24:11:{vm.vmid >> 16 & 255:02x}:{vm.vmid >> 8 & 255:02x}:{vm.vmid & 255:02x}",
            "ip-addresses": [
                {"ip-address": address, "ip-address-type": "ipv4", "prefix": prefix},
                {"ip-address": "fe80::be24:11ff:fe00:1", "ip-address-type": "ipv6", "prefix": 64},
            ],
        },
    ]


def fake_class() -> type:
    """FakePve plus disk resize: fakepve 0.5.0 answers it from the schema without storing the new size."""
    from fakepve import FakePve, PveError

    from homelab.demo.fake_agent import GuestAgentImages
    from homelab.demo.fake_backup import Backups
    from homelab.demo.fake_cluster import ClusterMixin
    from homelab.demo.fake_concurrency import ConcurrencySeen
    from homelab.demo.fake_disks import DiskReassign
    from homelab.demo.fake_load import LoadMixin
    from homelab.demo.fake_mapping import PciMappings
    from homelab.demo.fake_monitor import IpMonitor

    class HomelabFakePve(
        PciMappings,
        ConcurrencySeen,
        IpMonitor,
        LoadMixin,
        GuestFiles,
        fake_access.AccessMixin,
        ClusterMixin,
        GuestAgentImages,
        DiskReassign,
        Backups,
        FakePve,
    ):
        def _routes_homelab(self) -> list[tuple[str, str, Any]]:
            return [("PUT", "/nodes/{node}/qemu/{vmid}/resize", self._homelab_resize)]

        async def _homelab_resize(self, v: dict[str, Any], user: str) -> Any:
            vm = self.find(v["node"], int(v["vmid"]))
            disk = v["disk"]
            drive = str(vm.config.get(disk, ""))
            old = drive_size(drive)
            if old is None:
                raise PveError(500, f"disk '{disk}' does not exist")
            wanted = str(v["size"])
            # PVE takes a size ("32G") or a growth ("+2G"): read either as a drive's size= field
            size = drive_size(f"size={wanted.removeprefix('+')}")
            if size is None:
                raise PveError(400, f"size: invalid format {wanted!r}")
            new = old + size if wanted.startswith("+") else size
            if new < old:
                raise PveError(500, "shrinking disks is not supported")
            self._check_lock(vm)

            async def body() -> None:
                vm.config[disk] = re.sub(r"size=[^,]+", f"size={format_size(new)}", drive)

            return await self.task(v["node"], "resize", vm.vmid, user, body, vm=vm)

    return HomelabFakePve


class Server:
    """A FakePve plus the agent simulation and the control socket."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.pve = fake_class()(
            user=config.get("user", "root@pam"),
            password=config.get("password", "secret"),
            host=config["host"],
            port=config.get("port", 8006),
        )
        self.pve.time_scale = float(config.get("time_scale", 0))
        if config.get("latency"):
            self.pve.slow_network(float(config["latency"]))
        # PVE seconds between a VM's start and its agent answering.
        self.agent_delay = float(config.get("agent_delay", 5))
        # PVE seconds from the agent's start until cloud-init has finished (host key, boot-finished).
        self.cloud_init_secs = float(config.get("cloud_init_secs", 3))
        self.dhcp_net = ipaddress.IPv4Network(config.get("dhcp_subnet", "10.99.0.0/24"))
        # Address as configured -> address the agent reports (tests map lab IPs onto test hosts).
        self.addr_map: dict[str, str] = dict(config.get("address_map", {}))
        self.no_agent: set[int] = set()
        self.pve.setup_guest_agents(config, self.addr_map)  # stock images have no agent (fake_agent.py)
        # Reported address -> "ssh-ed25519 AAAA...": the host key the agent shows for that VM (tests map
        # VMs onto real SSH test hosts and their keys).
        self.host_keys: dict[str, str] = dict(config.get("host_keys", {}))
        # PVE seconds a new (cloned) VM takes to start, like a real boot; taken when its start begins.
        self.start_secs = self.pve.new_vm_start_secs = float(config.get("start_secs", 0))
        self.pve.clone_secs = float(config.get("clone_secs", 0))  # disk work of a clone (fake_load.py)
        self.pve.clone_lock_secs, self.pve.copy_secs_per_gib = (
            config.get("clone_lock_secs", 0),
            config.get("copy_secs_per_gib", 0),
        )
        self.pve.load_capacity = int(config.get("load_capacity", 4))
        self.pve.guest_tick = self._tick
        self.pve.cloudinit_host_dns = config.get("host_dns")
        self.guest = GuestSim(self.host_keys, config.get("host_dns"))
        for token, secret in config.get("tokens", {}).items():
            self.pve.apitokens[token] = secret
        fake_access.configure(self.pve, config)  # version, ACLs
        for name, store in config.get("storages", {}).items():
            store.setdefault("files", set())
            store["files"] = set(store["files"])
            self.pve.storages[name] = store
        for node in config.get("nodes", []):
            self.pve.add_node(node)
        from homelab.demo.fake_cluster import setup_cluster  # fakepve (the demo extra) loads only here

        setup_cluster(self.pve, config)
        for guest in config.get("guests", []):
            vm = self.add_guest(guest)
            for key in ("start_secs", "shutdown_secs", "stop_secs"):
                if key in guest:
                    setattr(vm, key, guest[key])

    def add_guest(self, guest: dict[str, Any]) -> Any:
        """A VM in the fake, from a test's or the demo's description of it (``guest_agent``: its disk has one)."""
        if guest.get("guest_agent"):
            self.pve.agent_disks.add(int(guest["vmid"]))
        return self.pve.add_vm(
            guest["vmid"],
            guest["name"],
            node=guest.get("node", "pve1"),
            status=guest.get("status", "stopped"),
            config=guest.get("config", {}),
            template=guest.get("template", False),
        )

    async def run(self) -> None:
        from fakepve.certs import make_cert

        certfile, keyfile = self.config.get("cert"), self.config.get("key")
        if not certfile:
            directory = self.config["state_dir"]
            certfile, keyfile, _ = make_cert(directory, hosts=(self.config["host"],))
        await self.pve.start(certfile, keyfile)
        control = self.config.get("control")
        if control:
            if os.path.exists(control):
                os.unlink(control)
            await asyncio.start_unix_server(self._client, path=control)
        asyncio.get_running_loop().create_task(self._agents())
        print(f"READY {self.pve.url}", flush=True)
        await asyncio.Event().wait()

    async def _agents(self) -> None:
        """Advance every VM's guest (agent up after agent_delay, down when the VM stops); an agent request
        advances its VM itself (fake_load.py), so this loop's period never delays what a client sees."""
        while True:
            for vm in list(self.pve.vms):
                self._tick(vm)
            await asyncio.sleep(0.02)

    def _tick(self, vm: Any) -> None:
        self.pve.start_default(vm)
        if vm.template or vm.vmid in self.no_agent:
            return
        if vm.status == "running" and self.guest.settled(vm):
            return  # the common case, checked first: each tick visits every VM, and a lab may have hundreds
        if vm.status == "running" and _agent_enabled(vm.config) and self.pve.has_guest_agent(vm):
            delay = self.agent_delay * self.pve.time_scale
            finish = self.cloud_init_secs * self.pve.time_scale
            self.guest.tick(vm, time.time(), delay, finish, partial(_interfaces, vm, self.dhcp_net, self.addr_map))
        elif vm.status != "running" and vm.agent is not None:
            vm.agent = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            try:
                answer = {"ok": True, "result": await self._handle(json.loads(line))}
            except Exception as exc:  # reported to the caller, the server goes on
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write((json.dumps(answer, default=_jsonable) + "\n").encode())
            await writer.drain()
        writer.close()

    async def _handle(self, msg: dict[str, Any]) -> Any:
        op = msg.pop("op")
        pve = self.pve
        if op == "ping":
            return "pong"
        if op == "fail":
            pve.fail(**msg)
            return None
        if op == "clear_failures":
            pve.failures.clear()
            return None
        if op == "flaky_network":
            pve.flaky_network(**msg)
            return None
        if op == "slow_network":
            pve.slow_network(**msg)
            return None
        if op == "hold_config_lock":
            await pve.hold_config_lock(msg["vmid"], msg["secs"])
            return None
        if op == "set":
            for key, value in msg.items():
                if key in ("agent_delay", "cloud_init_secs"):
                    setattr(self, key, value)
                elif key == "address_map":
                    self.addr_map.update(value)
                elif key == "host_keys":
                    self.host_keys.update(value)
                else:
                    setattr(pve, key, value)
            return None
        if op == "vm_set":
            vm = pve.vm(msg.pop("vmid"))
            if msg.pop("no_agent", False):
                self.no_agent.add(vm.vmid)
            for key, value in msg.items():
                setattr(vm, key, value)
            return None
        if op == "guest":
            return self.guest.describe(pve.vm(msg["vmid"]))
        if op == "load":
            return self.pve.load_op(msg)
        if op in ("agent_disks", "build_hosts", "demo_bake"):
            return self.pve.guest_agent_op(op, msg)
        if op.startswith("monitor_"):
            return self.pve.monitor_op(op, msg)
        if op == "add_vm":
            self.add_guest(msg)
            return None
        if op == "requests":
            seen = [[m, p] for m, p, _ in pve.requests]
            if msg.get("clear"):
                pve.requests.clear()
            return seen
        if op == "vms":
            return [
                {
                    "vmid": vm.vmid,
                    "name": vm.name,
                    "node": vm.node,
                    "status": vm.status,
                    "template": bool(vm.template),
                    "config": vm.config,
                    "pending": vm.pending,
                    "lock": vm.lock,
                    "agent": vm.agent is not None,
                }
                for vm in pve.vms
            ]
        if op == "storages":
            return pve.storages
        if op == "grant":
            pve.grant(msg["who"], msg["path"], *msg["privileges"])
            return None
        if op == "backup_jobs":
            return pve.backup_jobs
        extension = getattr(pve, f"control_{op}", None)  # a fake_<topic> mixin's own control op
        if extension is not None:
            return extension(**msg)
        raise ValueError(f"unknown op {op!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    return repr(value)


def main() -> None:
    """Read the JSON config named on the command line and serve until killed."""
    with open(sys.argv[1], encoding="utf-8") as fh:
        config = json.load(fh)
    if config.get("ignore_sigint"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(Server(config).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
