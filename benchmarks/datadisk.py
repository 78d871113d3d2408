"""Benchmark: how long a replacement takes when the VM has a data disk, against the same without one.

    python benchmarks/datadisk.py [--runs 3] [--time-scale 0.05]

Each run: a fresh fake Proxmox (the provisioning benchmark's PVE-like durations, scaled by time_scale), one VM
with a static IP (with or without ``data_disk: 100G``) applied, then a new template version; the measured
time is the apply that replaces the VM (plan + carry out), until the new VM reports its address. With a data
disk the replacement adds a stop of the old VM, the disk reassignment (a rename, no copy) and a start of the
new VM after it, instead of starting the new VM while it is built. Prints medians and spreads in real seconds
and in PVE seconds (real / time_scale).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make homelab and the test harness importable
    sys.path.insert(0, str(REPO))

from benchmarks.provision import AGENT_DELAY, LATENCY, START_SECS  # noqa: E402
from homelab.demo.launcher import start_fake_proxmox  # noqa: E402
from homelab.lab import load_lab  # noqa: E402
from homelab.provision.service import carry_out, make_plan  # noqa: E402
from tests.harness.labs import lab_data, write_lab  # noqa: E402

NEW_VERSION: dict[str, Any] = {
    "vmid": 9001,
    "name": "debian-docker-202611201200",
    "template": True,
    "config": {
        "agent": "1",
        "scsi0": "local-lvm:base-9001-disk-0,size=8G",
        "tags": "guest-agent;homelab-template;homelab-bench",
    },
}


def replace_once(workdir: Path, time_scale: float, data_disk: bool) -> float:
    """Seconds the replacing apply took."""
    fake = start_fake_proxmox(
        workdir, time_scale=time_scale, start_secs=START_SECS, agent_delay=AGENT_DELAY, latency=LATENCY
    )
    try:
        os.environ["HOMELAB_PROXMOX_TOKEN"] = fake.token_secret
        vm: dict[str, Any] = {"name": "media", "ip": "10.10.0.20", "disk": "8G"}
        if data_disk:
            vm["data_disk"] = "100G"
        lab = load_lab(write_lab(workdir / "lab.yml", lab_data(fake, [vm], name="bench")))
        if not carry_out(make_plan(lab)).ok:
            raise SystemExit("the first apply failed")
        fake.call("add_vm", **NEW_VERSION)
        fake.call("agent_disks", add=[NEW_VERSION["vmid"]])  # a version built as homelab builds them: with the agent
        started = time.monotonic()
        planned = make_plan(lab)
        result = carry_out(planned)
        seconds = time.monotonic() - started
        if not result.ok or planned.plan.actions[0].kind != "replace":
            raise SystemExit(f"the replacement failed: {[o.error for o in result.outcomes]}")
        return seconds
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.05)
    args = parser.parse_args(argv)
    rows = {}
    for data_disk in (False, True):
        times = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="homelab-bench-") as tmp:
                times.append(replace_once(Path(tmp), args.time_scale, data_disk))
            print(f"  {'with' if data_disk else 'without'} data disk, run {i + 1}: {times[-1]:.2f} s", flush=True)
        rows[data_disk] = times
    print(f"\nreplacement of one VM (static IP), time_scale {args.time_scale}, {args.runs} runs:")
    for data_disk, times in rows.items():
        med = statistics.median(times)
        print(
            f"  {'with a data disk   ' if data_disk else 'without a data disk'}: median {med:.2f} s "
            f"(spread {min(times):.2f}-{max(times):.2f}), {med / args.time_scale:.0f} PVE s"
        )
    ratio = statistics.median(rows[True]) / statistics.median(rows[False])
    print(f"  ratio with/without: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
