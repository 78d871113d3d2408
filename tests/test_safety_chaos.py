"""Kill-chaos: `homelab apply --yes` killed (SIGKILL or SIGINT) at random progress lines, each followed by a re-run.

After each re-run the lab must have converged: every VM it names exists once, running, fully made (its mark says
ready, on the newest template version, nothing locked), nothing marked as the lab's that it does not name, and
`homelab plan` has nothing to do. For replacements the fake's monitor (homelab.demo.fake_monitor) records any
moment two running VMs share a static address over the whole trial (the killed run, its rollback, the re-run):
there must be none. The seed is printed (and taken from HOMELAB_CHAOS_SEED to replay a run); the counts are printed
as one line and are in every assertion message.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.datadisks import DATA_KEY, is_keeper
from homelab.adapters.proxmox.marks import parse_mark
from homelab.demo.fake_monitor import static_address
from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import add_template_version, lab_data, write_lab
from tests.harness.runs import homelab_env, start_held, wait_ready

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("HOMELAB_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
# An agent that answers 20 PVE seconds after the start (0.4 s here): kills land in every wait, and a run takes
# about a second plus the interpreter's start.
FAST = {"time_scale": 0.02, "agent_delay": 20, "cloud_init_secs": 3}
# The most a killed run may take from its release to its end (about a second plus the interpreter's start).
RUN_LIMIT = 90.0


@dataclass
class Tally:
    """What the trials of one test found."""

    name: str
    trials: int = 0
    killed: Counter[str] = field(default_factory=Counter)
    converged: int = 0
    duplicates: int = 0
    orphans: int = 0
    half_made: int = 0
    overlaps: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        kills = ", ".join(f"{n} {s}" for s, n in sorted(self.killed.items())) or "none"
        return (
            f"chaos {self.name} (seed {SEED}): {self.trials} trials (killed: {kills}), {self.converged} converged, "
            f"{self.duplicates} duplicates, {self.orphans} orphans, {self.half_made} half-made or locked, "
            f"{self.overlaps} static-IP overlaps"
        )


class HeldRuns:
    """`homelab ARGS` runs started one trial ahead and held at a barrier: the next run's interpreter starts (a
    second or more on a loaded machine) while this trial's re-run and checks go on."""

    def __init__(self, folder: Path, env: dict[str, str], args: list[str]):
        self.folder, self.env, self.args, self.count = folder, env, args, 0
        self.hung: list[str] = []  # the ends of the logs of runs that did not end on their own
        self.next = self._spawn()

    def _spawn(self) -> tuple[Path, subprocess.Popen[str]]:
        self.count += 1
        barrier = self.folder / f"go{self.count}"
        return barrier, start_held(barrier, self.env, *self.args)

    def kill_at_line(self, line: int, sig: signal.Signals, log: Path) -> bool:
        """Release the held run and send it ``sig`` when it prints its ``line``-th line; True if it was sent (the
        run may end first). Waits for the run to end (after SIGINT it goes back and exits on its own)."""
        (barrier, process), self.next = self.next, self._spawn()
        wait_ready(barrier, 1)
        barrier.touch()
        lines = read_lines(process)
        sent, seen = False, []
        deadline = time.monotonic() + RUN_LIMIT
        while True:
            try:
                text = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if text is None:
                break
            seen.append(text)
            if len(seen) == line and process.poll() is None:
                process.send_signal(sig)
                sent = True
        # A run that does not end is a finding (a hang after Ctrl-C once kept CI waiting until it was killed).
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            seen.append(f"!! the run did not end within {RUN_LIMIT} s: killed\n")
            self.hung.append(f"{log.name}:\n" + "".join(seen[-15:]))
        log.write_text("".join(seen))
        return sent

    def close(self) -> None:
        self.next[1].kill()
        self.next[1].wait()


