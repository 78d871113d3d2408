"""The fake's guest agent as a stock cloud image has it: none, until a bake installs qemu-guest-agent.

Debian's and Ubuntu's cloud images ship without qemu-guest-agent. In this fake a VM's agent answers only if
its disk has the agent: a guest listed with ``guest_agent: true`` (an honest fixture, "a template that already
has the agent"), a VM whose bake installed it, or a clone of either. Everything else answers as PVE does when
nothing runs in the guest: 500 "QEMU guest agent is not running".

A bake is observed where a real system would observe it: on the build host. The fake's config names build
hosts (``build_hosts``: the address a VM reports, after ``address_map``, -> that host's folders): SSH test
hosts whose ``/etc`` and ``/var/lib`` are overlays with their upper layers in those folders. When a VM that
sits at a build host's address is started, the fake plays cloud-init's part for its user: it authorises the
VM's ``sshkeys`` in the host's authorized_keys file. When the VM stops, the fake looks at the host's files: the
package's dpkg file list and the enabled unit's link. If both are there, the VM's disk has the agent.

Only in the demo (``demo_bake_host``), where no SSH host exists, the fake itself stands in for the build host
(:mod:`homelab.demo.bakehost` sends it the bake's scripts over the control socket); it records an agent
install only for a script that runs the install of qemu-guest-agent on a running VM at that address.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

AGENT_PACKAGE = "qemu-guest-agent"
# The files a real install and `systemctl enable` leave, relative to the host's /var/lib and /etc.
PACKAGE_FILE = f"dpkg/info/{AGENT_PACKAGE}.list"
ENABLED_LINK = f"systemd/system/multi-user.target.wants/{AGENT_PACKAGE}.service"


def _address(config: dict[str, Any]) -> str | None:
    match = re.search(r"ip=([0-9.]+)/", str(config.get("ipconfig0", "")))
    return match.group(1) if match else None


class GuestAgentImages:
    """Mixin for the fake PVE class: which disks have qemu-guest-agent, and the bakes that install it."""

    agent_disks: set[int]
    build_hosts: dict[str, dict[str, str]]
    address_map: dict[str, str]
    demo_bake_host: bool
    demo_baked: set[int]

    def setup_guest_agents(self, config: dict[str, Any], address_map: dict[str, str]) -> None:
        """Read the fake's config: guests that have the agent, build hosts, demo mode."""
        self.agent_disks = {int(g["vmid"]) for g in config.get("guests", []) if g.get("guest_agent")}
        self.build_hosts = dict(config.get("build_hosts", {}))
        self.address_map = address_map
        self.demo_bake_host = bool(config.get("demo_bake_host", False))
        self.demo_baked = set()

    def has_guest_agent(self, vm: Any) -> bool:
        """True if the VM's disk has qemu-guest-agent."""
        return int(vm.vmid) in self.agent_disks

    def guest_agent_op(self, op: str, msg: dict[str, Any]) -> Any:
        """Control-socket operations: inspect or seed which disks have the agent, add build hosts, demo bakes."""
        if op == "agent_disks":
            for vmid in msg.get("add", []):
                self.agent_disks.add(int(vmid))
            return sorted(self.agent_disks)
        if op == "build_hosts":
            self.build_hosts.update(msg.get("hosts", {}))
            return None
        if op == "demo_bake":
            return self._demo_bake(str(msg["address"]), str(msg["script"]))
        raise ValueError(f"unknown op {op!r}")

    # --- where a disk's agent comes from and goes --------------------------------------------------

    async def _qm_create(self, v: dict[str, Any], user: str) -> Any:
        self.agent_disks.discard(int(v["vmid"]))  # a new disk, imported from a stock image: no agent
        return await super()._qm_create(v, user)  # type: ignore[misc]

    async def _qm_clone(self, v: dict[str, Any], user: str) -> Any:
        source, new = int(v["vmid"]), int(v["newid"])
        answer = await super()._qm_clone(v, user)  # type: ignore[misc]
        if source in self.agent_disks:
            self.agent_disks.add(new)  # a clone's disk is a copy of (or backed by) its source's
        else:
            self.agent_disks.discard(new)
        return answer

    async def _qm_destroy(self, v: dict[str, Any], user: str) -> Any:
        answer = await super()._qm_destroy(v, user)  # type: ignore[misc]
        self.agent_disks.discard(int(v["vmid"]))
        return answer

    # --- the bake, seen on the build host ----------------------------------------------------------

    def _build_host(self, vm: Any) -> dict[str, str] | None:
        address = _address(vm.config)
        if address is None:
            return None
        return self.build_hosts.get(self.address_map.get(address, address))

    async def _do_start(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        host = self._build_host(vm)
        if host and host.get("authorized_keys") and vm.config.get("sshkeys"):
            # cloud-init's part on first boot: the VM's sshkeys become its user's authorized keys
            keys = urllib.parse.unquote(str(vm.config["sshkeys"])).strip()
            with open(host["authorized_keys"], "a", encoding="utf-8") as out:
                out.write(keys + "\n")
        return await super()._do_start(vm, user, p)  # type: ignore[misc]

    async def _do_stop(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        self._observe_bake(vm)
        return await super()._do_stop(vm, user, p)  # type: ignore[misc]

    async def _do_shutdown(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        self._observe_bake(vm)
        return await super()._do_shutdown(vm, user, p)  # type: ignore[misc]

    def _observe_bake(self, vm: Any) -> None:
        """A VM going down at a build host's address: its disk has the agent if the host's files say so."""
        if int(vm.vmid) in self.demo_baked:
            self.agent_disks.add(int(vm.vmid))
            return
        host = self._build_host(vm)
        if host is None:
            return
        installed = os.path.isfile(os.path.join(host["var_lib"], PACKAGE_FILE))
        enabled = os.path.lexists(os.path.join(host["etc"], ENABLED_LINK))
        if installed and enabled:
            self.agent_disks.add(int(vm.vmid))

    # --- the demo only: the fake stands in for the build host --------------------------------------

    def _demo_bake(self, address: str, script: str) -> dict[str, Any]:
        if not self.demo_bake_host:
            raise ValueError("demo_bake: this fake is not the demo's (no demo_bake_host)")
        vm = next(
            (v for v in self.vms if v.status == "running" and _address(v.config) == address),  # type: ignore[attr-defined]
            None,
        )
        if vm is None:
            return {"returncode": 255, "stdout": "", "stderr": f"ssh: connect to host {address} port 22: No route"}
        if re.search(rf"apt-get .*install .*{AGENT_PACKAGE}", script):
            self.demo_baked.add(int(vm.vmid))
        return {"returncode": 0, "stdout": "", "stderr": ""}
