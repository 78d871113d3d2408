"""Start and drive the built-in fake Proxmox (homelab.demo.serve) as a child process."""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homelab.adapters.process import Process, start_python, terminate
from homelab.adapters.proxmox.privileges import TOKEN_ID, parse_version, role_privileges

DEFAULT_TOKEN_ID = TOKEN_ID  # a user of its own with the README's least-privilege role, not root
DEFAULT_VERSION = "9.1.1"


def default_guests() -> list[dict[str, Any]]:
    """A baked template version, as `homelab template build` leaves one: qemu-guest-agent installed."""
    return [
        {
            "vmid": 9000,
            "name": "debian-docker-202611010930",
            "template": True,
            "guest_agent": True,  # a template that already has the agent (see fake_agent.py)
            "config": {
                "name": "debian-docker-202611010930",
                "cores": 2,
                "memory": 2048,
                "scsihw": "virtio-scsi-single",
                "scsi0": "local-lvm:base-9000-disk-0,size=8G",
                "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0",
                "agent": "1",
                "serial0": "socket",
                "ostype": "l26",
                "tags": "guest-agent;homelab-template",
                "description": "homelab template debian-docker version 202611010930",
            },
        }
    ]


def free_loopback(port: int = 8006) -> str:
    """A 127.x.y.z address whose port is free, so parallel fakes never collide."""
    rng = random.SystemRandom()
    for _ in range(200):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return host
    raise RuntimeError("no free loopback address found")


@dataclass
class FakeProxmox:
    """A running fake Proxmox: where it is, how to log in, and its control socket."""

    url: str
    host: str
    port: int
    cafile: str
    token_id: str
    token_secret: str = field(repr=False)
    user: str
    password: str = field(repr=False)
    control: str
    process: Process
    log: Path

    def call(self, op: str, **params: Any) -> Any:
        """Send one control request (fault injection, inspection) and return its result."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.control)
            sock.sendall((json.dumps({"op": op, **params}) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer = json.loads(data)
        if not answer["ok"]:
            raise RuntimeError(f"fake proxmox control {op}: {answer['error']}")
        return answer["result"]

    def requests(self, clear: bool = False) -> list[tuple[str, str]]:
        """(method, path) of every API request served so far."""
        return [tuple(r) for r in self.call("requests", clear=clear)]

    def vms(self) -> list[dict[str, Any]]:
        """Every VM on the fake, with its config."""
        result: list[dict[str, Any]] = self.call("vms")
        return result

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        terminate(self.process)


@dataclass(frozen=True)
class FakeSettings:
    """How the fake Proxmox behaves: its guests, nodes and storages, and how slow and how kind it is."""

    guests: list[dict[str, Any]] | None = None  # None: the demo's default guests
    nodes: list[str] | None = None
    storages: dict[str, Any] | None = None
    time_scale: float = 0.0  # real seconds per PVE second (0: instant)
    agent_delay: float = 5.0
    cloud_init_secs: float = 3.0  # PVE seconds from the agent's start until cloud-init has finished
    start_secs: float = 0.0
    clone_secs: float = 0.0  # PVE seconds a clone task takes on an idle node, besides copying (fake_load.py)
    clone_lock_secs: float = 0.0  # PVE seconds of a linked clone's snapshot step under the storage lock
    copy_secs_per_gib: float = 0.0  # PVE seconds a full clone takes per GiB of disk it copies
    load_capacity: int = 4  # disk tasks a node runs at full speed before clones stretch
    latency: float = 0.0
    address_map: dict[str, str] | None = None
    host_keys: dict[str, str] | None = None
    # address -> {"etc": ..., "var_lib": ..., "authorized_keys": ...}: SSH test hosts that play build VMs
    build_hosts: dict[str, dict[str, str]] | None = None
    demo_bake_host: bool = False  # the demo only: the fake stands in for the build host
    token_id: str = DEFAULT_TOKEN_ID
    # Pools ({name: {"storage": [ids]}}) and ACLs ({user or token: [[path, [privileges]]]}); with any ACL, every
    # call is checked like PVE checks it (see demo/fake_cluster.py); an ACL replaces the default role's grants.
    pools: dict[str, Any] | None = None
    acl: dict[str, list[Any]] | None = None
    version: str = DEFAULT_VERSION  # what /version reports; download-url and the agent's privileges follow it
    # privileges left out of the token's role (root@pam tokens hold everything anyway)
    drop: tuple[str, ...] = ()
    # The fake ignores Ctrl-C (which a terminal sends to the whole process group), so that the process that
    # started it decides when to stop it.
    ignore_sigint: bool = False


def start_fake_proxmox(
    workdir: Path, *, host: str | None = None, timeout: float = 30.0, **settings: Any
) -> FakeProxmox:
    """Start the fake in its own process on a free loopback address (or ``host``), over HTTPS with a fresh
    certificate; ``settings`` are FakeSettings' fields."""
    options = FakeSettings(**settings)
    workdir.mkdir(parents=True, exist_ok=True)
    host = host or free_loopback()
    config = _write_config(workdir, host, options)
    log = workdir / "fakepve.log"
    with log.open("w", encoding="utf-8") as err:
        process = start_python("homelab.demo.serve", str(workdir / "fakepve.json"), stderr=err)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the fake Proxmox did not start: {line.strip()} {log.read_text()[-2000:]}")
        fake = FakeProxmox(
            url=line.split()[1],
            host=host,
            port=8006,
            cafile=config["cert"],
            token_id=options.token_id,
            token_secret=config["tokens"][options.token_id],
            user="root@pam",
            password=config["password"],
            control=config["control"],
            process=process,
            log=log,
        )
        _wait_for_control(fake, time.monotonic() + timeout)
        return fake
    except BaseException:  # a failed start, or Ctrl-C while it starts: never leave the fake running
        if process.poll() is None:
            process.kill()
        process.wait()
        raise


