"""Disk work is paced per node; starts and boots wait without a slot; a busy node gets fewer clones at once.

The fake records how many disk tasks ran on each node at once (homelab/demo/fake_load.py); the tests read that
record and the order of the executor's steps, never a duration.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.api import PveApi
from homelab.demo.launcher import FakeProxmox
from homelab.errors import ProxmoxError
from homelab.lab import load_lab
from homelab.provision.pacing import NodeLoad, NodePacer, parse_load
from homelab.provision.service import carry_out, make_plan
from tests.harness.labs import lab_data, write_lab


class Steps:
    """Every step and finish, in the order the executor reported them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def step(self, vm: str, message: str) -> None:
        with self._lock:
            self.lines.append((vm, message))

    def finished(self, vm: str, ok: bool, message: str) -> None:
        with self._lock:
            self.lines.append((vm, f"finished {ok}: {message}"))


def apply(
    fake: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, limit: int, full: bool = True
) -> Steps:
    """Apply ``count`` VMs with ``limit`` slots per node; ``full``: full clones (which hold a slot each)."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake.token_secret)
    vms = [{"name": f"vm{i:02d}", "ip": f"10.10.0.{100 + i}", "disk": "8G"} for i in range(count)]
    settings = {"concurrency": limit, "full_clone": full}
    lab = load_lab(write_lab(tmp_path / "lab.yml", lab_data(fake, vms, settings=settings)))
    steps = Steps()
    result = carry_out(make_plan(lab), steps)
    assert result.ok, [o.error for o in result.outcomes if not o.ok]
    return steps


def clones(fake: FakeProxmox) -> list[int]:
    """+1/-1 for each clone task's begin and end on pve1, in order."""
    return [e[4] for e in fake.call("load")["events"] if e[1] == "pve1" and e[2] == "qmclone"]


# --- what a node's status says ---------------------------------------------------------------------------


def test_node_status_figures_and_when_a_node_is_busy() -> None:
    status = {
        "cpu": 0.12,
        "wait": 0.31,
        "loadavg": ["3.20", "2.00", "1.00"],
        "memory": {"total": 1000, "used": 500},
        "cpuinfo": {"cpus": 8},
    }
    load = parse_load(status)
    assert load == NodeLoad(iowait=0.31, cpu=0.12, memory=0.5, load=0.4)
    assert load.busy() == "iowait 31%"
    assert NodeLoad(0.01, 0.95, 0.95, 0.1).busy() == "cpu 95%, memory 95%"
    assert NodeLoad(0.01, 0.1, 0.1, 2.5).busy() == "load 250%"
    assert parse_load({}) == NodeLoad(0.0, 0.0, 0.0, 0.0) and parse_load({}).busy() is None
    assert parse_load({"loadavg": ["n/a"], "wait": "x", "memory": None}) == NodeLoad(0.0, 0.0, 0.0, 0.0)


class NodeStatuses:
    """A transport answering /nodes/{node}/status with the next of ``answers`` (a dict, or an error to raise)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    def request(self, method: str, path: str, params: dict[str, Any]) -> Any:
        assert (method, path) == ("GET", "/nodes/pve1/status")
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


BUSY = {"wait": 0.6, "cpu": 0.1}
CALM = {"wait": 0.02, "cpu": 0.1}


def test_the_limit_halves_while_busy_and_grows_back_by_one() -> None:
    statuses = NodeStatuses(BUSY, BUSY, BUSY, CALM, CALM, CALM, CALM)
    notes: list[str] = []
    pacer = NodePacer(PveApi(statuses), 4, threading.Event(), lambda vm, m: notes.append(m), refresh=0)
    limits = []
    for _ in range(7):
        with pacer.slot("pve1", "vm01"):
            limits.append(pacer.node_limit("pve1"))
    assert limits == [2, 1, 1, 2, 3, 4, 4] and statuses.asked == 7
    assert notes[0] == "pve1 is busy (iowait 60%): 2 disk task(s) at once" and "calm again" in notes[-1]


def test_a_status_the_token_may_not_read_keeps_the_setting() -> None:
    statuses = NodeStatuses(ProxmoxError("GET /nodes/pve1/status: 403 Permission check failed", status=403))
    notes: list[str] = []
    pacer = NodePacer(PveApi(statuses), 3, threading.Event(), lambda vm, m: notes.append(m), refresh=0)
    for _ in range(3):
        with pacer.slot("pve1", "vm01"):
            assert pacer.node_limit("pve1") == 3
    assert statuses.asked == 1 and len(notes) == 1 and "not readable" in notes[0]


# --- against the fake -------------------------------------------------------------------------------------


@pytest.mark.fake_pve(time_scale=0.05, clone_secs=10, start_secs=2, agent_delay=2, cloud_init_secs=1)
def test_never_more_clones_on_a_node_than_its_limit(
    fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply(fake_pve, tmp_path, monkeypatch, 8, 3)
    record = clones(fake_pve)
    assert record.count(1) == 8 and record.count(-1) == 8
    assert fake_pve.call("load")["peak"]["pve1"] <= 3


@pytest.mark.fake_pve(time_scale=0.05, clone_secs=10, start_secs=2, agent_delay=2, cloud_init_secs=1)
def test_linked_clones_hold_no_slot_and_load_no_disk(
    fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linked clones (the default) are thin snapshots: 6 of them with one slot all run at once, and the node
    counts none of them as disk load (its IO delay stays low, so the pacer never backs off)."""
    steps = apply(fake_pve, tmp_path, monkeypatch, 6, 1, full=False)
    load = fake_pve.call("load")
    assert clones(fake_pve).count(1) == 6
    assert load["clones_peak"]["pve1"] == 6
    assert load["peak"].get("pve1", 0) <= 1  # a resize or nothing; never a clone
    assert all(not e[5] for e in load["events"] if e[2] == "qmclone")
    assert not any("is busy" in m for _, m in steps.lines)