def read_lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """``process``'s output lines as they come, then None at its end (or at the reader's deadline: Empty)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            lines.put(text)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def lab_vms(fake: FakeProxmox, lab: str) -> list[dict[str, Any]]:
    """The fake's VMs marked as lab ``lab``'s (not its keeper of data disks), each with its parsed mark."""
    found = []
    for vm in fake.vms():
        mark = parse_mark(vm["config"].get("description"))
        if not vm["template"] and mark and mark.get("lab") == lab and not is_keeper(mark):
            found.append(dict(vm, mark=mark))
    return found


def data_disks(fake: FakeProxmox) -> list[tuple[str, str]]:
    """(VM name, volume) of every data disk on the fake: attached ones (DATA_KEY) and detached ones (unusedN)."""
    return [
        (vm["name"], str(value).split(",")[0])
        for vm in fake.vms()
        if not vm["template"]
        for key, value in vm["config"].items()
        if key == DATA_KEY or re.fullmatch(r"unused\d+", key)
    ]


def check(tally: Tally, fake: FakeProxmox, lab: str, names: set[str], version: str | None, log: str) -> None:
    """Count what is wrong with the lab now; a trial converged when nothing is."""
    problems = []
    vms = lab_vms(fake, lab)
    counts = Counter(vm["mark"].get("vm") for vm in vms)
    duplicated = [name for name, n in counts.items() if n > 1]
    orphaned = [name for name in counts if name not in names]
    missing = names - set(counts)
    half = [
        f"{vm['vmid']} ({vm['mark'].get('vm')}: {vm['status']}, state {vm['mark'].get('state')}, lock {vm['lock']})"
        for vm in vms
        if vm["status"] != "running"
        or vm["mark"].get("state") != "ready"
        or vm["lock"]
        or (version and vm["mark"].get("version") != version)
    ]
    tally.duplicates += len(duplicated)
    tally.orphans += len(orphaned)
    tally.half_made += len(half) + len(missing)
    for what, items in (("duplicates", duplicated), ("orphans", orphaned), ("half-made", half), ("missing", missing)):
        if items:
            problems.append(f"{what}: {sorted(items)}")
    plan = run_cli("plan")
    if plan.exit_code != 0:
        problems.append(f"plan exits {plan.exit_code}: {plan.output.strip()}")
    if problems:
        tally.problems.append(f"trial {tally.trials}: " + "; ".join(problems) + f"\n--- killed run:\n{log}")
    else:
        tally.converged += 1


def report(tally: Tally, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n" + tally.line())


@pytest.mark.fake_pve(**FAST)
def test_interrupted_applies_converge_on_the_next_run(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 applies (creates, and --prune removals of the VMs the previous trial named), each killed at a random
    progress line with SIGKILL or SIGINT, then run again: every VM once, made, no orphan, plan has nothing to do."""
    rng = random.Random(SEED)
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    env = homelab_env(tmp_path / "state", fake_pve.token_secret)
    tally = Tally("apply")
    names: list[str] = []
    lab = tmp_path / "lab.yml"
    monkeypatch.setenv("HOMELAB_LAB", str(lab))
    runs = HeldRuns(tmp_path, env, ["--lab", str(lab), "apply", "--yes", "--prune"])
    for trial in range(20):
        # two new VMs; one of the previous trial's stays, the other goes (--prune)
        names = [*names[:1], f"c{trial}a", f"c{trial}b"]
        vms = [{"name": n, "ip": f"10.10.0.{10 + int(n[1:-1]) * 2 + (n[-1] == 'b')}"} for n in names]
        write_lab(lab, lab_data(fake_pve, vms, name="chaos"))
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        line = rng.randint(1, 24)
        log = tmp_path / f"apply{trial}.log"
        if runs.kill_at_line(line, sig, log):
            tally.killed[sig.name] += 1
        tally.trials += 1
        rerun = run_cli("apply", "--yes", "--prune", lab=lab)
        assert rerun.exit_code == 0, f"{tally.line()}\ntrial {trial}: {rerun.output}\n{log.read_text()}"
        check(tally, fake_pve, "chaos", set(names), None, log.read_text())
    runs.close()
    report(tally, capsys)
    assert not runs.hung, tally.line() + "\nruns that did not end:\n" + "\n".join(runs.hung)
    assert not tally.problems, tally.line() + "\n" + "\n".join(tally.problems)
    assert tally.converged == tally.trials >= 20 and sum(tally.killed.values()) >= 15, tally.line()


