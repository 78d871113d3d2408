"""Benchmark: bring up N VMs with homelab and with an Ansible playbook against the fake Proxmox.

    python benchmarks/provision.py [--vms 5 20] [--runs 3] [--time-scale 0.05] [--concurrency N] [--wide 20]
                                   [--noop-vms 50] [--skip-ansible]

Every measured run gets a fresh fake Proxmox (homelab.demo.launcher) over HTTPS with the same PVE-like durations
(benchmarks/provision_runs.py), scaled by --time-scale (1.0: real durations; 0.05: 20 PVE s = 1 s here). Per
round, with homelab's default settings unless --concurrency is given:

- one VM alone: the "single VM chain" (clone, config, start, guest agent, cloud-init, host key);
- homelab apply of each N in --vms, to fully ready (every VM's address and host key read);
- benchmarks/ansible/clone20.yml for each N, run by ansible-playbook as a subprocess, verifying TLS with the
  fake's CA: community.proxmox.proxmox_kvm in a loop (clone, update, start), then a loop that waits for each
  VM until cloud-init has finished (boot-finished read through the guest agent, retried every second as
  wait_for sleeps between tries). Both sides end at the same point: every VM booted, cloud-init done. homelab
  also reads each VM's host key; the playbook does not. Ansible's one-second retries are real seconds: at a
  time scale below 1 they are 1/scale PVE seconds, so only the ratio at --time-scale 1 compares fairly;
- optionally homelab at a wide concurrency, and a no-op re-apply of M VMs (writes must be 0).

It prints each round's table, then the ratios over the rounds: median and spread (min-max).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make homelab, the test harness and the runs importable
    sys.path.insert(0, str(REPO))

from benchmarks.provision_runs import (  # noqa: E402
    AGENT_DELAY,
    CLONE_LOCK_SECS,
    CLONE_SECS,
    CLOUD_INIT_SECS,
    LATENCY,
    START_SECS,
    TIME_SCALE,
    Run,
    ansible_apply,
    fake_proxmox,
    homelab_apply,
    noop_reapply,
)

GOAL_CHAIN = 1.1  # N VMs at the defaults within 1.1x one VM's chain
GOAL_ANSIBLE = 5.0  # at least 5x faster than the playbook


def print_settings(scale: float) -> None:
    print(f"Fake Proxmox (fakepve, a fresh server per measured run, HTTPS, TLS verified), time_scale {scale:g}:")
    for name, secs, what in (
        ("clone_secs", CLONE_SECS, "a linked clone's task (no data copied; clones of one template overlap)"),
        ("clone_lock", CLONE_LOCK_SECS, "of it under the storage lock: snapshots one at a time"),
        ("start_secs", START_SECS, "start task of a cloned VM (ends once QEMU runs)"),
        ("agent_delay", AGENT_DELAY, "VM running -> guest agent answers"),
        ("cloud_init", CLOUD_INIT_SECS, "agent up -> cloud-init finished, host key written"),
        ("latency", LATENCY, "added to each API answer"),
    ):
        print(f"  {name:<12}{secs:>6g} PVE s = {secs * scale:7.3f} s here: {what}")
    print()


def print_table(rows: list[Run]) -> None:
    head = f"{'run':<44} {'wall s':>7} {'calls':>6} {'/VM':>6} {'writes':>6} {'peak':>5}  notes"
    print(head)
    print("-" * len(head))
    for run in rows:
        notes = [f"FAILED: {run.error}"] if not run.ok else []
        if run.started_at is not None and run.vms > 1:
            notes.append(f"last VM started at {run.started_at:.1f} s")
        if run.chains and run.vms > 1:
            notes.append(f"chains {min(run.chains):.1f}-{max(run.chains):.1f} s")
        if run.tasks:  # the playbook's tasks (profile_tasks), in order
            notes.append(", ".join(f"{' '.join(name.split()[:2])} {secs:.0f} s" for name, secs in run.tasks.items()))
        peak = "-" if run.peak is None else str(run.peak)
        print(
            f"{run.label:<44} {run.wall:>7.1f} {run.calls:>6} {run.per_vm():>6.1f} {run.writes:>6} {peak:>5}  "
            + "; ".join(notes)
        )
    print("(peak: most disk-loading tasks the fake ran on one node at once; linked clones load no disk)")
    print()


def print_breakdown(run: Run) -> None:
    print(f"API calls per VM by endpoint, {run.label} (served by the fake):")
    for name, count in sorted(run.endpoints().items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count / run.vms:>6.2f}  {name}")
    print()


def lock_floor(n: int, chain: float, scale: float) -> float:
    """The least N VMs can take over one VM's chain (``chain`` seconds, measured) under the fake's model: the other
    N - 1 linked clones each hold the storage lock for clone_lock before the last VM's own chain can begin."""
    return (chain + (n - 1) * CLONE_LOCK_SECS * scale) / chain


