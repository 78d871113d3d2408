"""Benchmark: a no-op plan of many VMs against the fake Proxmox at a LAN-like API latency.

    python benchmarks/noop_plan.py [--vms 500] [--latency 0.05] [--runs 3] [--readers N] [--goal 1.0]

Brings up ``--vms`` VMs once on a fresh fake (instant, no latency), then adds ``--latency`` seconds to every API
answer and times ``make_plan`` (what `homelab plan` does: node check, cluster resources, one config read per VM,
the release) ``--runs`` times. Each run must plan nothing but "unchanged", read at most 1 + N + a fixed few
calls and write nothing. Prints each run, the median and spread, and the median against the goal (seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make homelab and the test harness importable
    sys.path.insert(0, str(REPO))

from homelab.demo.launcher import FakeProxmox, start_fake_proxmox  # noqa: E402
from homelab.lab import load_lab  # noqa: E402
from homelab.lab.models import Lab  # noqa: E402
from homelab.provision.plan import Unchanged  # noqa: E402
from homelab.provision.service import carry_out, make_plan  # noqa: E402
from tests.harness.labs import lab_data, write_lab  # noqa: E402

WRITES = ("POST", "PUT", "DELETE")


def vm_specs(count: int) -> list[dict[str, Any]]:
    """vm001..vmNNN with static addresses in 10.10.0.0/16 (disk 8G = the template's: no resize)."""
    return [
        {"name": f"vm{i:03d}", "cores": 1, "memory": 512, "disk": "8G", "ip": f"10.10.{i // 250 + 1}.{i % 250 + 2}"}
        for i in range(1, count + 1)
    ]


def bring_up(fake: FakeProxmox, workdir: Path, count: int, readers: int | None) -> Lab:
    """Apply ``count`` VMs on the instant fake (the setup, not measured)."""
    os.environ["HOMELAB_PROXMOX_TOKEN"] = fake.token_secret
    data = lab_data(fake, vm_specs(count), name="noop")
    data["network"]["subnet"] = "10.10.0.0/16"
    data["settings"] = {"concurrency": 32, **({"api_readers": readers} if readers else {})}
    lab = load_lab(write_lab(workdir / "noop.yml", data))
    result = carry_out(make_plan(lab), concurrency=32)
    if not result.ok:
        failed = [f"{o.vm}: {o.error}" for o in result.outcomes if not o.ok]
        raise SystemExit(f"setup failed: {'; '.join(failed[:3])}")
    return lab


def one_run(fake: FakeProxmox, lab: Lab) -> tuple[float, int, int, int]:
    """(seconds, reads, writes, unchanged VMs) of one make_plan."""
    fake.requests(clear=True)
    start = time.monotonic()
    planned = make_plan(lab)
    wall = time.monotonic() - start
    served = fake.requests()
    writes = sum(1 for method, _ in served if method in WRITES)
    unchanged = sum(1 for action in planned.plan.actions if isinstance(action, Unchanged))
    return wall, len(served) - writes, writes, unchanged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=500, help="VMs in the lab (default 500)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to each API answer (0.05)")
    parser.add_argument("--runs", type=int, default=3, help="measured plans (default 3)")
    parser.add_argument("--readers", type=int, default=None, help="settings.api_readers (default: the lab default)")
    parser.add_argument("--goal", type=float, default=1.0, help="the goal for the median, seconds (1.0)")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="homelab-noop-"))
    os.environ["HOMELAB_STATE_DIR"] = str(tmp / "state")
    os.environ["HOMELAB_CONFIG_DIR"] = str(tmp / "config")
    ok = True
    try:
        fake = start_fake_proxmox(tmp / "fake", agent_delay=0, cloud_init_secs=0)
        try:
            began = time.monotonic()
            lab = bring_up(fake, tmp, args.vms, args.readers)
            print(f"setup: {args.vms} VMs applied in {time.monotonic() - began:.1f} s (not measured)", file=sys.stderr)
            # latency is in PVE seconds: at time_scale 1 they are real ones
            fake.call("set", time_scale=1.0)
            fake.call("slow_network", latency=args.latency)
            fake.call("concurrency", clear=True)
            walls = []
            for run in range(1, args.runs + 1):
                wall, reads, writes, unchanged = one_run(fake, lab)
                peak = fake.call("concurrency", clear=True)
                walls.append(wall)
                good = writes == 0 and unchanged == args.vms and reads <= 1 + args.vms + 3
                ok = ok and good
                print(
                    f"run {run}: {wall:.3f} s, {reads} reads (N = {args.vms}), {writes} writes, "
                    f"{unchanged} unchanged, at most {peak} requests at once on the fake"
                    + ("" if good else "  <-- NOT A CLEAN NO-OP")
                )
        finally:
            fake.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = statistics.median(walls)
    readers = args.readers or lab.settings.api_readers
    print(
        f"no-op plan of {args.vms} VMs at {args.latency * 1000:g} ms latency, api_readers {readers}: "
        f"median {median:.3f} s (spread {min(walls):.3f}-{max(walls):.3f} s over {len(walls)} runs) "
        f"= {median / args.goal:.2f}x the {args.goal:g} s goal"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
