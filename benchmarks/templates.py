"""Build time and API calls of each template path against the fake Proxmox. Run on demand:

    python -m benchmarks.templates [--rounds N] [--packer /usr/bin/packer]

Prints, per path, the wall time of a whole `build_template` (facts, plan, build, finding the new version),
homelab's own API calls (PveApi.calls) and every request the fake served (which includes Packer's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from homelab.adapters.proxmox.connect import connect
from homelab.demo.launcher import start_fake_proxmox
from homelab.lab.loader import parse_lab
from homelab.templates.build import build_template
from homelab.templates.packer import PackerSettings

IMAGE = {"url": "https://images.example/debian-12-genericcloud-amd64.qcow2", "checksum": "sha512:" + "ab" * 64}
STORAGES = {
    "local": {
        "type": "dir",
        "active": 1,
        "content": "iso,vztmpl,backup,import",
        "files": ["debian-12.iso"],
        "path": "/var/lib/vz",
    }
}
TEMPLATES = [
    {"name": "cloud", "image": IMAGE, "vmid_range": [9100, 9199]},
    {
        "name": "clone",
        "builder": "packer",
        "vmid_range": [9200, 9299],
        "packer": {"source": "clone", "clone_vm": "cloud"},
    },
    {
        "name": "iso",
        "builder": "packer",
        "vmid_range": [9300, 9399],
        "packer": {"source": "iso", "iso_file": "local:iso/debian-12.iso"},
    },
]


def measure(fake: Any, api: Any, lab: Any, name: str, packer: PackerSettings) -> tuple[float, int, int]:
    calls = sum(api.calls.values())
    fake.requests(clear=True)
    started = time.monotonic()
    build_template(api, lab, name, packer=packer, now=datetime.now(UTC))
    seconds = time.monotonic() - started
    return seconds, sum(api.calls.values()) - calls, len(fake.requests())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--packer", default=shutil.which("packer"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HOMELAB_STATE_DIR"] = str(Path(tmp) / "state")
        fake = start_fake_proxmox(Path(tmp) / "fake", storages=STORAGES)
        try:
            data = {
                "name": "bench",
                "proxmox": {"url": fake.url, "node": "pve1", "user": fake.user, "ca_bundle": fake.cafile},
                "network": {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1"},
                "templates": TEMPLATES,
            }
            lab = parse_lab(yaml.safe_dump(data))
            os.environ["HOMELAB_PROXMOX_PASSWORD"] = fake.password
            api = connect(lab)
            packer = PackerSettings(packer=args.packer or "packer", communicator="none")
            paths = [("cloud-image, first build (download)", "cloud")]
            paths += [("cloud-image, rebuild (image reused)", "cloud")] * args.rounds
            if args.packer:
                paths += [("packer proxmox-clone", "clone")] * args.rounds
                paths += [("packer proxmox-iso", "iso")] * args.rounds
            results: dict[str, list[tuple[float, int, int]]] = {}
            for label, name in paths:
                results.setdefault(label, []).append(measure(fake, api, lab, name, packer))
        finally:
            fake.stop()
    print(f"{'path':<38} {'runs':>4} {'median s':>9} {'min s':>7} {'homelab API calls':>18} {'all requests':>13}")
    for label, runs in results.items():
        times = [r[0] for r in runs]
        print(
            f"{label:<38} {len(runs):>4} {statistics.median(times):>9.3f} {min(times):>7.3f} "
            f"{statistics.median(r[1] for r in runs):>18g} {statistics.median(r[2] for r in runs):>13g}"
        )
    if not args.packer:
        print("packer is not installed: the Packer paths were skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
