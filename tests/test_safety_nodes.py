"""`plan` checks that every node the lab names exists and is online: one line naming the lab file's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab


@pytest.mark.fake_pve(time_scale=0, agent_delay=0, nodes=["pve2"])
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_node_that_is_missing_or_offline_is_named_with_its_key_and_line(
    tmp_path: Path, fake_pve: FakeProxmox, command: str
) -> None:
    fake_pve.call("set", nodes={"pve1": {"online": True}, "pve2": {"online": False}})
    vms = [{"name": "web", "ip": "10.10.0.10"}, {"name": "db", "ip": "10.10.0.11", "node": "pve9"}]
    vms.append({"name": "app", "ip": "10.10.0.12", "node": "pve2"})
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms))
    lines = lab.read_text().splitlines()
    db_node = next(n for n, line in enumerate(lines, 1) if "node: pve9" in line)
    app_node = next(n for n, line in enumerate(lines, 1) if "node: pve2" in line)
    fake_pve.requests(clear=True)
    result = run_cli(
        command,
        *(["--yes"] if command == "apply" else []),
        lab=lab,
        env={"HOMELAB_PROXMOX_TOKEN": fake_pve.token_secret},
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"{lab}:{db_node}: vms[1].node: node 'pve9' is not in the cluster (its nodes: pve1, pve2)",
        f"{lab}:{app_node}: vms[2].node: node 'pve2' is offline, not online: bring it up or move its VMs",
    ]
    assert not [r for r in fake_pve.requests() if r[0] != "GET"]
