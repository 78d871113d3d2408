"""The fake Proxmox as a two-node cluster: it refuses what qemu-server refuses (cross-node clones from local
storage, migrating a running VM offline, a linked clone leaving its base), and its vmids are cluster-wide."""

from __future__ import annotations

import time
from typing import Any

import pytest
from proxmoxer.core import ResourceException

from homelab.demo.launcher import FakeProxmox

pytestmark = [pytest.mark.integration]

SHARED = {"type": "nfs", "active": 1, "content": "images", "shared": 1, "server": "nas", "export": "/pve"}


def template(vmid: int, storage: str, node: str = "pve1") -> dict[str, Any]:
    disk = f"{storage}:base-{vmid}-disk-0" if storage == "local-lvm" else f"{storage}:{vmid}/base-{vmid}-disk-0.raw"
    return {
        "vmid": vmid,
        "name": f"tpl-{vmid}",
        "node": node,
        "template": True,
        "config": {
            "scsi0": disk + ",size=8G",
            "ide2": f"{storage}:vm-{vmid}-cloudinit,media=cdrom",
            "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0",
        },
    }


CLUSTER = dict(nodes=["pve1", "pve2"], storages={"shared": SHARED}, guests=[template(9000, "local-lvm")])


def wait(api: Any, node: str, upid: str) -> dict[str, Any]:
    for _ in range(200):
        status: dict[str, Any] = api.nodes(node).tasks(upid).status.get()
        if status["status"] == "stopped":
            return status
        time.sleep(0.02)
    raise AssertionError("task did not stop")


def where(fake: FakeProxmox, vmid: int) -> str | None:
    return next((vm["node"] for vm in fake.vms() if vm["vmid"] == vmid), None)


@pytest.mark.fake_pve(**CLUSTER)
def test_a_clone_to_another_node_from_local_storage_is_refused_as_pve_refuses_it(
    fake_pve: FakeProxmox, pve_api: Any
) -> None:
    clone = pve_api.nodes("pve1").qemu(9000).clone
    for params in ({}, {"full": 1}, {"full": 1, "storage": "shared"}):
        with pytest.raises(ResourceException, match=r"can't clone VM to node 'pve2' \(VM uses local storage\)"):
            clone.post(newid=101, target="pve2", **params)
    with pytest.raises(ResourceException, match="can't clone to non-shared storage 'local-lvm'"):
        clone.post(newid=101, target="pve2", full=1, storage="local-lvm")
    assert where(fake_pve, 101) is None
    # On its own node the clone works, and target naming that node is no move at all.
    assert wait(pve_api, "pve1", clone.post(newid=101, target="pve1"))["exitstatus"] == "OK"
    assert where(fake_pve, 101) == "pve1"


@pytest.mark.fake_pve(nodes=["pve1", "pve2"], storages={"shared": SHARED}, guests=[template(9100, "shared")])
def test_a_template_on_shared_storage_clones_straight_to_another_node(fake_pve: FakeProxmox, pve_api: Any) -> None:
    upid = pve_api.nodes("pve1").qemu(9100).clone.post(newid=101, target="pve2")
    assert wait(pve_api, "pve1", upid)["exitstatus"] == "OK"
    assert where(fake_pve, 101) == "pve2"


@pytest.mark.fake_pve(**CLUSTER)
def test_offline_migration_moves_a_full_clone_but_not_a_linked_one_nor_a_running_vm(
    fake_pve: FakeProxmox, pve_api: Any
) -> None:
    pve1 = pve_api.nodes("pve1").qemu
    wait(pve_api, "pve1", pve1(9000).clone.post(newid=101, full=1))
    wait(pve_api, "pve1", pve1(9000).clone.post(newid=102))  # linked

    with pytest.raises(ResourceException, match="target is local node"):
        pve1(101).migrate.post(target="pve1")
    status = wait(pve_api, "pve1", pve1(102).migrate.post(target="pve2"))
    assert status["exitstatus"] == "migration aborted" and where(fake_pve, 102) == "pve1"
    log = "\n".join(line["t"] for line in pve_api.nodes("pve1").tasks(status["upid"]).log.get())
    assert "as it's a clone of 'base-9000-disk-0'" in log

    wait(pve_api, "pve1", pve1(101).status.start.post())
    with pytest.raises(ResourceException, match="can't migrate running VM without --online"):
        pve1(101).migrate.post(target="pve2")
    wait(pve_api, "pve1", pve1(101).status.stop.post())

    assert wait(pve_api, "pve1", pve1(101).migrate.post(target="pve2"))["exitstatus"] == "OK"
    assert where(fake_pve, 101) == "pve2"
    config = pve_api.nodes("pve2").qemu(101).config.get()
    assert config["scsi0"].startswith("local-lvm:vm-101-disk-")
    with pytest.raises(ResourceException, match="does not exist"):
        pve1(101).config.get()
    # The template's base now has a linked clone: it stays where it is.
    status = wait(pve_api, "pve1", pve1(9000).migrate.post(target="pve2"))
    assert status["exitstatus"] == "migration aborted"


@pytest.mark.fake_pve(**CLUSTER)
def test_a_vmid_taken_on_another_node_fails_a_clone_inside_its_task(fake_pve: FakeProxmox, pve_api: Any) -> None:
    fake_pve.call("add_vm", vmid=150, name="theirs", node="pve2")
    assert pve_api.cluster.nextid.get() == "100"
    with pytest.raises(ResourceException, match="VM 150 already exists"):
        pve_api.cluster.nextid.get(vmid=150)
    assert pve_api.cluster.nextid.get(vmid=151) == "151"

    upid = pve_api.nodes("pve1").qemu(9000).clone.post(newid=150, full=1)
    status = wait(pve_api, "pve1", upid)
    assert "qemu-server/150.conf' failed: File exists" in status["exitstatus"]
    assert where(fake_pve, 150) == "pve2" and [vm["name"] for vm in fake_pve.vms() if vm["vmid"] == 150] == ["theirs"]
    # A create checks the whole cluster before it starts, as PVE does.
    with pytest.raises(ResourceException, match="VM 150 already exists on node 'pve2'"):
        pve_api.nodes("pve1").qemu.post(vmid=150, name="mine")