def summarize(name: str, values: list[float], goal: Callable[[float], bool] | None, goal_text: str) -> None:
    """One ratio over the rounds: median, spread, every value, and whether the median meets its goal (if any)."""
    if not values:
        print(f"  {name:<52} no successful round")
        return
    median = statistics.median(values)
    each = ", ".join(f"{v:.2f}" for v in values)
    verdict = "" if goal is None else "meets" if goal(median) else "MISSES"
    print(
        f"  {name:<52} median {median:5.2f}x  spread {min(values):.2f}-{max(values):.2f}  ({each})  "
        f"{verdict} {goal_text}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, nargs="+", default=[20], help="VM counts to bring up (default 20)")
    parser.add_argument("--runs", type=int, default=3, help="rounds; ratios are their medians (default 3)")
    parser.add_argument("--time-scale", type=float, default=TIME_SCALE, help="1.0: real durations (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=None, help="homelab's concurrency (default: the lab's)")
    parser.add_argument("--wide", type=int, default=0, help="also homelab at this concurrency (0: skip)")
    parser.add_argument("--noop-vms", type=int, default=0, help="VMs in a no-op re-apply, last round (0: skip)")
    parser.add_argument("--skip-ansible", action="store_true", help="do not run the Ansible playbook")
    args = parser.parse_args(argv)

    total_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="homelab-bench-"))
    os.environ["HOMELAB_STATE_DIR"] = str(tmp / "state")
    os.environ["HOMELAB_CONFIG_DIR"] = str(tmp / "config")
    scale, conc = args.time_scale, args.concurrency
    setting = "default settings" if conc is None else f"concurrency {conc}"
    print_settings(scale)
    sys.stdout.flush()
    chain_ratio: dict[int, list[float]] = {n: [] for n in args.vms}
    ansible_ratio: dict[int, list[float]] = {n: [] for n in args.vms}
    # The most any tool could beat the playbook by: no tool brings N VMs to ready faster than one VM's chain.
    ansible_ceiling: dict[int, list[float]] = {n: [] for n in args.vms}
    floors: dict[int, list[float]] = {n: [] for n in args.vms}
    wide_ratio: dict[int, list[float]] = {n: [] for n in args.vms}
    failed = 0
    last: list[Run] = []

    def measure(rows: list[Run], label: str) -> Callable[..., Run]:
        def run(fn: Callable[..., Run], *call_args: object) -> Run:
            with fake_proxmox(tmp / f"f{len(rows)}", scale) as fake:
                result = fn(fake, *call_args)
            rows.append(result)
            print(f"  {label}: {result.label} {result.wall:.1f} s{'' if result.ok else ' FAILED'}", file=sys.stderr)
            return result

        return run

    try:
        for round_no in range(1, args.runs + 1):
            rows: list[Run] = []
            run = measure(rows, f"round {round_no}")
            chain = run(homelab_apply, tmp, "single VM chain (homelab, 1 VM)", "chain", 1, conc)
            for n in args.vms:
                main_run = run(homelab_apply, tmp, f"homelab apply, {n} VMs, {setting}", f"hl{n}", n, conc)
                if chain.ok and main_run.ok:
                    chain_ratio[n].append(main_run.wall / chain.wall)
                    floors[n].append(lock_floor(n, chain.wall, scale))
                if args.wide:
                    wide = run(
                        homelab_apply, tmp, f"homelab apply, {n} VMs, concurrency {args.wide}", "w", n, args.wide
                    )
                    if chain.ok and wide.ok:
                        wide_ratio[n].append(wide.wall / chain.wall)
                if not args.skip_ansible:
                    ansible = run(ansible_apply, n)
                    if ansible.ok and main_run.ok:
                        ansible_ratio[n].append(ansible.wall / main_run.wall)
                    if ansible.ok and chain.ok:
                        ansible_ceiling[n].append(ansible.wall / chain.wall)
            if args.noop_vms and round_no == args.runs:
                with fake_proxmox(tmp / "noop", scale) as fake:
                    rows.extend(noop_reapply(fake, tmp, args.noop_vms, conc))
            print(f"Round {round_no}")
            print_table(rows)
            sys.stdout.flush()
            failed += sum(1 for r in rows if not r.ok)
            last = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Ratios over {args.runs} round(s), time_scale {scale:g}, homelab at {setting}:")
    for n in args.vms:
        summarize(
            f"{n} VMs fully ready / one VM's chain", chain_ratio[n], lambda m: m <= GOAL_CHAIN, f"<= {GOAL_CHAIN}"
        )
        summarize(f"  floor: the storage lock, {n - 1} more linked clones", floors[n], None, "(one at a time)")
        if args.wide:
            summarize(f"{n} VMs at concurrency {args.wide} / one VM's chain", wide_ratio[n], None, "")
        if not args.skip_ansible:
            summarize(
                f"ansible / homelab, both to ready, {n} VMs",
                ansible_ratio[n],
                lambda m: m >= GOAL_ANSIBLE,
                f">= {GOAL_ANSIBLE:g}",
            )
            summarize(
                f"  ceiling: ansible / one VM's chain, {n} VMs",
                ansible_ceiling[n],
                None,
                "(the most any tool can beat the playbook by)",
            )
    noop = next((r for r in last if r.label.startswith("no-op")), None)
    if noop is not None and noop.ok:
        reads = noop.calls - noop.writes
        print(f"  no-op re-apply of {noop.vms} VMs: {noop.wall:.2f} s, {reads} reads, {noop.writes} writes")
    print()
    for run_row in last:
        if run_row.vms == max(args.vms) and not run_row.label.startswith("no-op"):
            print_breakdown(run_row)
    print(f"(benchmark took {time.monotonic() - total_start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