@pytest.mark.fake_pve(**FAST)
def test_interrupted_replacements_never_run_two_vms_on_one_static_address(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Template version bumps (blue/green replacements: a static IP, a static IP with a data disk, DHCP), each
    apply killed at a random progress line, then run again. The monitor must record no moment with two running
    VMs on one static address; db's data disk is the only one throughout (moved, never copied, lost or left behind)."""
    rng = random.Random(SEED + 1)
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    env = homelab_env(tmp_path / "state", fake_pve.token_secret)
    vms = [
        {"name": "web", "ip": "10.10.0.10"},
        {"name": "db", "ip": "10.10.0.11", "data_disk": "1G"},
        {"name": "dyn", "ip": "dhcp"},
    ]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms, name="chaos"))
    monkeypatch.setenv("HOMELAB_LAB", str(lab))
    assert run_cli("apply", "--yes").exit_code == 0
    fake_pve.call("monitor_clear")
    tally = Tally("replace")
    runs = HeldRuns(tmp_path, env, ["--lab", str(lab), "apply", "--yes"])
    for trial in range(20):
        version = f"2026112012{trial:02d}"
        add_template_version(fake_pve, vmid=9001 + trial, version=version, lab="chaos")
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        line = rng.randint(4, 30)  # the plan's 4 lines, then the work
        log = tmp_path / f"replace{trial}.log"
        if runs.kill_at_line(line, sig, log):
            tally.killed[sig.name] += 1
        tally.trials += 1
        rerun = run_cli("apply", "--yes", lab=lab)
        overlaps = fake_pve.call("monitor_overlaps")
        fake_pve.call("monitor_clear")
        tally.overlaps += len(overlaps)
        if overlaps:
            tally.problems.append(f"trial {trial}: two running VMs on one address: {overlaps}\n{log.read_text()}")
        assert rerun.exit_code == 0, f"{tally.line()}\ntrial {trial}: {rerun.output}\n{log.read_text()}"
        check(tally, fake_pve, "chaos", {"web", "db", "dyn"}, version, log.read_text())
        disks = data_disks(fake_pve)
        if [vm for vm, _ in disks] != ["db"]:
            tally.problems.append(f"trial {trial}: data disks {disks}, not db's one")
    runs.close()
    report(tally, capsys)
    assert not runs.hung, tally.line() + "\nruns that did not end:\n" + "\n".join(runs.hung)
    assert not tally.problems, tally.line() + "\n" + "\n".join(tally.problems)
    assert tally.overlaps == 0 and tally.converged == tally.trials, tally.line()
    assert sum(tally.killed.values()) >= 15, tally.line()


@pytest.mark.fake_pve(time_scale=0, guests=[])
def test_the_monitor_sees_two_running_vms_on_one_static_address(fake_pve: FakeProxmox, pve_api: Any) -> None:
    """The monitor itself can fail a test: two VMs with one static IP started one after the other are recorded
    once, with both vmids; a DHCP VM and a stopped one are not."""
    for vmid, ip in ((201, "ip=10.10.0.50/24,gw=10.10.0.1"), (202, "ip=10.10.0.50/24"), (203, "ip=dhcp")):
        fake_pve.call("add_vm", vmid=vmid, name=f"m{vmid}", config={"ipconfig0": ip})
    for vmid in (201, 203):
        pve_api.nodes("pve1").qemu(vmid).status.start.post()
    assert fake_pve.call("monitor_overlaps") == []
    pve_api.nodes("pve1").qemu(202).status.start.post()
    pve_api.nodes("pve1").qemu(202).status.stop.post()
    pve_api.nodes("pve1").qemu(202).status.start.post()
    overlaps = fake_pve.call("monitor_overlaps")
    assert [(o["address"], o["vmids"]) for o in overlaps] == [("10.10.0.50", [201, 202])] * 2
    assert static_address({"ipconfig0": "ip=dhcp"}) is None
    fake_pve.call("monitor_clear")
    assert fake_pve.call("monitor_overlaps") == []
    json.dumps(overlaps)  # plain data over the control socket