@pytest.mark.fake_pve(time_scale=0.02, clone_secs=4, clone_lock_secs=2, start_secs=2, agent_delay=2)
def test_the_fake_takes_linked_clone_snapshots_one_at_a_time(
    fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PVE's storage lock: linked clones overlap, but each waits its turn for the snapshot, so the n-th clone
    to begin cannot end before n snapshot steps have passed since the first began."""
    apply(fake_pve, tmp_path, monkeypatch, 5, 4, full=False)
    events = [e for e in fake_pve.call("load")["events"] if e[2] == "qmclone"]
    first = min(e[0] for e in events if e[4] == 1)
    ends = sorted(e[0] - first for e in events if e[4] == -1)
    assert fake_pve.call("load")["clones_peak"]["pve1"] >= 2
    for n, end in enumerate(ends, start=1):
        assert end >= n * 2 * 0.02 * 0.95, (n, ends)


@pytest.mark.fake_pve(time_scale=0.05, clone_secs=2, start_secs=120, agent_delay=2, cloud_init_secs=1)
def test_starts_and_boots_hold_no_slot(fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 VMs, 4 slots: every VM is cloned and its start sent before the first start task has ended."""
    steps = apply(fake_pve, tmp_path, monkeypatch, 20, 4)
    first_up = next(i for i, (_, m) in enumerate(steps.lines) if m.startswith("waiting for the guest agent"))
    started = {vm for vm, m in steps.lines[:first_up] if m == "starting"}
    assert len(started) == 20
    assert fake_pve.call("load")["peak"]["pve1"] <= 4


@pytest.mark.fake_pve(time_scale=0.05, clone_secs=10, start_secs=2, agent_delay=2, cloud_init_secs=1)
def test_a_busy_node_gets_fewer_clones_at_once(
    fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_pve.call("load", background={"pve1": {"wait": 0.5}})  # another tenant keeps the node's disks busy
    steps = apply(fake_pve, tmp_path, monkeypatch, 6, 4)
    record = clones(fake_pve)
    assert record.count(1) == 6
    assert fake_pve.call("load")["peak"]["pve1"] <= 2
    assert any(m.startswith("pve1 is busy (iowait 5") for _, m in steps.lines)


@pytest.mark.fake_pve(time_scale=0.05, clone_secs=10, start_secs=2, agent_delay=2, drop=("Sys.Audit",))
def test_without_sys_audit_the_setting_still_bounds_the_clones(
    fake_pve: FakeProxmox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = apply(fake_pve, tmp_path, monkeypatch, 6, 2)
    assert fake_pve.call("load")["peak"]["pve1"] <= 2
    assert sum("node status not readable" in m for _, m in steps.lines) == 1


def test_a_start_right_after_the_clone_waits_its_start_delay() -> None:
    """The fake's start delay is taken when the start begins, not by a polling loop that may not have run."""
    pytest.importorskip("fakepve", reason="the fake Proxmox needs the test extra")
    from homelab.demo.serve import fake_class

    async def scenario() -> tuple[float, str]:
        pve = fake_class()(user="root@pam", password="x", host="127.0.0.1", port=8006)
        pve.time_scale = 0.01
        pve.new_vm_start_secs = 30
        vm = pve.add_vm(101, "fresh", node="pve1", status="stopped", config={"name": "fresh"})
        upid = await pve._do_start(vm, "root@pam", {})
        return vm.start_secs, pve.tasks[upid]["status"]

    start_secs, status = asyncio.run(scenario())
    assert start_secs == 30 and status == "running"


def test_an_agent_call_while_the_guest_boots_takes_the_guest_ping_timeout() -> None:
    """PVE pings the agent (3 s timeout) before each command: "not running" comes only after it, and an agent
    that comes up within it answers the same call."""
    pytest.importorskip("fakepve", reason="the fake Proxmox needs the test extra")
    import time

    from fakepve import PveError

    from homelab.demo.serve import fake_class

    async def scenario() -> tuple[float, str, int]:
        pve = fake_class()(user="root@pam", password="x", host="127.0.0.1", port=8006)
        pve.time_scale = 0.01
        vm = pve.add_vm(101, "booting", node="pve1", status="running", config={"name": "booting", "agent": "1"})
        ticks: list[int] = []

        def tick(v: Any) -> None:  # the first call looks 13 times (at once, then every 0.25 s of 3 s)
            ticks.append(1)
            if len(ticks) >= 16:  # up within the second call's ping
                v.agent = {"interfaces": [], "files": {}}

        pve.guest_tick = tick
        from fakepve import schema as pve_schema

        match = pve_schema.load().match("/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces")
        began = time.monotonic()
        try:
            await pve._agent_call(match, {"node": "pve1", "vmid": 101})
            first = "answered"
        except PveError as exc:
            first = str(exc)
        failed_after = time.monotonic() - began
        await pve._agent_call(match, {"node": "pve1", "vmid": 101})  # answers: the agent came up meanwhile
        return failed_after, first, vm.agent is not None

    failed_after, first, up = asyncio.run(scenario())
    assert "QEMU guest agent is not running" in first
    assert failed_after >= 3 * 0.01 and up
