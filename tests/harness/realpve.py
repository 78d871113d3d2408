"""A fake Proxmox whose VMs are real QEMU guests: ``python -m tests.harness.realpve CONFIG.json``.

It is homelab's fake (:mod:`homelab.demo.serve`: fakepve run as a separate process, its API tokens,
storages, control socket) with the VM lifecycle and the guest agent made real:

Disks
    A cloud image is "downloaded" with ``POST .../storage/<id>/download-url``: a URL listed in the config's
    ``images`` (``url -> {"disk", "kernel", "initrd", "sha512"}``, made from a cached
    :class:`~tests.harness.guest_image.GuestImage` by :func:`image_entry`) resolves to that image's qcow2
    file, and the download is verified against the checksum the client sends, as PVE does ("checksum
    mismatch" fails the task). Any other URL fails like a download without internet. The file becomes
    ``<storage>:import/<filename>``.

    A disk created with ``import-from=<that volume>`` (``POST /nodes/<node>/qemu``) and a disk of a clone
    (linked or full) become real when their VM first starts: a qcow2 overlay in the fake's state folder,
    backed by the imported image or by the source VM's own disk (which is made real first if needed), and
    as large as the drive's ``size=``. So a clone of a template costs one small file, and converting a VM
    to a template (its volumes renamed to ``base-...``) keeps its file. ``resize`` grows a real disk
    (``qemu-img resize`` while stopped, ``block_resize`` while running); destroying a VM removes its files
    unless another disk is backed by them. The guest boots the image's kernel and initrd directly: the
    image has no boot loader (:mod:`tests.harness.guest_image`).

    A disk PVE allocates new (``scsi1: local-lvm:1,serial=homelab-data``, homelab's data disk) becomes a blank
    qcow2 file of its size when its VM first starts, attached like PVE attaches it (``scsiN`` at LUN N of the
    virtio-scsi controller, with its ``serial``, so the guest sees
    ``/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_homelab-data``). A reassignment (``move_disk`` with
    ``target-vmid``, :mod:`homelab.demo.fake_disks`) gives the same file to the other VM: nothing is copied.
    Disks are not hot-plugged into a running guest (homelab attaches and moves them while the VM is stopped).

Power
    ``status/start`` generates the NoCloud seed from the VM's config as PVE does at every start
    (:mod:`tests.harness.nocloud`), then starts QEMU (:class:`~tests.harness.realvm.Guest`) with the boot
    disk (from ``boot: order=`` or the first disk; ``scsiN`` on virtio-scsi, ``virtioN`` on virtio-blk), the
    seed as ide2, ``net0``'s MAC on a tap of the test's lab network, and the agent's virtio-serial port when
    ``agent`` is enabled. The task fails if QEMU does. ``stop`` kills QEMU; ``shutdown`` asks the guest
    agent (when enabled and answering) or presses the ACPI button, and waits up to ``timeout`` real seconds
    (``forceStop`` kills it then); ``reboot`` is a shutdown and a start (pending changes and a new seed
    apply, as on PVE); ``reset`` resets the machine. A guest that powers itself off shows as stopped.

Guest agent
    ``/agent/<command>`` is answered by the guest's real qemu-guest-agent: "No QEMU guest agent configured"
    without ``agent`` in the config, "VM <id> is not running" when stopped, "QEMU guest agent is not
    running" when nothing answers ``guest-sync``/``guest-ping`` in 3 s (a stock image without the agent, or
    one still booting), and an agent's own error as PVE reports it ("VM <id> qga command 'guest-file-open'
    failed - ..."). ``file-read``, ``file-write``, ``exec`` and ``exec-status`` are carried out as PVE's
    API does them (open/read/close, base64).

Every VM is real: a VM whose boot disk did not come from a listed image cannot start ("no real disk").

The config is the launcher's (:func:`homelab.demo.launcher.start_fake_proxmox`) plus ``images``,
``network`` (``netns``, ``bridge``, ``gateway``, ``prefix`` of a :class:`~tests.harness.realvm.LabNetwork`
the test made), ``host_dns`` (the PVE host's resolv.conf: ``search``, ``servers``), ``vm_dir``, and the caps
``max_memory`` (MiB) and ``max_cpus``. Start it with :func:`start_real_pve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from homelab.demo import serve
from homelab.demo.launcher import FakeProxmox, free_loopback
from tests.harness.guest_image import GuestImage
from tests.harness.nocloud import HostDns, nocloud_seed, write_seed_iso
from tests.harness.realvm import AgentClient, AgentError, AgentUnavailable, Guest, LabNetwork, make_overlay, qmp

__all__ = ["image_entry", "image_url", "start_real_pve"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVE = re.compile(r"^(ide|sata|scsi|virtio)\d+$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def image_url(image: GuestImage) -> str:
    """The URL the real-VM fake resolves to ``image`` (a reserved test domain: nothing is fetched)."""
    return f"http://images.homelab.test/debian-12-{image.variant}-{image.key}.qcow2"


def image_entry(image: GuestImage) -> dict[str, str]:
    """The config entry of ``image`` for the fake's ``images``."""
    return {
        "disk": str(image.disk),
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "sha512": image.sha512,
    }


