"""The measured runs of benchmarks/provision.py: homelab apply and the Ansible playbook against a fresh fake
Proxmox each, with the same durations (PVE seconds, scaled by the fake's time_scale)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make homelab and the test harness importable
    sys.path.insert(0, str(REPO))

from homelab.demo.launcher import FakeProxmox, start_fake_proxmox  # noqa: E402
from homelab.lab import load_lab  # noqa: E402
from homelab.provision.service import carry_out, make_plan  # noqa: E402
from tests.harness.labs import SSH_KEY, lab_data, write_lab  # noqa: E402

PLAYBOOK = REPO / "benchmarks" / "ansible" / "clone20.yml"
WRITES = ("POST", "PUT", "DELETE")

# fakepve durations are in PVE seconds; time_scale turns them into real ones (0.05: 20 PVE s = 1 s here).
TIME_SCALE = 0.05
CLONE_SECS = 1.0  # a linked clone's task on an idle node (a thin snapshot of the template's disk)
# Of it, under the storage's lock (one clone at a time per storage, pve-storage's cluster_lock_storage): the
# thin snapshot of the boot disk and the new cloud-init volume, two lvcreate calls of ~0.15 s each on LVM-thin.
CLONE_LOCK_SECS = 0.3
# A start task ends once QEMU runs (qemu-server's vm_start: volumes activated, the cloud-init ISO written, kvm
# launched and resumed); it does not wait for the guest. The guest then boots until its agent answers.
# (Until 2026-11-30 this was 20 s of start task and 30 s of boot: the same chain, but a playbook that starts
# VMs one after another waited 20 s per VM, which real PVE does not make it wait.)
START_SECS = 3.0  # a cloned VM's start task (PVE seconds)
CLOUD_INIT_SECS = 3.0  # from the agent answering until cloud-init has finished (the fake's default)
AGENT_DELAY = 47.0  # from the VM running until qemu-guest-agent answers (kernel, systemd, the agent)
LATENCY = 0.05  # added to every API response (PVE seconds, i.e. 50 ms on a real LAN)


@dataclass
class Run:
    """One measured run."""

    label: str
    vms: int
    wall: float
    served: list[tuple[str, str]]
    client_calls: int | None = None
    concurrency: int | None = None  # homelab runs (None: the lab's default)
    peak: int | None = None  # most disk tasks the fake ran on one node at once
    with_agent: bool = True  # the chains include the guest agent wait (the fake's agent_delay is not 0)
    ok: bool = True
    error: str = ""
    started_at: float | None = None  # seconds from the run's start until the last VM's start task ended
    chains: list[float] = field(default_factory=list)  # per-VM chain seconds (first step to finished)
    tasks: dict[str, float] = field(default_factory=dict)  # Ansible task name -> seconds (profile_tasks)

    @property
    def calls(self) -> int:
        return len(self.served)

    @property
    def writes(self) -> int:
        return sum(1 for method, _ in self.served if method in WRITES)

    def per_vm(self) -> float:
        return self.calls / self.vms if self.vms else 0.0

    def endpoints(self) -> Counter[str]:
        return Counter(endpoint(m, p) for m, p in self.served)


def endpoint(method: str, path: str) -> str:
    """'GET /nodes/{node}/qemu/{vmid}/config' from a served request."""
    p = path.removeprefix("/api2/json")
    # UPID:node:pid:pstart:starttime:type:id:user: -> the task type, so clone and start polls show apart
    p = re.sub(r"/tasks/UPID:[^:/]*:[^:/]*:[^:/]*:[^:/]*:([^:/]*):[^/]*", r"/tasks/{upid \1}", p)
    p = re.sub(r"/qemu/\d+", "/qemu/{vmid}", p)
    p = re.sub(r"^/nodes/[^/]+", "/nodes/{node}", p)
    return f"{method} {p}"


class TimingReporter:
    """Records when each VM's chain began, when its start task ended and when it finished."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.first: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._lock = threading.Lock()

    def step(self, vm: str, message: str) -> None:
        now = time.monotonic() - self.origin
        with self._lock:
            self.first.setdefault(vm, now)
            # The executor reports "waiting for the guest agent" right after the start task ended.
            if message.startswith("waiting for the guest agent"):
                self.started.setdefault(vm, now)

    def finished(self, vm: str, ok: bool, message: str) -> None:
        with self._lock:
            self.done[vm] = time.monotonic() - self.origin


@contextmanager
def fake_proxmox(workdir: Path, time_scale: float = TIME_SCALE, **overrides: Any) -> Iterator[FakeProxmox]:
    """A fresh fake with the benchmark's durations (overridable), stopped afterwards."""
    settings: dict[str, Any] = dict(
        time_scale=time_scale,
        start_secs=START_SECS,
        agent_delay=AGENT_DELAY,
        latency=LATENCY,
        clone_secs=CLONE_SECS,
        clone_lock_secs=CLONE_LOCK_SECS,
    )
    settings.update(overrides)
    fake = start_fake_proxmox(workdir, **settings)
    try:
        yield fake
    finally:
        fake.stop()


def vm_specs(count: int) -> list[dict[str, Any]]:
    """vm01..vmNN with static addresses; disk 8G = the template's, so no resize (Ansible does none either)."""
    return [
        {"name": f"vm{i:02d}", "cores": 2, "memory": 2048, "disk": "8G", "ip": f"10.10.0.{100 + i}"}
        for i in range(1, count + 1)
    ]


