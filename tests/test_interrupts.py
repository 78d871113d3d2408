"""Ctrl-C while worker threads run (homelab.interrupts): a flag for the workers, the KeyboardInterrupt after.

The last test is the one that caught the bug: a KeyboardInterrupt raised inside the main thread's wait for the
chains can leave a future's lock taken, and `homelab apply` then hangs for good after its chains have stopped
(seen once in the kill-chaos test, in CI). It sends SIGINT at random moments into `apply_plan` over thousands of
short chains, where the main thread spends most of its time taking and releasing those locks; with the old
`except KeyboardInterrupt` around the wait it hung in every run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from homelab.adapters.ansible import AnsibleRunner, RunRequest
from homelab.adapters.proxmox.api import PveApi, RetryPolicy
from homelab.interrupts import deferring_interrupts

ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_inside_the_block_sets_the_events_and_raises_only_when_it_is_left() -> None:
    workers_stop, api_stops = threading.Event(), threading.Event()
    after_the_signal = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), deferring_interrupts(workers_stop, api_stops):
        os.kill(os.getpid(), signal.SIGINT)
        after_the_signal.append(workers_stop.wait(5) and api_stops.is_set())
    assert after_the_signal == [True]  # the block went on to its end, and saw the events set
    assert signal.getsignal(signal.SIGINT) is before


def test_an_error_after_ctrl_c_comes_out_as_the_keyboard_interrupt_it_follows() -> None:
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt) as caught, deferring_interrupts(stop):
        os.kill(os.getpid(), signal.SIGINT)
        stop.wait(5)
        raise RuntimeError("a worker stopped by the event")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_without_ctrl_c_the_block_and_its_errors_are_untouched() -> None:
    stop = threading.Event()
    with deferring_interrupts(stop):
        pass
    with pytest.raises(ValueError), deferring_interrupts(stop):
        raise ValueError("its own")
    assert not stop.is_set()


def test_where_sigint_is_ignored_it_stays_ignored() -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferring_interrupts(stop):
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert not stop.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_the_block_runs_as_it_is() -> None:
    seen = []

    def worker() -> None:
        with deferring_interrupts(threading.Event()):
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


STRESS = textwrap.dedent(
    """
    import faulthandler, random, signal, sys, threading, time
    from homelab.adapters.proxmox.api import PveApi
    from homelab.provision import executor
    from homelab.provision.actions import Plan, Unchanged
    from homelab.provision.outcomes import VmOutcome
    from tests.harness.labs import make_lab

    def chain(self, vm, actions):  # chain vmN takes N * 50 µs: one ends every 50 µs or so, 4 at a time
        end = time.monotonic() + int(vm[2:]) * 0.00005
        while time.monotonic() < end and not self.cancel.is_set():
            time.sleep(0.0002)
        return VmOutcome(vm, ok=not self.cancel.is_set())

    executor.Executor.run_chain = chain
    executor.MAX_THREADS = 4  # the main thread keeps the GIL more: most of its time goes to the futures' locks
    lab = make_lab()
    plan = Plan(tuple(Unchanged(vm=f"vm{i}", vmid=1000 + i, node="pve1") for i in range(2000)))
    main = threading.main_thread().ident
    ended = {"interrupted": 0, "finished": 0}
    for trial in range(int(sys.argv[1])):
        # A trial that does not end within 20 s prints every thread's stack and exits 1.
        faulthandler.dump_traceback_later(20, exit=True)
        timer = threading.Timer(random.uniform(0, 0.1), signal.pthread_kill, (main, signal.SIGINT))
        try:
            timer.start()
            executor.apply_plan(PveApi(transport=None), lab, plan, frozenset())
            ended["finished"] += 1
            timer.join()  # a late signal lands in the except below, not in the next trial
        except KeyboardInterrupt:
            ended["interrupted"] += 1
            timer.join()
        faulthandler.cancel_dump_traceback_later()
    print(ended)
    """
)


@pytest.mark.integration
def test_ctrl_c_at_any_moment_of_an_apply_ends_it_and_never_hangs() -> None:
    """30 applies of 2000 chains each, SIGINT at a random moment: every one ends (interrupted or finished).
    With the old handling all of six runs hung, most within the first ten applies."""
    run = subprocess.run(
        [sys.executable, "-c", STRESS, "30"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert run.returncode == 0, f"an apply did not end after Ctrl-C:\n{run.stdout}\n{run.stderr[-6000:]}"
    assert "'interrupted': " in run.stdout and "'interrupted': 0," not in run.stdout, run.stdout


def test_a_signal_with_a_python_handler_of_its_own_reaches_that_handler_when_the_block_is_left() -> None:
    """`homelab demo` turns SIGTERM into KeyboardInterrupt: within the block it is deferred like Ctrl-C, and its
    own handler gets it, once, on the way out."""
    stop, delivered = threading.Event(), []

    def own(signum: int, frame: object) -> None:
        delivered.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with pytest.raises(KeyboardInterrupt), deferring_interrupts(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(5) and delivered == []
        assert delivered == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_during_many_reads_sends_none_of_those_not_yet_sent_and_ends_in_keyboard_interrupt() -> None:
    sent: list[str] = []

    class Transport:
        def request(self, method: str, path: str, params: dict[str, Any]) -> Any:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first read is out
            assert api.cancel.wait(5)  # the main thread's handler has seen it
            return {"path": path}

    api = PveApi(Transport(), RetryPolicy(attempts=1, sleep=lambda _: None))
    with pytest.raises(KeyboardInterrupt):
        api.get_many(["/a", "/b", "/c"], readers=1)
    assert sent == ["/a"]


def test_ctrl_c_during_an_ansible_run_cancels_it_through_its_callback_then_interrupts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ansible-runner, given no cancel callback, installs SIGINT and SIGTERM handlers that only set a flag and
    leaves them, so a later Ctrl-C (at the next question) did nothing. homelab passes its own: Ctrl-C ends the
    playbook through it, and comes out as KeyboardInterrupt once ansible-runner has returned."""
    ansible_runner = pytest.importorskip("ansible_runner")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen: dict[str, Any] = {}

    def run(**kwargs: Any) -> Any:
        cancelled = kwargs["cancel_callback"]
        os.kill(os.getpid(), signal.SIGINT)
        seen["cancelled"] = any(cancelled() or threading.Event().wait(0.01) for _ in range(500))
        return SimpleNamespace(status="canceled", rc=254, stats={}, stdout=None)

    monkeypatch.setattr(ansible_runner, "run", run)
    request = RunRequest(playbook=tmp_path / "site.yml", inventory=tmp_path / "hosts.yml", workdir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        AnsibleRunner._run(request, {}, lambda event: True)
    assert seen == {"cancelled": True}
    assert {sig: signal.getsignal(sig) for sig in before} == before
