"""homelab on a two-node cluster: VMs on another node than their template (migrated from local storage, cloned
straight from shared storage), a pool-scoped token, ciupgrade, and creates whose answers were lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.demo.launcher import FakeProxmox
from homelab.provision.facts import Facts
from homelab.provision.plan import CreateVM, plan
from tests.harness.buildhost import BuildHost
from tests.harness.cli import run_cli
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import lab_data, make_lab, write_lab
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT

SHARED = {"type": "nfs", "active": 1, "content": "images", "shared": 1, "server": "nas", "export": "/pve"}
TWO_NODES: dict[str, Any] = dict(nodes=["pve1", "pve2"], guests=[], storages=LOCAL_WITH_IMPORT)
SHARED_TWO_NODES: dict[str, Any] = dict(TWO_NODES, storages={**LOCAL_WITH_IMPORT, "shared": SHARED})
VMS = [
    {"name": "web", "ip": "10.10.0.10"},
    {"name": "db", "ip": "10.10.0.11", "node": "pve2"},
    {"name": "cache", "ip": "dhcp"},
]
TOKEN = "homelab@pve!lab"
VM_PRIVS = [
    "VM.Allocate",
    "VM.Audit",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Migrate",
    "VM.Monitor",
    "VM.PowerMgmt",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
]
STORAGE_PRIVS = ["Datastore.Audit", "Datastore.AllocateSpace", "Datastore.AllocateTemplate"]
# Rights on the pool and on what a pool cannot hold (storages, the bridge, the nodes), none on /vms. fakepve
# 0.5 wants Sys.Audit and Sys.Modify on / for download-url (PVE 8.4+ also takes Sys.AccessNetwork on the node).
GRANTS = [
    ["/pool/lab", VM_PRIVS],
    ["/storage", STORAGE_PRIVS],
    ["/sdn/zones/localnetwork/vmbr0", ["SDN.Use"]],
    ["/nodes", ["Sys.Audit", "Sys.AccessNetwork"]],
    ["/", ["Sys.Audit", "Sys.Modify"]],
]
POOL_ACL = {TOKEN: GRANTS, TOKEN.split("!")[0]: GRANTS}


def cluster_lab(
    tmp_path: Path, fake: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build: BuildHost, **proxmox: Any
) -> Path:
    """The 3-VM lab whose template is built from a cloud image, baked on ``build`` (the build VM's stand-in)."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake.token_secret)
    data = lab_data(fake, VMS, network=bake_network(build))
    data["proxmox"].update(proxmox)
    data["templates"] = [{"name": "debian-docker", "image": IMAGE}]
    return write_lab(tmp_path / "lab.yml", data)


def posts(fake: FakeProxmox, suffix: str) -> list[str]:
    return [p.removeprefix("/api2/json") for m, p in fake.requests() if m == "POST" and p.endswith(suffix)]


def up_then_plan(lab: Path) -> tuple[str, str]:
    result = run_cli("up", "--no-deploy", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    again = run_cli("plan", lab=lab)
    assert again.exit_code == 0, again.stdout + again.stderr
    return result.stdout, again.stdout


def as_root(fake: FakeProxmox) -> Any:
    """The fake's API as root@pam (who sees everything), to look at what a test's token may not."""
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(fake.host, port=fake.port, user=fake.user, password=fake.password, verify_ssl=fake.cafile)


def lab_vms(fake: FakeProxmox) -> dict[str, dict[str, Any]]:
    return {vm["name"]: vm for vm in fake.vms() if not vm["template"]}


@pytest.mark.integration
@pytest.mark.fake_pve(**TWO_NODES)
def test_up_on_two_nodes_with_local_storage_clones_on_the_templates_node_then_migrates(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build_host: BuildHost
) -> None:
    lab = cluster_lab(tmp_path, fake_pve, monkeypatch, build_host)
    plan = run_cli("plan", lab=lab)
    assert "no version of template" in plan.stdout  # nothing built yet: the VM stage waits for the template

    out, _ = up_then_plan(lab)

    assert "on pve1, then migrate to pve2" in out
    vms = lab_vms(fake_pve)
    assert {name: vm["node"] for name, vm in vms.items()} == {"web": "pve1", "db": "pve2", "cache": "pve1"}
    assert all(vm["status"] == "running" for vm in vms.values())
    db = vms["db"]
    assert posts(fake_pve, "/migrate") == [f"/nodes/pve1/qemu/{db['vmid']}/migrate"]
    # A full clone: a linked clone could not have left its template's node.
    assert db["config"]["scsi0"].startswith(f"local-lvm:vm-{db['vmid']}-disk-")
    assert "/" not in db["config"]["scsi0"].split(",")[0]
    # every clone ran on the template's node (a target would have been refused: local storage)
    template = next(vm for vm in fake_pve.vms() if vm["template"])
    assert set(posts(fake_pve, "/clone")) == {f"/nodes/pve1/qemu/{template['vmid']}/clone"}


@pytest.mark.integration
@pytest.mark.fake_pve(**SHARED_TWO_NODES)
def test_up_on_two_nodes_with_shared_storage_clones_straight_to_the_other_node(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build_host: BuildHost
) -> None:
    lab = cluster_lab(tmp_path, fake_pve, monkeypatch, build_host, storage="shared")
    # Every clone's answer is lost once: the retry of db's, whose clone is already on pve2, fails inside its
    # task (the vmid exists on another node) and must still be recognised as ours.
    fake_pve.call("set", lost_answers=[["POST", "/clone", 3]])
    out, _ = up_then_plan(lab)

    assert "then migrate" not in out
    vms = lab_vms(fake_pve)
    assert {name: vm["node"] for name, vm in vms.items()} == {"web": "pve1", "db": "pve2", "cache": "pve1"}
    assert posts(fake_pve, "/migrate") == []
    assert len(posts(fake_pve, "/clone")) == 6 and len(fake_pve.vms()) == 4
    # linked clones (the lab's default) of the template on the shared storage
    assert vms["db"]["config"]["scsi0"].startswith("shared:")


@pytest.mark.integration
@pytest.mark.fake_pve(**TWO_NODES, token_id=TOKEN, pools={"lab": {}}, acl=POOL_ACL)
def test_a_pool_scoped_token_builds_and_clones_into_the_pool_and_survives_a_hidden_vmid(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build_host: BuildHost
) -> None:
    # Someone else's VM on pve2, outside the pool: this token cannot see it, so only its clone finds out.
    fake_pve.call("add_vm", vmid=101, name="theirs", node="pve2")
    lab = cluster_lab(tmp_path, fake_pve, monkeypatch, build_host, pool="lab")
    up_then_plan(lab)

    members = {m["vmid"] for m in as_root(fake_pve).pools.get(poolid="lab")[0]["members"] if "vmid" in m}
    ours = {vm["vmid"] for vm in fake_pve.vms() if vm["name"] != "theirs"}
    assert members == ours and len(ours) == 4  # the template and the three VMs
    vms = lab_vms(fake_pve)
    assert vms["theirs"]["node"] == "pve2" and 101 not in {vms[n]["vmid"] for n in ("web", "db", "cache")}
    # One clone ran into vmid 101 inside its task and was given a fresh id from /cluster/nextid.
    assert len(posts(fake_pve, "/clone")) == 4
    assert len([p for _, p in fake_pve.requests() if p.endswith("/cluster/nextid")]) == 2


@pytest.mark.integration
@pytest.mark.fake_pve(**TWO_NODES)
def test_ciupgrade_is_off_by_default_and_a_vm_may_turn_it_on(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build_host: BuildHost
) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web"}, {"name": "ci", "ciupgrade": True}], network=bake_network(build_host))
    data["templates"] = [{"name": "debian-docker", "image": IMAGE}]
    lab = write_lab(tmp_path / "lab.yml", data)
    up_then_plan(lab)
    vms = lab_vms(fake_pve)
    assert (str(vms["web"]["config"]["ciupgrade"]), str(vms["ci"]["config"]["ciupgrade"])) == ("0", "1")


@pytest.mark.integration
@pytest.mark.fake_pve(nodes=["pve1", "pve2"], version="8.0.9")
def test_ciupgrade_is_left_alone_before_pve_8_1(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PVE 8.0 cannot build a cloud-image template (doctor refuses it): the fake's existing template version is used
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [{"name": "web"}])
    up_then_plan(write_lab(tmp_path / "lab.yml", data))
    assert "ciupgrade" not in lab_vms(fake_pve)["web"]["config"]


@pytest.mark.integration
@pytest.mark.fake_pve(**TWO_NODES)
def test_creates_whose_answers_were_lost_are_adopted_not_duplicated(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, build_host: BuildHost
) -> None:
    # The template's create and the first clone run, but their answers never arrive; the retries run into them.
    fake_pve.call("set", lost_answers=[["POST", "/nodes/pve1/qemu", 1], ["POST", "/clone", 1]])
    lab = cluster_lab(tmp_path, fake_pve, monkeypatch, build_host)
    out, _ = up_then_plan(lab)

    assert "created though the answer was lost" in out
    templates = [vm for vm in fake_pve.vms() if vm["template"]]
    assert len(templates) == 1
    assert sorted(lab_vms(fake_pve)) == ["cache", "db", "web"]
    assert len(posts(fake_pve, "/nodes/pve1/qemu")) == 2  # the lost create and its retry
    assert len(posts(fake_pve, "/clone")) == 4  # three clones and one retry


def _create_for(node: str, *, shared: bool = False, release: tuple[int, int] | None = (9, 0)) -> CreateVM:
    lab = make_lab(vms=[{"name": "db", "node": node}])
    version = TemplateVersion(9000, "pve1", "debian-docker-202611010930", "202611010930", "debian-docker")
    facts = Facts(
        managed=(),
        unmanaged_namesakes=(),
        templates={"debian-docker": (version,)},
        release=release,
        shared_templates=frozenset({9000} if shared else ()),
    )
    (action,) = plan(lab, facts).actions
    assert isinstance(action, CreateVM)
    return action


def test_the_plan_clones_on_the_templates_node_then_migrates_unless_the_template_is_on_shared_storage() -> None:
    local = _create_for("pve2")
    assert (local.migrate, local.full) == (True, True)  # a linked clone could not leave its base
    assert "full clone of debian-docker-202611010930 on pve1, then migrate to pve2" in local.describe()
    shared = _create_for("pve2", shared=True)
    assert (shared.migrate, shared.full) == (False, False)
    same_node = _create_for("pve1")
    assert (same_node.migrate, same_node.full) == (False, False)


def test_ciupgrade_is_written_only_where_pve_takes_it_from_every_user() -> None:
    assert _create_for("pve1").config["ciupgrade"] == "0"
    assert _create_for("pve1", release=(8, 1)).config["ciupgrade"] == "0"
    assert "ciupgrade" not in _create_for("pve1", release=(8, 0)).config
    assert "ciupgrade" not in _create_for("pve1", release=None).config
