"""Provisioning against the fake Proxmox over HTTPS: plan, apply, destroy, status, under real faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.lab import load_lab
from homelab.provision.service import carry_out, make_plan
from tests.harness.cli import run_cli
from tests.harness.labs import SSH_KEY, lab_data, write_lab

pytestmark = pytest.mark.integration

WRITES = ("POST", "PUT", "DELETE")
VMS = [
    {"name": "web", "cores": 2, "memory": 2048, "disk": "20G", "ip": "10.10.0.10", "tags": ["docker"]},
    {"name": "db", "memory": 4096, "ip": "10.10.0.11"},
    {"name": "cache", "ip": "dhcp"},
]


@pytest.fixture
def lab_file(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    return write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS))


def managed(fake: FakeProxmox, lab: str = "test") -> dict[str, dict[str, Any]]:
    """name -> VM, for the lab's VMs: tagged and marked in the description (fails on duplicates)."""
    found: dict[str, dict[str, Any]] = {}
    for vm in fake.vms():
        if vm["template"] or f'"lab":"{lab}"' not in str(vm["config"].get("description", "")):
            continue
        if f"homelab-{lab}" in str(vm["config"].get("tags", "")).split(";"):
            assert vm["name"] not in found, f"duplicate VM {vm['name']}"
            found[vm["name"]] = vm
    return found


def writes(fake: FakeProxmox) -> list[tuple[str, str]]:
    return [r for r in fake.requests() if r[0] in WRITES]


def test_create_from_empty_then_noop(lab_file: Path, fake_pve: FakeProxmox, tmp_path: Path) -> None:
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 3 and result.stdout.count("+ create") == 3
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stderr
    vms = managed(fake_pve)
    assert sorted(vms) == ["cache", "db", "web"]
    web = vms["web"]
    assert web["status"] == "running" and web["agent"]
    cfg = web["config"]
    assert (cfg["cores"], cfg["memory"]) in (("2", "2048"), (2, 2048))
    assert set(cfg["tags"].split(";")) == {"homelab-test", "docker"}
    assert cfg["ipconfig0"] == "ip=10.10.0.10/24,gw=10.10.0.1"
    admin = tmp_path / "state" / "test" / "ssh" / "id_ed25519"
    assert admin.stat().st_mode & 0o777 == 0o600
    admin_pub = admin.with_suffix(".pub").read_text().strip()
    # the user's key and homelab's own login key, which the later stages use
    assert urllib.parse.unquote(cfg["sshkeys"]).splitlines() == [SSH_KEY, admin_pub]
    assert cfg["ciuser"] == "homelab" and cfg["searchdomain"] == "home.arpa"
    assert "size=20G" in cfg["scsi0"]
    assert '"state":"ready"' in cfg["description"]
    assert str(vms["db"]["config"]["memory"]) == "4096"
    assert "ip=dhcp" in vms["cache"]["config"]["ipconfig0"]
    hosts = json.loads((tmp_path / "state" / "test" / "hosts.json").read_text())["hosts"]
    assert {h["name"]: h["address"] for h in hosts}["web"] == "10.10.0.10"
    assert len(hosts) == 3 and all(h["address"] for h in hosts)
    # host keys are read through the guest agent (the authenticated API), so SSH can pin them
    assert all(h["host_key"].startswith("ssh-ed25519 AAAA") for h in hosts)
    assert len({h["host_key"] for h in hosts}) == 3

    # A second run changes nothing: no write call at all.
    fake_pve.requests(clear=True)
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 0 and result.stdout.count("= ") == 3
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0 and "Nothing to change." in result.stdout
    assert writes(fake_pve) == []
    # and no agent call either: nothing restarted, what the last apply learned still holds
    assert [r for r in fake_pve.requests() if "/agent/" in r[1]] == []

    result = run_cli("status", "--json", lab=lab_file)
    rows = json.loads(result.stdout)
    assert [(r["name"], r["state"], r["matches"]) for r in rows] == [
        ("web", "running", True),
        ("db", "running", True),
        ("cache", "running", True),
    ]