def _write_config(workdir: Path, host: str, options: FakeSettings) -> dict[str, Any]:
    """The fake's configuration (with its fresh certificate, token secret and password), written 0600."""
    from fakepve.certs import make_cert  # the demo extra

    cafile, keyfile, _ = make_cert(str(workdir), hosts=(host,))
    config = {
        "host": host,
        "port": 8006,
        "cert": cafile,
        "key": keyfile,
        "password": secrets.token_hex(12),
        "tokens": {options.token_id: secrets.token_hex(16)},
        "guests": default_guests() if options.guests is None else options.guests,
        "nodes": options.nodes or [],
        "storages": options.storages or {},
        "time_scale": options.time_scale,
        "agent_delay": options.agent_delay,
        "cloud_init_secs": options.cloud_init_secs,
        "start_secs": options.start_secs,
        "clone_secs": options.clone_secs,
        "clone_lock_secs": options.clone_lock_secs,
        "copy_secs_per_gib": options.copy_secs_per_gib,
        "load_capacity": options.load_capacity,
        "latency": options.latency,
        "address_map": options.address_map or {},
        "host_keys": options.host_keys or {},
        "build_hosts": options.build_hosts or {},
        "demo_bake_host": options.demo_bake_host,
        "control": str(workdir / "control.sock"),
        "state_dir": str(workdir),
        "ignore_sigint": options.ignore_sigint,
        "pools": options.pools or {},
        "acl": options.acl or {},
        "version": options.version,
        "grants": [] if options.acl else least_privilege_grants(options),
    }
    fd = os.open(workdir / "fakepve.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(config, out)
    return config


def least_privilege_grants(options: FakeSettings) -> list[tuple[str, str, list[str]]]:
    """The README's role, on the README's paths for every node, storage and bridge of the fake, for the token and
    its user (a privilege-separated token holds what both hold); none for a root@pam token."""
    user = options.token_id.split("!", 1)[0]
    if user == "root@pam":
        return []
    version = parse_version(options.version) or (9, 0, 0)
    privileges = [p for p in role_privileges(version) if p not in options.drop]
    nodes = sorted({"pve1", *(options.nodes or []), *(str(g.get("node", "pve1")) for g in options.guests or [])})
    storages = sorted({"local", "local-lvm", *(options.storages or {})})  # fakepve always has these two
    paths = ["/vms", *(f"/nodes/{n}" for n in nodes), *(f"/storage/{s}" for s in storages)]
    paths.append("/sdn/zones/localnetwork/vmbr0")  # the fake's one bridge
    return [(who, path, privileges) for who in (user, options.token_id) for path in paths]


def _wait_for_control(fake: FakeProxmox, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            fake.call("ping")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the fake Proxmox's control socket did not answer")