def homelab_apply(
    fake: FakeProxmox, workdir: Path, label: str, lab_name: str, count: int, concurrency: int | None = None
) -> Run:
    """make_plan + carry_out of `count` VMs, as `homelab apply --yes` does; timed from planning to the end
    (``concurrency`` None: the lab's default setting)."""
    os.environ["HOMELAB_PROXMOX_TOKEN"] = fake.token_secret
    path = write_lab(workdir / f"{lab_name}.yml", lab_data(fake, vm_specs(count), name=lab_name))
    lab = load_lab(path)
    fake.requests(clear=True)
    reporter = TimingReporter()
    start = time.monotonic()
    planned = make_plan(lab)
    result = carry_out(planned, reporter, concurrency=concurrency)
    wall = time.monotonic() - start
    served = fake.requests()
    peak = max(fake.call("load", clear=True)["peak"].values(), default=0)
    errors = [f"{o.vm}: {o.error}" for o in result.outcomes if not o.ok]
    missing = [o.vm for o in result.outcomes if o.ok and not o.address and planned.plan.changes]
    ok = result.ok and len(result.outcomes) == count and not missing
    chains = [reporter.done[vm] - reporter.first[vm] for vm in reporter.done if vm in reporter.first]
    return Run(
        label,
        count,
        wall,
        served,
        client_calls=sum(result.calls.values()),
        concurrency=concurrency,
        peak=peak,
        ok=ok,
        error="; ".join(errors[:3] + ([f"no address: {missing[:3]}"] if missing else [])),
        started_at=max(reporter.started.values()) if len(reporter.started) == count else None,
        chains=chains,
    )


def ansible_apply(fake: FakeProxmox, count: int) -> Run:
    """ansible-playbook benchmarks/ansible/clone20.yml against the fake; checks what it left behind."""
    label = f"ansible proxmox_kvm, {count} VMs"
    if shutil.which("ansible-playbook") is None:
        return Run(label, count, 0.0, [], ok=False, error="ansible-playbook is not on PATH")
    user, token = fake.token_id.split("!", 1)
    env = dict(
        os.environ,
        PVE_HOST=fake.host,
        PVE_PORT=str(fake.port),
        PVE_USER=user,
        PVE_TOKEN_ID=token,
        PVE_TOKEN_SECRET=fake.token_secret,
        REQUESTS_CA_BUNDLE=fake.cafile,
        BENCH_VMS=str(count),
        BENCH_SSH_KEY=SSH_KEY,
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
        PROFILE_TASKS_SORT_ORDER="none",
    )
    fake.requests(clear=True)
    start = time.monotonic()
    limit = 300 + 120 * count  # at real durations a loaded machine needed ~45 s per VM
    try:
        proc = subprocess.run(
            ["ansible-playbook", str(PLAYBOOK), "-e", f"ansible_python_interpreter={sys.executable}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Run(label, count, time.monotonic() - start, fake.requests(), ok=False, error=f"no end after {limit} s")
    wall = time.monotonic() - start
    served = fake.requests()
    run = Run(label, count, wall, served, peak=max(fake.call("load")["peak"].values(), default=0))
    for line in proc.stdout.splitlines():
        match = re.match(r"^(\S.*?) -{3,} (\d+\.\d+)s$", line.strip())
        if match:
            run.tasks[match.group(1)] = float(match.group(2))
    if proc.returncode != 0 and "community.proxmox" in proc.stderr and "Could not resolve" in proc.stderr:
        run.ok = False
        run.error = "community.proxmox is missing: pip install '.[bench]' (or set ANSIBLE_COLLECTIONS_PATH)"
        return run
    if proc.returncode != 0:
        run.ok = False
        failed = [line for line in proc.stdout.splitlines() if "FAILED" in line or "fatal:" in line]
        run.error = (
            f"ansible-playbook exited {proc.returncode}: "
            + (" | ".join(failed[:3]) or (proc.stderr.strip() or proc.stdout.strip())[-600:])
            + (f"; last request served: {served[-1]}" if served else "")
        )
        return run
    vms = {vm["name"]: vm for vm in fake.vms() if not vm["template"]}
    wrong = []
    for i in range(1, count + 1):
        vm = vms.get(f"vm{i:02d}")
        if vm is None:
            wrong.append(f"vm{i:02d} missing")
        elif vm["status"] != "running" or vm["config"].get("ipconfig0") != f"ip=10.10.0.{100 + i}/24,gw=10.10.0.1":
            wrong.append(f"vm{i:02d} {vm['status']} {vm['config'].get('ipconfig0')}")
    if wrong:
        run.ok = False
        run.error = "playbook succeeded but: " + ", ".join(wrong[:5])
    return run


def noop_reapply(fake: FakeProxmox, workdir: Path, count: int, setup_concurrency: int | None) -> tuple[Run, Run]:
    """Apply `count` VMs, then measure a second plan + apply that must change nothing."""
    setup = homelab_apply(fake, workdir, f"setup: apply {count} VMs, concurrency {setup_concurrency}", "noop", count,
                          setup_concurrency)  # fmt: skip
    again = homelab_apply(fake, workdir, f"no-op re-apply, {count} VMs", "noop", count)
    return setup, again
