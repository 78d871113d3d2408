"""Benchmark: bring up N VMs with homelab and with an Ansible playbook against the fake Proxmox.

    python benchmarks/provision.py [--vms 20] [--noop-vms 50] [--concurrency 4] [--wide 20] [--skip-ansible]

Every measured run gets a fresh fake Proxmox (homelab.demo.launcher) over HTTPS with the same realistic
durations, scaled down by fakepve's time_scale so one run takes about two minutes:

- homelab apply (make_plan + carry_out) of N VMs at the default concurrency and at a wide one, and one
  VM alone: the "single VM chain" (clone, config, start, guest agent address) the N-VM run is compared to;
- homelab again with agent_delay 0: its time to "all VMs started", which is where Ansible stops;
- benchmarks/ansible/clone20.yml (community.proxmox.proxmox_kvm in a loop: clone, update, start) run
  by ansible-playbook as a subprocess, verifying TLS with the fake's CA;
- a no-op re-apply of M VMs (apply M, then plan + apply again): time and calls; writes must be 0.

API calls are counted on the server (every request the fake served) and, for homelab, on the client
(result.calls, retries included).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
START_SECS = 20.0  # a cloned VM's start task (PVE seconds), like qemu bringing up a cloud image
AGENT_DELAY = 30.0  # from the VM running until qemu-guest-agent reports an address (boot + cloud-init)
LATENCY = 0.05  # added to every API response (PVE seconds, i.e. 50 ms on a real LAN)


@dataclass
class Run:
    """One measured run."""

    label: str
    vms: int
    wall: float
    served: list[tuple[str, str]]
    client_calls: int | None = None
    concurrency: int | None = None  # homelab runs
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
def fake_proxmox(workdir: Path, **overrides: Any) -> Iterator[FakeProxmox]:
    """A fresh fake with the benchmark's durations (overridable), stopped afterwards."""
    settings: dict[str, Any] = dict(
        time_scale=TIME_SCALE, start_secs=START_SECS, agent_delay=AGENT_DELAY, latency=LATENCY
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


def homelab_apply(fake: FakeProxmox, workdir: Path, label: str, lab_name: str, count: int, concurrency: int) -> Run:
    """make_plan + carry_out of `count` VMs, as `homelab apply --yes` does; timed from planning to the end."""
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
    proc = subprocess.run(
        ["ansible-playbook", str(PLAYBOOK), "-e", f"ansible_python_interpreter={sys.executable}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    wall = time.monotonic() - start
    served = fake.requests()
    run = Run(label, count, wall, served)
    for line in proc.stdout.splitlines():
        match = re.match(r"^(\S.*?) -{3,} (\d+\.\d+)s$", line.strip())
        if match:
            run.tasks[match.group(1)] = float(match.group(2))
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


def noop_reapply(fake: FakeProxmox, workdir: Path, count: int, setup_concurrency: int) -> tuple[Run, Run]:
    """Apply `count` VMs, then measure a second plan + apply that must change nothing."""
    setup = homelab_apply(fake, workdir, f"setup: apply {count} VMs, concurrency {setup_concurrency}", "noop", count,
                          setup_concurrency)  # fmt: skip
    again = homelab_apply(fake, workdir, f"no-op re-apply, {count} VMs", "noop", count, 4)
    return setup, again


# --------------------------------------------------------------------------- report


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_settings() -> None:
    ms = LATENCY * TIME_SCALE * 1000
    print("Fake Proxmox settings (fakepve, a fresh server per measured run, HTTPS with TLS verified):")
    print(f"  time_scale  {TIME_SCALE:g}: 1 PVE second = {TIME_SCALE:g} s here (real durations x {TIME_SCALE:g})")
    print(f"  start_secs  {START_SECS:g} PVE s: start task of a cloned VM ({START_SECS * TIME_SCALE:.2f} s here)")
    print(
        f"  agent_delay {AGENT_DELAY:g} PVE s: VM running -> guest agent reports an address "
        f"({AGENT_DELAY * TIME_SCALE:.2f} s here)"
    )
    print(f"  latency     {LATENCY:g} PVE s: added to each API answer ({LATENCY * 1000:g} ms real, {ms:.1f} ms here)")
    print("  clones are linked clones of vmid 9000 (instant in the fake, ~1-2 s on LVM-thin); no disk resize")
    print()


def print_table(rows: list[Run], chain: Run | None) -> None:
    head = f"{'run':<48} {'wall s':>7} {'calls':>6} {'/VM':>6} {'writes':>6} {'client':>6}  notes"
    print(head)
    print("-" * len(head))
    for run in rows:
        notes = []
        if not run.ok:
            notes.append(f"FAILED: {run.error}")
        if run.started_at is not None:
            notes.append(f"last VM started at {run.started_at:.1f} s")
        if run.chains and run.vms > 1:
            notes.append(f"chains {min(run.chains):.1f}-{max(run.chains):.1f} s")
        if chain is not None and chain.ok and run.concurrency and run.vms > 1 and run.with_agent and run.started_at:
            waves = math.ceil(run.vms / run.concurrency)
            ideal = chain.wall * waves
            notes.append(f"{run.wall / ideal:.2f}x of chain x {waves}")
        client = "-" if run.client_calls is None else str(run.client_calls)
        print(
            f"{run.label:<48} {run.wall:>7.1f} {run.calls:>6} {run.per_vm():>6.1f} {run.writes:>6} {client:>6}  "
            + "; ".join(notes)
        )
    print()


def estimate_real(run: Run, pve_wait: float) -> float:
    """Wall time with PVE's waits at real speed: the scaled PVE seconds on the critical path, unscaled."""
    return run.wall + pve_wait * (1 - TIME_SCALE)


def print_breakdown(run: Run) -> None:
    print(f"API calls per VM by endpoint, {run.label} (served by the fake):")
    for name, count in sorted(run.endpoints().items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count / run.vms:>6.2f}  {name}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=20, help="VMs to bring up (default 20)")
    parser.add_argument("--noop-vms", type=int, default=50, help="VMs in the no-op re-apply (default 50)")
    parser.add_argument("--concurrency", type=int, default=4, help="homelab's concurrency (default 4, the lab default)")
    parser.add_argument("--wide", type=int, default=20, help="a second homelab run at this concurrency (0: skip)")
    parser.add_argument("--skip-ansible", action="store_true", help="do not run the Ansible playbook")
    args = parser.parse_args(argv)

    total_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="homelab-bench-"))
    os.environ["HOMELAB_STATE_DIR"] = str(tmp / "state")
    os.environ["HOMELAB_CONFIG_DIR"] = str(tmp / "config")
    print_settings()
    sys.stdout.flush()
    n, conc = args.vms, args.concurrency
    rows: list[Run] = []
    try:
        with fake_proxmox(tmp / "chain") as fake:
            chain = homelab_apply(fake, tmp, "single VM chain (homelab, 1 VM)", "chain", 1, 1)
        rows.append(chain)
        print(f"  done: {chain.label} {chain.wall:.1f} s", file=sys.stderr)
        with fake_proxmox(tmp / "c4") as fake:
            main_run = homelab_apply(fake, tmp, f"homelab apply, {n} VMs, concurrency {conc}", "bench", n, conc)
        rows.append(main_run)
        print(f"  done: {main_run.label} {main_run.wall:.1f} s", file=sys.stderr)
        if args.wide and args.wide != conc:
            with fake_proxmox(tmp / "wide") as fake:
                label = f"homelab apply, {n} VMs, concurrency {args.wide}"
                wide = homelab_apply(fake, tmp, label, "wide", n, args.wide)
            rows.append(wide)
            print(f"  done: {wide.label} {wide.wall:.1f} s", file=sys.stderr)
        with fake_proxmox(tmp / "started", agent_delay=0) as fake:
            to_started = homelab_apply(fake, tmp, f"homelab, {n} VMs, c {conc}, agent_delay 0", "started", n, conc)
        to_started.with_agent = False
        rows.append(to_started)
        print(f"  done: {to_started.label} {to_started.wall:.1f} s", file=sys.stderr)
        ansible: Run | None = None
        if not args.skip_ansible:
            with fake_proxmox(tmp / "ansible") as fake:
                ansible = ansible_apply(fake, n)
            rows.append(ansible)
            print(f"  done: {ansible.label} {ansible.wall:.1f} s", file=sys.stderr)
        with fake_proxmox(tmp / "noop") as fake:
            setup, noop = noop_reapply(fake, tmp, args.noop_vms, max(conc, args.wide or conc))
        rows.extend([setup, noop])
        print(f"  done: {noop.label} {noop.wall:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(rows, chain)

    print("Summary")
    if noop.ok:
        reads = noop.calls - noop.writes
        print(
            f"  no-op re-apply of {noop.vms} VMs: {noop.wall:.2f} s, {noop.calls} API calls "
            f"({reads} reads, {noop.writes} writes{'' if noop.writes == 0 else '  <-- SHOULD BE 0'})"
        )
    waves = math.ceil(n / conc)
    if chain.ok and main_run.ok:
        print(
            f"  single VM chain {chain.wall:.1f} s; {n} VMs at concurrency {conc}: {main_run.wall:.1f} s "
            f"= {main_run.wall / chain.wall:.1f} chains (ideal ceil({n}/{conc}) = {waves})"
        )
    if main_run.ok and to_started.ok and chain.ok and chain.started_at:
        # Concurrency slots bound the Proxmox work; the guest-agent wait (idle share of a chain) holds none,
        # so the floor is "all started" plus one agent wait.
        idle = (chain.wall - chain.started_at) / chain.wall
        bound = to_started.wall + AGENT_DELAY * TIME_SCALE
        print(
            f"  the agent wait is {idle:.0%} of a chain and holds no slot: all {n} started after "
            f"{to_started.wall:.1f} s (agent_delay 0), so ~{bound:.1f} s is the floor; measured {main_run.wall:.1f} s"
        )
    wide_run = next((r for r in rows if r.label.startswith("homelab apply") and r is not main_run), None)
    if chain.ok and wide_run is not None and wide_run.ok:
        wide_waves = math.ceil(n / args.wide)
        print(
            f"  {n} VMs at concurrency {args.wide}: {wide_run.wall:.1f} s = {wide_run.wall / chain.wall:.1f} chains "
            f"(ideal {wide_waves})"
        )
    if ansible is not None and ansible.ok and main_run.ok:
        print(
            f"  ansible {ansible.wall:.1f} s vs homelab {main_run.wall:.1f} s: ansible/homelab = "
            f"{ansible.wall / main_run.wall:.1f}x (homelab also waits for every guest agent address; Ansible doesn't)"
        )
        if to_started.ok:
            print(
                f"  to 'all started' (what the playbook waits for): ansible {ansible.wall:.1f} s vs homelab "
                f"{to_started.wall:.1f} s (agent_delay 0) = {ansible.wall / to_started.wall:.1f}x"
            )
        print(
            f"  API calls per VM: homelab {main_run.per_vm():.1f} (incl. task and agent polling), "
            f"ansible {ansible.per_vm():.1f}; polls depend on the scale (homelab backs off from 0.05 s to "
            f"2 s/3 s, proxmox_kvm polls every 1 s), so at real speed both poll more"
        )
        if ansible.tasks:
            inside = sum(ansible.tasks.values())
            parts = ", ".join(f"{name} {secs:.1f} s" for name, secs in ansible.tasks.items())
            print(f"  ansible per task (profile_tasks): {parts}; start-up and the rest {ansible.wall - inside:.1f} s")
            update = next((secs for name, secs in ansible.tasks.items() if name.startswith("Set ")), None)
            if update is not None:
                print(
                    f"    the update task waits for no PVE task: {update / n:.2f} s per proxmox_kvm run is Ansible's "
                    f"own overhead; clone and start add proxmox_kvm's 1 s task polls and a fixed 1 s sleep after each"
                )
        # The fake's waits are scaled by time_scale, but proxmox_kvm's sleeps (1 s between task polls, 1 s
        # after every task), ansible-playbook's start-up and each module's fork are real seconds: at this
        # scale they weigh 1/time_scale times more than on a real cluster. Unscaling the PVE waits on each
        # tool's critical path gives an estimate at real speed.
        chain_calls = LATENCY * main_run.per_vm()
        hl_real = estimate_real(main_run, waves * (START_SECS + AGENT_DELAY + chain_calls))
        an_real = estimate_real(ansible, n * START_SECS + LATENCY * ansible.calls)
        line = (
            f"  estimate at real PVE speed (the scaled PVE waits on each critical path unscaled, +- poll "
            f"granularity): homelab ~{hl_real:.0f} s, ansible ~{an_real:.0f} s = {an_real / hl_real:.1f}x"
        )
        if to_started.ok:
            st_real = estimate_real(to_started, waves * (START_SECS + LATENCY * to_started.per_vm()))
            line += f"; to 'all started': homelab ~{st_real:.0f} s = {an_real / st_real:.1f}x"
        print(line)
    elif ansible is not None and not ansible.ok:
        print(f"  ansible run did not complete: {ansible.error}")
        print(f"  partial: {ansible.calls} API calls served in {ansible.wall:.1f} s")
    print()

    print_breakdown(main_run)
    if ansible is not None and ansible.calls:
        print_breakdown(ansible)
    print_breakdown(noop)
    print(f"(benchmark took {time.monotonic() - total_start:.0f} s)")
    failed = [r for r in rows if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
