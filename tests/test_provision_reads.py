"""A no-op plan reads each VM's config once, through ``settings.api_readers`` parallel readers, and writes nothing.

The fake counts the requests it serves at once (demo/fake_concurrency.py), so the bound is checked where it
matters, on the server; a latency on every answer makes the readers overlap as they would on a LAN.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.lab import load_lab
from homelab.provision.plan import Unchanged
from homelab.provision.service import carry_out, make_plan
from tests.harness.labs import lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = 12
CONFIG = re.compile(r"^/api2/json/nodes/pve1/qemu/(\d+)/config$")
# Besides one config per VM: the guest list, the node check and the release (for version-gated settings).
FIXED = {"/api2/json/cluster/resources", "/api2/json/nodes", "/api2/json/version"}


def noop_lab(tmp_path: Path, fake: FakeProxmox, readers: int) -> Path:
    vms = [{"name": f"vm{i:02d}", "ip": f"10.10.0.{10 + i}", "memory": 512} for i in range(VMS)]
    return write_lab(tmp_path / f"lab{readers}.yml", lab_data(fake, vms, settings={"api_readers": readers}))


@pytest.mark.parametrize("readers", [1, 4])
def test_a_noop_plan_reads_each_config_once_with_the_readers_it_is_given(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = load_lab(noop_lab(tmp_path, fake_pve, readers))
    assert carry_out(make_plan(lab)).ok
    fake_pve.call("set", time_scale=1.0)
    fake_pve.call("slow_network", latency=0.05)  # PVE seconds, real at time_scale 1
    fake_pve.requests(clear=True)
    fake_pve.call("concurrency", clear=True)

    planned = make_plan(lab)

    served = fake_pve.requests()
    assert [a for a in planned.plan.actions if not isinstance(a, Unchanged)] == []
    assert [r for r in served if r[0] != "GET"] == []
    configs = Counter(int(m.group(1)) for _, path in served if (m := CONFIG.match(path)))
    lab_vmids = {live.vmid for live in planned.facts.managed}
    assert len(lab_vmids) == VMS and configs == Counter(lab_vmids)  # each VM's config, once
    others = [path for _, path in served if not CONFIG.match(path)]
    assert sorted(others) == sorted(FIXED)  # 1 + N reads of the cluster, 2 fixed checks, nothing else
    # the readers overlap up to the setting and never past it
    assert fake_pve.call("concurrency") == readers


def test_api_readers_is_a_bounded_setting(tmp_path: Path) -> None:
    from homelab.errors import LabFileError
    from tests.harness.labs import make_lab

    assert make_lab().settings.api_readers == 64  # the documented default
    with pytest.raises(LabFileError, match=r"settings\.api_readers"):
        make_lab(settings={"api_readers": 0})
