"""One run per lab at a time: the lab's lock, `--no-wait`, races between two runs, and another machine's run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.state.lock import LabBusy, lab_lock, lock_file, read_holder
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab
from tests.harness.runs import homelab_env, start_at_barrier, wait_all, wait_ready


def test_a_second_holder_is_refused_with_who_holds_it() -> None:
    with lab_lock("lab1", "homelab apply") as me:
        with pytest.raises(LabBusy) as refused, lab_lock("lab1", "homelab destroy", wait=False):
            pytest.fail("two holders at once")
        assert f"pid {me.pid}" in str(refused.value) and "homelab apply" in str(refused.value)
        assert refused.value.exit_code == 2
        with lab_lock("other-lab", "homelab apply", wait=False):
            pass  # another lab is not busy
    with lab_lock("lab1", "homelab destroy", wait=False):
        pass  # free again once the first is done


def test_a_waiting_run_says_once_who_it_waits_for_and_then_runs() -> None:
    held, lines, order = threading.Event(), [], []

    def first() -> None:
        with lab_lock("lab1", "homelab up"):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with lab_lock("lab1", "homelab apply", say=lines.append):
        order.append("second runs")
    thread.join()
    assert order == ["first done", "second runs"]
    assert len(lines) == 1 and "homelab up" in lines[0] and "waiting" in lines[0]


def test_the_lock_of_a_killed_process_is_free_and_named_while_held(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from homelab.state.lock import lab_lock\n"
        "with lab_lock('lab1', 'homelab template build'):\n"
        "    print('HELD', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        recorded = read_holder(lock_file("lab1"))
        assert recorded is not None and recorded.pid == holder.pid and recorded.command == "homelab template build"
        with pytest.raises(LabBusy), lab_lock("lab1", "homelab apply", wait=False):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel releases the lock
        holder.wait()
    with lab_lock("lab1", "homelab apply", wait=False) as me:
        assert read_holder(lock_file("lab1")) == me


@pytest.mark.parametrize(
    "command", [["apply"], ["up"], ["destroy"], ["template", "build"], ["template", "prune"], ["deploy"]]
)
def test_changing_commands_refuse_with_no_wait_while_the_lab_is_busy(tmp_path: Path, command: list[str]) -> None:
    lab = write_lab(tmp_path / "lab.yml", lab_data(None, [{"name": "web", "ip": "10.10.0.10"}]))
    with lab_lock("test", "homelab up (the other run)"):
        result = run_cli(*command, "--yes", "--no-wait", lab=lab)
    assert result.exit_code == 2, result.output
    assert "lab test is busy: homelab up (the other run)" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_keys_rotate_takes_the_lock_too(tmp_path: Path) -> None:
    lab = write_lab(tmp_path / "lab.yml", lab_data(None, [{"name": "web", "ip": "10.10.0.10"}]))
    with lab_lock("test", "homelab apply"):
        result = run_cli("keys", "rotate", "--yes", "--no-wait", lab=lab)
    assert result.exit_code == 2 and "lab test is busy" in result.stderr


# An apply takes a few seconds (the agent answers 60 PVE s after start, 3 s here), so the two runs overlap even
# on a loaded machine.
@pytest.mark.fake_pve(time_scale=0.05, agent_delay=60, latency=0.01)
def test_two_applies_started_together_make_no_duplicates(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    """Several trials: two `homelab apply --yes` released by one barrier; one runs, the other waits (or, with
    --no-wait, refuses with exit 2); every VM exists once."""
    env = homelab_env(tmp_path / "state", fake_pve.token_secret)
    for trial, mode in enumerate(["wait", "no-wait", "wait", "no-wait"]):
        names = [f"t{trial}vm{i}" for i in range(3)]
        vms = [{"name": n, "ip": f"10.10.0.{10 + 10 * trial + i}"} for i, n in enumerate(names)]
        lab = write_lab(tmp_path / f"lab{trial}.yml", lab_data(fake_pve, vms, name=f"race{trial}"))
        barrier = tmp_path / f"go{trial}"
        args = ["--lab", str(lab), "apply", "--yes", *(["--no-wait"] if mode == "no-wait" else [])]
        logs = [tmp_path / f"run{trial}-{n}.log" for n in (1, 2)]
        runs = [start_at_barrier(barrier, env, *args, log=log) for log in logs]
        wait_ready(barrier, 2)  # both have imported homelab and spin on the barrier
        barrier.touch()
        codes = wait_all(runs)
        outputs = [log.read_text() for log in logs]
        made = Counter(v["name"] for v in fake_pve.vms() if v["name"] in names)
        assert made == Counter(names), (made, outputs)
        busy = [out for out in outputs if f"lab race{trial} is busy" in out]
        assert len(busy) == 1, outputs  # exactly one of them met the other
        if mode == "wait":
            assert codes == [0, 0], outputs
        else:
            assert sorted(codes) == [0, 2], outputs
        assert all("Traceback" not in out for out in outputs), outputs


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
def test_a_run_from_another_machine_stops_at_the_first_ones_work_in_progress(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local lock does not reach another machine: the plan sees the other run's clone (a lab VM locked
    'clone') and refuses before changing anything."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "db", "ip": "10.10.0.11"}]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    (web,) = [v for v in fake_pve.vms() if v["name"] == "web"]
    fake_pve.call("vm_set", vmid=web["vmid"], lock="clone")  # the other machine's clone is under way
    # the second machine has the lab's admin key too (else it stops earlier, at the key it lacks)
    shutil.copytree(tmp_path / "state" / "test" / "ssh", tmp_path / "machine2" / "test" / "ssh")
    monkeypatch.setenv("HOMELAB_STATE_DIR", str(tmp_path / "machine2"))
    fake_pve.requests(clear=True)
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 1
    assert f"VM {web['vmid']} is locked (clone): another homelab run" in result.output
    assert not [r for r in fake_pve.requests() if r[0] != "GET"]  # nothing was changed
    plan = run_cli("plan", lab=lab)
    assert plan.exit_code == 3 and "locked (clone)" in plan.output