def _size(text: str | None) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", str(text or ""))
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0


def _split(value: str) -> tuple[str, dict[str, str]]:
    parts = str(value).split(",")
    props = dict(p.partition("=")[::2] for p in parts[1:] if p)
    first = parts[0]
    if "=" in first:
        key, _, val = first.partition("=")
        props[key] = val
        first = props.pop("file", "")
    return first, props


def _is_cdrom(volume: str, props: dict[str, str]) -> bool:
    return props.get("media") == "cdrom" or volume in ("cdrom", "none")


def _is_cloudinit(volume: str, props: dict[str, str]) -> bool:
    """A cloud-init drive: a cdrom on a storage volume that is not an ISO file (PVE names it
    vm-<id>-cloudinit; fakepve allocates it as an ordinary vm-<id>-disk-<n>)."""
    return _is_cdrom(volume, props) and ":" in volume and ":iso/" not in volume


def _agent_enabled(config: dict[str, Any]) -> bool:
    value = str(config.get("agent", "0"))
    first = value.split(",")[0]
    return first in ("1", "enabled=1") or "enabled=1" in value


def real_class() -> type:
    """homelab's fake PVE class with real disks, power and guest agent (see the module doc)."""
    from fakepve import PveError, TaskError
    from fakepve.server import params

    base: type = serve.fake_class()

    class RealVmPve(base):  # type: ignore[valid-type,misc]
        def setup_real(self, config: dict[str, Any]) -> None:
            net = config["network"]
            self.lab_net = LabNetwork(net["netns"], net.get("veth", ""), _subnet(net))
            self.lab_net.bridge = net.get("bridge", "br0")
            self.lab_net._closed = True  # the test owns the network: this process never deletes it
            self.images: dict[str, dict[str, str]] = dict(config.get("images", {}))
            self.vm_dir = Path(config["vm_dir"])
            self.vm_dir.mkdir(parents=True, exist_ok=True)
            dns = config.get("host_dns", {})
            self.host_dns = HostDns(tuple(dns.get("search", ())), tuple(dns.get("servers", ())))
            self.max_memory = int(config.get("max_memory", 2048))
            self.max_cpus = int(config.get("max_cpus", 1))
            # volume id -> real file: imported images (never written) and disk overlays.
            self.real_files: dict[str, Path] = {}
            # volume id of a real disk or import -> the image entry whose kernel/initrd boot it.
            self.boot_of: dict[str, dict[str, str]] = {}
            # (vmid, drive key) -> ("import", volid) or ("clone", source vmid, source key): where a disk came from.
            self.origins: dict[tuple[int, str], tuple[Any, ...]] = {}
            self.downloads: dict[tuple[str, str], dict[str, Any]] = {}
            self.guests: dict[int, Guest] = {}
            self._checksums: dict[tuple[str, str], str] = {}
            self._cleanups: set[asyncio.Future[None]] = set()

        # ---------------------------------------------------------------- disks

        async def _download_url(self, request: Any) -> Any:
            p = await params(request)
            self.downloads[(request.match_info["storage"], str(p.get("filename")))] = dict(p)
            return await super()._download_url(request)

        def store_file(self, storage: str, name: str, size: int, content: str = "iso") -> None:
            asked = self.downloads.pop((storage, name), None)
            if asked is None:
                return super().store_file(storage, name, size, content)
            url = str(asked.get("url"))
            entry = self.images.get(url)
            if entry is None:
                raise TaskError(f"download failed: {url}: the test network has no internet (not a listed image)")
            algorithm = str(asked.get("checksum-algorithm") or "")
            if asked.get("checksum"):
                actual = self._checksum(entry["disk"], algorithm)
                if actual != str(asked["checksum"]).lower():
                    raise TaskError(f"checksum mismatch: got '{actual}' != expect '{asked['checksum']}'")
            super().store_file(storage, name, os.path.getsize(entry["disk"]), content)
            volid = f"{storage}:{content}/{name}"
            self.real_files[volid] = Path(entry["disk"])
            self.boot_of[volid] = entry

        def _checksum(self, path: str, algorithm: str) -> str:
            if algorithm == "sha512":
                return next(e["sha512"] for e in self.images.values() if e["disk"] == path)
            key = (path, algorithm)
            if key not in self._checksums:
                digest = hashlib.new(algorithm or "sha256")
                with open(path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                self._checksums[key] = digest.hexdigest()
            return self._checksums[key]

        async def _qm_create(self, v: dict[str, Any], user: str) -> Any:
            for key, value in v.items():
                if DRIVE.match(key):
                    source = _split(str(value))[1].get("import-from")
                    if source:
                        self.origins[(int(v["vmid"]), key)] = ("import", source)
            return await super()._qm_create(v, user)

        async def _qm_clone(self, v: dict[str, Any], user: str) -> Any:
            src = self.vm(int(v["vmid"]))
            if src is not None:
                old = src.snapshots.get(v.get("snapname"), src.config) if v.get("snapname") else src.config
                for key, value in old.items():
                    volume, props = _split(str(value))
                    if DRIVE.match(key) and not _is_cdrom(volume, props) and "cloudinit" not in volume:
                        self.origins[(int(v["newid"]), key)] = ("clone", src.vmid, key)
            return await super()._qm_clone(v, user)

        def _qm_rename_volume(self, volid: str) -> str:
            new: str = super()._qm_rename_volume(volid)
            if volid in self.real_files:
                self.real_files[new] = self.real_files.pop(volid)
                self.boot_of[new] = self.boot_of.pop(volid)
            return new

        def _disk_reassigned(self, old_volid: str, new_volid: str) -> None:
            """A reassigned volume keeps its file (PVE renames the volume; nothing is copied)."""
            if old_volid in self.real_files:
                self.real_files[new_volid] = self.real_files.pop(old_volid)
            if old_volid in self.boot_of:
                self.boot_of[new_volid] = self.boot_of.pop(old_volid)

        def _blank_disk(self, volume: str, size: int) -> Path:
            """A new empty disk (a drive PVE allocated, e.g. ``scsi1: local-lvm:1``): a qcow2 file of its size."""
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", volume)
            (self.vm_dir / "disks").mkdir(parents=True, exist_ok=True)
            path = self.vm_dir / "disks" / f"{name}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True)
            self.real_files[volume] = path
            return path

        def _extra_disks(self, vm: Any, boot: str) -> list[tuple[str, Path, str | None]]:
            """The VM's other disks (not the boot disk, not a cdrom): a new one becomes a blank file."""
            disks: list[tuple[str, Path, str | None]] = []
            for key in sorted(vm.config):
                if key == boot or not DRIVE.match(key):
                    continue
                volume, props = _split(str(vm.config[key]))
                if _is_cdrom(volume, props) or "cloudinit" in volume:
                    continue
                if volume in self.real_files:
                    path = self.real_files[volume]
                elif (vm.vmid, key) in self.origins:
                    path = self._disk_file(vm, key)
                else:
                    path = self._blank_disk(volume, _size(props.get("size")) or 1024**3)
                disks.append((key, path, props.get("serial")))
            return disks

        def _disk_file(self, vm: Any, key: str) -> Path:
            """The real file of ``vm``'s drive ``key``, made now (an overlay) if it is not yet."""
            volume, props = _split(str(vm.config.get(key, "")))
            if volume in self.real_files:
                return self.real_files[volume]
            origin = self.origins.get((vm.vmid, key))
            if origin is None:
                raise TaskError(f"no real disk for {key} ({volume}): it was not imported from a listed image")
            if origin[0] == "import":
                backing, entry = self.real_files.get(origin[1]), self.boot_of.get(origin[1])
                if backing is None or entry is None:
                    raise TaskError(f"no real disk for {key}: {origin[1]} was not downloaded from a listed image")
            else:
                source = self.vm(origin[1])
                if source is None:
                    raise TaskError(f"no real disk for {key}: its source VM {origin[1]} is gone")
                backing = self._disk_file(source, origin[2])
                entry = self.boot_of[_split(str(source.config[origin[2]]))[0]]
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", volume)
            (self.vm_dir / "disks").mkdir(parents=True, exist_ok=True)
            path = make_overlay(backing, self.vm_dir / "disks" / f"{name}.qcow2", _size(props.get("size")))
            self.real_files[volume] = path
            self.boot_of[volume] = entry
            return path

        def _boot_disk(self, vm: Any) -> str:
            boot = str(vm.config.get("boot", ""))
            order = boot.split("order=", 1)[1].split(";") if "order=" in boot else []
            disks = [
                k
                for k in sorted(vm.config)
                if DRIVE.match(k) and not _is_cdrom(*_split(str(vm.config[k]))) and "cloudinit" not in vm.config[k]
            ]
            for key in order:
                if key in disks:
                    return key
            if not disks:
                raise TaskError("no disk to boot from")
            return disks[0]

        async def _homelab_resize(self, v: dict[str, Any], user: str) -> Any:
            upid = await super()._homelab_resize(v, user)
            vm = self.find(v["node"], int(v["vmid"]))
            volume, props = _split(str(vm.config.get(v["disk"], "")))
            path = self.real_files.get(volume)
            if path is not None and path.parent == self.vm_dir / "disks":
                size = _size(props.get("size"))
                guest = self.guests.get(vm.vmid)
                if guest is not None and guest.running():
                    await asyncio.to_thread(qmp, guest.qmp_socket, "block_resize", device="drive0", size=size)
                else:
                    await asyncio.to_thread(
                        subprocess.run, ["qemu-img", "resize", "-q", str(path), str(size)], check=True
                    )
            return upid

        async def _qm_destroy(self, v: dict[str, Any], user: str) -> Any:
            vm = self.find(v["node"], v["vmid"])
            volumes = [_split(str(val))[0] for key, val in vm.config.items() if DRIVE.match(key)]
            upid = await super()._qm_destroy(v, user)
            cleanup = asyncio.ensure_future(self._forget_disks(vm, volumes))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            return upid

        async def _forget_disks(self, vm: Any, volumes: list[str]) -> None:
            while vm in self.vms:
                await asyncio.sleep(0.1)
            guest = self.guests.pop(vm.vmid, None)
            if guest is not None:
                await asyncio.to_thread(guest.destroy)
            for volume in volumes:
                path = self.real_files.get(volume)
                if path is None or path.parent != self.vm_dir / "disks" or self._is_backing(path):
                    continue
                self.real_files.pop(volume, None)
                self.boot_of.pop(volume, None)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        def _is_backing(self, path: Path) -> bool:
            for other in self.real_files.values():
                if other != path and other.parent == path.parent:
                    info = subprocess.run(
                        ["qemu-img", "info", "--output=json", str(other)], capture_output=True, text=True
                    )
                    if info.returncode == 0 and json.loads(info.stdout).get("backing-filename") == str(path):
                        return True
            return False

        # ---------------------------------------------------------------- power

        def _make_guest(self, vm: Any) -> Guest:
            """Disk, seed and QEMU settings for ``vm``'s next start (blocking: run in a thread)."""
            key = self._boot_disk(vm)
            disk = self._disk_file(vm, key)
            extra = self._extra_disks(vm, key)
            entry = self.boot_of[_split(str(vm.config[key]))[0]]
            workdir = self.vm_dir / str(vm.vmid)
            workdir.mkdir(parents=True, exist_ok=True)
            seed = None
            if any(_is_cloudinit(*_split(str(v))) for k, v in vm.config.items() if DRIVE.match(k)):
                seed = nocloud_seed(vm.config, vm.vmid, self.host_dns)
                write_seed_iso(seed, workdir / "cloudinit.iso")
            net = str(vm.config.get("net0", ""))
            mac = next((p.split("=", 1)[1] for p in net.split(",") if re.fullmatch(r"\w+=[0-9A-Fa-f:]{17}", p)), "")
            cores = int(vm.config.get("cores", 1)) * int(vm.config.get("sockets", 1))
            guest = Guest(
                name=f"vm{vm.vmid}",
                workdir=workdir,
                disk=disk,
                kernel=Path(entry["kernel"]),
                initrd=Path(entry["initrd"]),
                mac=mac.lower() or "bc:24:11:00:00:01",
                network=self.lab_net,
                seed_iso=workdir / "cloudinit.iso" if seed else None,
                agent=_agent_enabled(vm.config),
                memory=min(int(vm.config.get("memory", 512)), self.max_memory),
                cpus=max(1, min(cores, self.max_cpus)),
                disk_bus="scsi" if key.startswith("scsi") else "virtio",
                instance_id=seed.instance_id if seed else "",
                extra_disks=extra,
            )
            return guest

        async def _boot(self, vm: Any) -> None:
            old = self.guests.pop(vm.vmid, None)
            if old is not None:  # its QEMU has exited: free its tap, sockets and seed
                await asyncio.to_thread(old.destroy)
            try:
                guest = await asyncio.to_thread(self._make_guest, vm)
            except TaskError:
                raise
            except Exception as exc:
                raise TaskError(f"start failed: {exc}") from exc
            try:
                await asyncio.to_thread(guest.start)
            except Exception as exc:
                await asyncio.to_thread(guest.destroy)  # its tap, sockets and seed; the disks stay
                raise TaskError(f"start failed: {exc}") from exc
            self.guests[vm.vmid] = guest

        def _running_guest(self, vm: Any) -> Guest | None:
            guest = self.guests.get(vm.vmid)
            return guest if guest is not None and guest.running() else None

        async def _do_start(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
            if vm.ha_managed and not vm.template:
                return await super()._do_start(vm, user, p)

            async def body() -> None:
                if vm.template:
                    raise TaskError("you can't start a vm if it's a template")
                if vm.lock and vm.lock != "suspended":
                    raise TaskError(f"VM is locked ({vm.lock})")
                if vm.status == "running":
                    raise TaskError(f"VM {vm.vmid} already running")
                await self.pause(vm.start_secs)
                vm.apply_pending()
                await self._boot(vm)
                vm.status = vm.qmpstatus = "running"
                vm.started_at = time.time()

            return await self.task(vm.node, "qmstart", vm.vmid, user, body, vm=vm)

        async def _do_stop(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
            if not p.get("skiplock"):
                self._check_lock(vm)

            async def body() -> None:
                guest = self.guests.get(vm.vmid)
                if guest is not None:
                    await asyncio.to_thread(guest.kill)
                vm.status = vm.qmpstatus = "stopped"

            return await self.task(vm.node, "qmstop", vm.vmid, user, body, vm=vm)

        async def _power_off(self, vm: Any, p: dict[str, Any]) -> str | None:
            """PVE's shutdown: through the agent if enabled and answering, else ACPI; wait, maybe force."""
            guest = self._running_guest(vm)
            if guest is None:
                vm.status = vm.qmpstatus = "stopped"
                return None
            timeout = int(p.get("timeout") or self.shutdown_default_timeout)
            asked = False
            if guest.agent_socket is not None:
                with contextlib.suppress(AgentError, AgentUnavailable, OSError):
                    await asyncio.to_thread(AgentClient(guest.agent_socket).call, "guest-shutdown", None, 3)
                    asked = True
            if not asked:
                with contextlib.suppress(OSError, RuntimeError):
                    await asyncio.to_thread(guest.powerdown)
            if await asyncio.to_thread(guest.wait_exit, timeout):
                vm.status = vm.qmpstatus = "stopped"
                return None
            if str(p.get("forceStop", "0")) in ("1", "true"):
                await asyncio.to_thread(guest.kill)
                vm.status = vm.qmpstatus = "stopped"
                return "VM still running - terminating now with SIGTERM"
            raise TaskError("VM quit/powerdown failed - got timeout")

        async def _do_shutdown(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
            self._need_running(vm)
            self._check_lock(vm)
            return await self.task(vm.node, "qmshutdown", vm.vmid, user, lambda: self._power_off(vm, p), vm=vm)

        async def _do_reboot(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
            self._need_running(vm)
            self._check_lock(vm)

            async def body() -> None:
                await self._power_off(vm, p)
                vm.apply_pending()
                await self._boot(vm)
                vm.status = vm.qmpstatus = "running"
                vm.started_at = time.time()

            return await self.task(vm.node, "qmreboot", vm.vmid, user, body, vm=vm)

        async def _do_reset(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
            self._need_running(vm)
            self._check_lock(vm)

            async def body() -> None:
                guest = self._running_guest(vm)
                if guest is not None:
                    await asyncio.to_thread(guest.reset)
                vm.started_at = time.time()

            return await self.task(vm.node, "qmreset", vm.vmid, user, body, vm=vm)

        def kill_all(self) -> None:
            for guest in self.guests.values():
                guest.kill()
                shutil.rmtree(guest.sockets, ignore_errors=True)

        # ---------------------------------------------------------- guest agent

        async def _agent_call(self, match: Any, values: dict[str, Any]) -> Any:
            vm = self.find(values["node"], values["vmid"])
            command = match.template.rsplit("/", 1)[1]
            if command == "agent":  # the old POST .../agent with a command parameter
                command = str(values.get("command"))
            if "agent" not in vm.config:
                raise PveError(500, "No QEMU guest agent configured")
            guest = self._running_guest(vm)
            if vm.status != "running" or guest is None:
                raise PveError(500, f"VM {vm.vmid} is not running")
            if guest.agent_socket is None:
                raise PveError(500, "QEMU guest agent is not running")
            client = AgentClient(guest.agent_socket)
            if not await asyncio.to_thread(client.ping, 3.0):
                raise PveError(500, "QEMU guest agent is not running")

            def call(name: str, arguments: dict[str, Any] | None = None) -> Any:
                try:
                    return client.call(name, arguments, timeout=30)
                except AgentError as exc:
                    raise PveError(500, f"VM {vm.vmid} qga command '{name}' failed - {exc.desc}") from None
                except AgentUnavailable as exc:
                    raise PveError(500, f"VM {vm.vmid} qga command '{name}' failed - got timeout ({exc})") from None

            return await asyncio.to_thread(self._agent_command, call, command, values)

        @staticmethod
        def _agent_command(call: Any, command: str, values: dict[str, Any]) -> Any:
            import base64

            if command == "file-read":
                handle = call("guest-file-open", {"path": values["file"]})
                count = int(values.get("count") or 16 * 1024 * 1024)
                data, eof = b"", False
                try:
                    while len(data) < count and not eof:
                        chunk = call("guest-file-read", {"handle": handle, "count": min(1 << 20, count - len(data))})
                        data += base64.b64decode(chunk.get("buf-b64", ""))
                        eof = bool(chunk.get("eof")) or not chunk.get("count")
                finally:
                    with contextlib.suppress(PveError):
                        call("guest-file-close", {"handle": handle})
                decode = str(values.get("decode", "1")) not in ("0", "false")
                content = data.decode(errors="replace") if decode else base64.b64encode(data).decode()
                result: dict[str, Any] = {"content": content, "bytes-read": len(data)}
                if not eof:
                    result["truncated"] = 1
                return result
            if command == "file-write":
                content = str(values["content"])
                encode = str(values.get("encode", "1")) not in ("0", "false")
                buf = base64.b64encode(content.encode()).decode() if encode else content
                handle = call("guest-file-open", {"path": values["file"], "mode": "wb"})
                call("guest-file-write", {"handle": handle, "buf-b64": buf})
                call("guest-file-close", {"handle": handle})
                return None
            if command == "exec":
                argv = values.get("command") or []
                argv = [argv] if isinstance(argv, str) else list(argv)
                args: dict[str, Any] = {"capture-output": True}
                if argv:
                    args.update(path=argv[0], arg=argv[1:])
                if values.get("input-data") is not None:
                    args["input-data"] = base64.b64encode(str(values["input-data"]).encode()).decode()
                return call("guest-exec", args)
            if command == "exec-status":
                status = dict(call("guest-exec-status", {"pid": int(values["pid"])}))
                for key in ("out-data", "err-data"):
                    if status.get(key):
                        status[key] = base64.b64decode(status[key]).decode(errors="replace")
                return {k: (int(v) if isinstance(v, bool) else v) for k, v in status.items()}
            if command == "shutdown":
                call("guest-shutdown")
                return {"result": None}
            return {"result": call(f"guest-{command}")}

    return RealVmPve


def _subnet(net: dict[str, Any]) -> Any:
    import ipaddress

    return ipaddress.IPv4Network(f"{net['gateway']}/{net.get('prefix', 24)}", strict=False)


class RealServer(serve.Server):
    """homelab's fake server, its VMs real (the class swap happens before ``Server.__init__`` runs)."""

    def __init__(self, config: dict[str, Any]) -> None:
        cls = real_class()
        original = serve.fake_class
        serve.fake_class = lambda: cls  # Server.__init__ instantiates whatever fake_class() returns
        try:
            super().__init__(config)
        finally:
            serve.fake_class = original
        self.pve.setup_real(config)

    async def _agents(self) -> None:
        """No simulated agent: notice guests that powered themselves off."""
        while True:
            for vm in list(self.pve.vms):
                guest = self.pve.guests.get(vm.vmid)
                if vm.status == "running" and guest is not None and not guest.running():
                    vm.status = vm.qmpstatus = "stopped"
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._exit)
        await super().run()

    def _exit(self) -> None:
        self.pve.kill_all()
        os._exit(0)


def start_real_pve(
    workdir: Path,
    network: LabNetwork,
    images: dict[str, GuestImage],
    *,
    guests: list[dict[str, Any]] | None = None,
    storages: dict[str, Any] | None = None,
    host_dns: HostDns | None = None,
    max_memory: int = 2048,
    max_cpus: int = 1,
    token_id: str = "root@pam!homelab",
    timeout: float = 30.0,
) -> FakeProxmox:
    """Start the real-VM fake in its own process (over HTTPS on a free loopback address).

    ``images`` maps cloud-image URLs to cached images (see :func:`image_url`). The default storages are
    PVE 9's ``local`` (with ``import`` content) and ``local-lvm``. Stop it with ``FakeProxmox.stop()``;
    the QEMU guests die with it (and with ``network.close()`` in any case).
    """
    import secrets

    from fakepve.certs import make_cert

    workdir.mkdir(parents=True, exist_ok=True)
    host = free_loopback()
    cafile, keyfile, _ = make_cert(str(workdir), hosts=(host,))
    token_secret = secrets.token_hex(16)
    password = secrets.token_hex(12)
    dns = host_dns or HostDns(servers=(network.gateway,))
    config = {
        "host": host,
        "port": 8006,
        "cert": cafile,
        "key": keyfile,
        "password": password,
        "tokens": {token_id: token_secret},
        "guests": guests or [],
        "storages": storages
        or {
            "local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "files": []},
            "local-lvm": {"type": "lvmthin", "active": 1, "content": "images,rootdir", "files": [], "vgname": "pve"},
        },
        # Tasks run in the background (a real shutdown takes real seconds); PVE's own waits are 1/100.
        "time_scale": 0.01,
        "control": str(workdir / "control.sock"),
        "state_dir": str(workdir),
        "images": {url: image_entry(image) for url, image in images.items()},
        "network": {
            "netns": network.netns,
            "veth": network.veth,
            "bridge": network.bridge,
            "gateway": network.gateway,
            "prefix": network.prefix,
        },
        "host_dns": {"search": list(dns.search), "servers": list(dns.servers)},
        "vm_dir": str(workdir / "vms"),
        "max_memory": max_memory,
        "max_cpus": max_cpus,
    }
    config_path = workdir / "realpve.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(config, out)
    log = workdir / "realpve.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    with log.open("w", encoding="utf-8") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.harness.realpve", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        process.wait()
        raise RuntimeError(f"the real-VM fake did not start: {line.strip()} {log.read_text()[-3000:]}")
    fake = FakeProxmox(
        url=line.split()[1],
        host=host,
        port=8006,
        cafile=cafile,
        token_id=token_id,
        token_secret=token_secret,
        user="root@pam",
        password=password,
        control=str(config["control"]),
        process=process,
        log=log,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fake.call("ping")
            return fake
        except OSError:
            time.sleep(0.05)
    fake.stop()
    raise RuntimeError("the real-VM fake's control socket did not answer")


def main() -> None:
    """Serve the config named on the command line until killed."""
    with open(sys.argv[1], encoding="utf-8") as fh:
        config = json.load(fh)
    asyncio.run(RealServer(config).run())


if __name__ == "__main__":
    main()