def test_plan_json_and_exit_codes(lab_file: Path) -> None:
    result = run_cli("plan", "--json", lab=lab_file)
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["changes"] == 3 and {a["action"] for a in data["actions"]} == {"create"}


def test_update_in_place_and_grow_disk(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    before = managed(fake_pve)
    data = lab_data(fake_pve, [dict(VMS[0], memory=4096, disk="40G", tags=["docker", "web"]), *VMS[1:]])
    write_lab(lab_file, data)
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 3
    assert (
        "~ update web" in result.stdout
        and "memory: 2048 -> 4096" in result.stdout
        and result.stdout.count("(reboot)") == 1
    )
    assert "~ grow web" in result.stdout and "20G -> 40G" in result.stdout
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    after = managed(fake_pve)
    assert after["web"]["vmid"] == before["web"]["vmid"]
    assert str(after["web"]["config"]["memory"]) == "4096" and "size=40G" in after["web"]["config"]["scsi0"]
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_replace_on_new_template_version(lab_file: Path, fake_pve: FakeProxmox, tmp_path: Path) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    old = {n: v["vmid"] for n, v in managed(fake_pve).items()}
    disk = {"agent": "1", "ostype": "l26"}
    # Newer versions nobody marked, or that another lab built, are never cloned from.
    fake_pve.call(
        "add_vm",
        vmid=9003,
        name="debian-docker-202612010000",
        template=True,
        config=dict(disk, scsi0="local-lvm:base-9003-disk-0,size=8G"),
    )
    fake_pve.call(
        "add_vm",
        vmid=9002,
        name="debian-docker-202612020000",
        template=True,
        config=dict(disk, scsi0="local-lvm:base-9002-disk-0,size=8G", tags="homelab-template;homelab-other"),
    )
    assert run_cli("plan", lab=lab_file).exit_code == 0
    fake_pve.call(
        "add_vm",
        vmid=9001,
        name="debian-docker-202611201200",
        template=True,
        guest_agent=True,  # a version with the agent baked in, as `homelab template build` makes them
        config=dict(disk, scsi0="local-lvm:base-9001-disk-0,size=8G", tags="guest-agent;homelab-template;homelab-test"),
    )
    result = run_cli("plan", "--no-replace", lab=lab_file)
    assert result.exit_code == 3 and result.stdout.count("! cannot apply") == 3
    result = run_cli("apply", "--yes", "--no-replace", lab=lab_file)
    assert result.exit_code == 1 and "nothing was changed" in result.stderr
    result = run_cli("plan", lab=lab_file)
    assert result.stdout.count("± replace") == 3 and "202611010930 -> 202611201200" in result.stdout
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    new = managed(fake_pve)
    assert sorted(new) == sorted(old)
    for name, vm in new.items():
        assert vm["vmid"] != old[name] and vm["status"] == "running"
        assert '"version":"202611201200"' in vm["config"]["description"]
    remaining = {vm["vmid"] for vm in fake_pve.vms()}
    assert not remaining & set(old.values())
    hosts = json.loads((tmp_path / "state" / "test" / "hosts.json").read_text())["hosts"]
    assert {h["name"]: h["address"] for h in hosts}["web"] == "10.10.0.10"
    assert run_cli("plan", lab=lab_file).exit_code == 0


def test_destroy_never_touches_an_unmanaged_namesake(lab_file: Path, fake_pve: FakeProxmox) -> None:
    fake_pve.call("add_vm", vmid=555, name="web", status="running", config={"memory": 1024})
    result = run_cli("plan", lab=lab_file)
    assert "+ create web" in result.stdout  # the namesake is not adopted
    assert "? VM 555 is also named web but is not marked as this lab's: left alone" in result.stdout
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert len(managed(fake_pve)) == 3
    result = run_cli("destroy", lab=lab_file)
    assert result.exit_code == 2 and "pass --yes" in result.stderr and len(managed(fake_pve)) == 3  # nothing happened
    result = run_cli("destroy", "--yes", lab=lab_file)
    assert result.exit_code == 0
    assert managed(fake_pve) == {}
    left = {vm["vmid"]: vm for vm in fake_pve.vms()}
    assert left[555]["status"] == "running" and left[555]["name"] == "web"
    assert 9000 in left  # the template too


def status_rows(lab_file: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (state, address) as `homelab status --json` shows them."""
    result = run_cli("status", "--json", lab=lab_file)
    assert result.exit_code == 0, result.stdout + result.stderr
    return {r["name"]: (r["state"], r["address"]) for r in json.loads(result.stdout)}


def test_status_never_shows_the_address_of_a_vm_that_is_gone(lab_file: Path, tmp_path: Path) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert status_rows(lab_file)["web"] == ("running", "10.10.0.10")
    assert run_cli("destroy", "--yes", lab=lab_file).exit_code == 0
    assert status_rows(lab_file) == {"web": ("absent", None), "db": ("absent", None), "cache": ("absent", None)}
    result = run_cli("status", lab=lab_file)
    assert result.exit_code == 0 and "10.10.0.1" not in result.stdout  # the table too: no address of web or db
    assert json.loads((tmp_path / "state" / "test" / "hosts.json").read_text())["hosts"] == []

    # A record destroy did not clear (written by an older homelab, or kept on another machine) is not shown either.
    hosts_file = tmp_path / "state" / "test" / "hosts.json"
    record = {"name": "web", "address": "10.10.0.10", "user": "homelab", "port": 22, "host_key": None}
    hosts_file.write_text(json.dumps({"hosts": [record]}))
    assert status_rows(lab_file)["web"] == ("absent", None)


def test_status_shows_a_recorded_address_only_for_the_vm_it_was_learned_from(
    lab_file: Path, fake_pve: FakeProxmox, tmp_path: Path
) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    hosts_file = tmp_path / "state" / "test" / "hosts.json"
    recorded = hosts_file.read_text()  # what this machine learned
    old = {name: vm["vmid"] for name, vm in managed(fake_pve).items()}
    assert {h["name"]: h["vmid"] for h in json.loads(recorded)["hosts"]} == old

    # The lab is re-created elsewhere (another machine's state): the VMs exist again, under other vmids.
    assert run_cli("destroy", "--yes", lab=lab_file).exit_code == 0
    for n, vmid in enumerate(sorted(old.values())):
        fake_pve.call("add_vm", vmid=vmid, name=f"someone-else-{n}")  # so the new VMs get other vmids
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    new = {name: vm["vmid"] for name, vm in managed(fake_pve).items()}
    assert not set(new.values()) & set(old.values())
    hosts_file.write_text(recorded)
    rows = status_rows(lab_file)
    assert rows["web"] == ("running", None) and rows["cache"] == ("running", None)

    # A record without a vmid (written before homelab kept one) is shown while its VM exists.
    hosts = json.loads(recorded)["hosts"]
    hosts_file.write_text(json.dumps({"hosts": [{k: v for k, v in h.items() if k != "vmid"} for h in hosts]}))
    assert status_rows(lab_file)["web"] == ("running", "10.10.0.10")


def test_a_tag_alone_does_not_make_a_vm_ours(tmp_path: Path, fake_pve: FakeProxmox, lab_file: Path) -> None:
    """Another lab's VM that carries this lab's tag (tags are free-form) is never changed or deleted."""
    other = lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}], name="prod")
    assert run_cli("apply", "--yes", lab=write_lab(tmp_path / "prod.yml", other)).exit_code == 0
    (prod_web,) = [vm for vm in fake_pve.vms() if not vm["template"]]
    fake_pve.call("vm_set", vmid=prod_web["vmid"], config=dict(prod_web["config"], tags="homelab-prod;homelab-test"))
    write_lab(lab_file, lab_data(fake_pve, []))
    result = run_cli("destroy", "--yes", lab=lab_file)
    assert result.exit_code == 0 and "Nothing to destroy." in result.stdout
    result = run_cli("apply", "--yes", "--prune", lab=lab_file)
    assert result.exit_code == 0 and "remove" not in result.stdout
    assert [vm["vmid"] for vm in fake_pve.vms() if not vm["template"]] == [prod_web["vmid"]]


def test_prune_removes_what_the_file_dropped(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    write_lab(lab_file, lab_data(fake_pve, VMS[:2]))
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 0 and "? cache" in result.stdout  # reported, not a change
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert "cache" in managed(fake_pve)
    result = run_cli("apply", "--yes", "--prune", lab=lab_file)
    assert result.exit_code == 0 and "- remove cache" in result.stdout
    assert sorted(managed(fake_pve)) == ["db", "web"]


def test_nextid_race_between_two_labs(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two applies at once both ask /cluster/nextid and get the same ids; clones collide and choose again.

    Whether the two really ask at once is up to the scheduler (on a loaded machine one may start after the other's
    first clone): up to three trials, each must end without a duplicate, and at least one must have raced."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    raced = False
    for trial in range(3):
        labs = []
        for name in (f"alpha{trial}", f"beta{trial}"):
            vms = [{"name": f"{name}-{i}", "ip": "dhcp"} for i in range(4)]
            labs.append(load_lab(write_lab(tmp_path / f"{name}.yml", lab_data(fake_pve, vms, name=name))))
        planned = [make_plan(lab) for lab in labs]
        results: list[Any] = []
        barrier = threading.Barrier(2)

        def run(p: Any, barrier: threading.Barrier, results: list[Any]) -> None:
            barrier.wait()
            results.append(carry_out(p))

        fake_pve.requests(clear=True)
        threads = [threading.Thread(target=run, args=(p, barrier, results)) for p in planned]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r.ok for r in results), [o.error for r in results for o in r.outcomes]
        vmids = [vm["vmid"] for vm in fake_pve.vms() if not vm["template"]]
        assert len(vmids) == 8 * (trial + 1) == len(set(vmids))
        for lab in labs:
            assert len(managed(fake_pve, lab.name)) == 4
        clones = [r for r in fake_pve.requests() if r[0] == "POST" and r[1].endswith("/clone")]
        if len(clones) > 8:
            raced = True
            break
    assert raced, "the race did not happen in three trials: every clone got a free id at once"


def test_task_error_shows_pve_message(lab_file: Path, fake_pve: FakeProxmox) -> None:
    fake_pve.call("fail", method="POST", suffix="/nodes/{node}/qemu/{vmid}/status/start", error="qemu_exited_code")
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 1
    assert "start of web failed on Proxmox: QEMU exited with code 1" in result.stdout
    fake_pve.call("clear_failures")
    # The re-run finishes the job: the VMs exist, only the start is left.
    result = run_cli("plan", lab=lab_file)
    assert result.stdout.count("> start") == 3 and "+ create" not in result.stdout
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    assert all(vm["status"] == "running" for vm in managed(fake_pve).values())


@pytest.mark.fake_pve(time_scale=0.01)
def test_waits_out_a_config_lock(lab_file: Path, fake_pve: FakeProxmox) -> None:
    assert run_cli("apply", "--yes", lab=lab_file).exit_code == 0
    web = managed(fake_pve)["web"]["vmid"]
    fake_pve.call("hold_config_lock", vmid=web, secs=150)  # 1.5 s real; PVE's lock wait is 10 s (0.1 s)
    write_lab(lab_file, lab_data(fake_pve, [dict(VMS[0], tags=["docker", "locked"]), *VMS[1:]]))
    start = time.monotonic()
    result = run_cli("apply", "--yes", lab=lab_file)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert time.monotonic() - start > 1.0
    assert "locked" in managed(fake_pve)["web"]["config"]["tags"]
    puts = [r for r in fake_pve.requests() if r == ("PUT", f"/api2/json/nodes/pve1/qemu/{web}/config")]
    assert len(puts) >= 2, "the lock was never hit: the update went through at once"


def test_flaky_network(lab_file: Path, fake_pve: FakeProxmox) -> None:
    fake_pve.call("flaky_network", drop_rate=0.15, seed=7)
    result = run_cli("apply", "--yes", lab=lab_file)
    fake_pve.call("flaky_network", drop_rate=0.0)
    assert result.exit_code == 0, result.stdout + result.stderr
    vms = managed(fake_pve)
    assert sorted(vms) == ["cache", "db", "web"]
    assert all(vm["status"] == "running" for vm in vms.values())
    assert run_cli("plan", lab=lab_file).exit_code == 0


@pytest.mark.fake_pve(time_scale=0.001, agent_delay=100_000)
def test_agent_timeout_is_clear(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [VMS[0], VMS[2]], settings={"timeouts": {"agent": 1}})
    result = run_cli("apply", "--yes", lab=write_lab(tmp_path / "lab.yml", data))
    assert result.exit_code == 1
    # static IP or DHCP: without an answering agent no host key can be pinned, and the error names the cause
    for vm in ("web", "cache"):
        assert f"{vm}: the guest agent did not answer within 1s: the template lacks qemu-guest-agent" in result.stdout


@pytest.mark.fake_pve(time_scale=0.05)
def test_ctrl_c_then_rerun_finishes_without_duplicates(
    tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT in the middle of apply; the next apply completes the lab and never clones twice."""
    vms = [{"name": f"vm{i}", "ip": f"10.10.0.{20 + i}"} for i in range(6)]
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, vms, settings={"concurrency": 3}))
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "homelab", "--lab", str(lab), "apply", "--yes"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "configuring" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    half = managed(fake_pve)
    assert 0 < len(half) <= 6
    result = run_cli("apply", "--yes", lab=lab)
    assert result.exit_code == 0, result.stdout + result.stderr
    done = managed(fake_pve)
    assert sorted(done) == [f"vm{i}" for i in range(6)]
    assert all(vm["status"] == "running" and '"state":"ready"' in vm["config"]["description"] for vm in done.values())
    assert run_cli("plan", lab=lab).exit_code == 0


def test_secret_missing_is_clear(tmp_path: Path, fake_pve: FakeProxmox) -> None:
    result = run_cli("plan", lab=write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS)))
    assert result.exit_code == 2 and "HOMELAB_PROXMOX_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_wrong_token_fails_cleanly(lab_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", "not-the-secret")
    result = run_cli("plan", lab=lab_file)
    assert result.exit_code == 1 and "401" in result.stderr and "not-the-secret" not in result.stderr


def test_tls_is_verified_by_default(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, VMS)
    del data["proxmox"]["ca_bundle"]
    result = run_cli("plan", lab=write_lab(tmp_path / "lab.yml", data))
    assert (
        result.exit_code == 1
        and "TLS certificate not trusted" in result.stderr
        and "set proxmox.ca_bundle" in result.stderr
    )


def test_password_login(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_PASSWORD", fake_pve.password)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS[:1], password=True))
    assert run_cli("apply", "--yes", lab=lab).exit_code == 0
    assert sorted(managed(fake_pve)) == ["web"]


def test_secrets_file_must_be_private(
    lab_file: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HOMELAB_PROXMOX_TOKEN")
    secrets = tmp_path / "config" / "secrets.yml"
    secrets.parent.mkdir(parents=True)
    secrets.write_text(f"test: {{proxmox_token: {fake_pve.token_secret}}}\n")
    secrets.chmod(0o644)
    result = run_cli("plan", lab=lab_file)
    assert (
        result.exit_code == 2
        and "readable by other users (mode 0644)" in result.stderr
        and fake_pve.token_secret not in result.stderr
    )
    secrets.chmod(0o600)
    assert run_cli("plan", lab=lab_file).exit_code == 3


def test_full_clone_per_vm(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    data = lab_data(fake_pve, [dict(VMS[0], full=True), VMS[1]])
    result = run_cli("apply", "--yes", lab=write_lab(tmp_path / "lab.yml", data))
    assert result.exit_code == 0
    assert "full clone of debian-docker" in result.stdout and "linked clone of debian-docker" in result.stdout
    vms = managed(fake_pve)
    assert "base-9000" not in vms["web"]["config"]["scsi0"]  # its own disk
    clones = [r for r in fake_pve.requests() if r[1].endswith("/clone")]
    assert len(clones) == 2
