"""The cloud-image builder end to end against the fake Proxmox: download, import, template; clean failures."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from homelab.adapters.proxmox.marks import parse_mark
from homelab.adapters.proxmox.versions import TemplateMissing
from homelab.demo.launcher import FakeProxmox
from homelab.errors import ProxmoxError
from homelab.templates import resolve_template
from homelab.templates.bake import BakeTemplateVm, SealTemplateVm
from homelab.templates.build import build_template, plan_build, run_build
from homelab.templates.leftovers import BuildFailed
from homelab.templates.plan import ConvertToTemplate, CreateTemplateVm, DownloadImage, GrowTemplateDisk, ReuseImage
from tests.harness.buildhost import BuildHost
from tests.harness.fixtures_build import bake_network
from tests.harness.labs import make_lab
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT, api_for, vm_config, volumes

pytestmark = [pytest.mark.integration, pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)]
NOW = datetime(2026, 11, 2, 8, 15, 42, tzinfo=UTC)


def test_builds_a_versioned_template_that_homelab_then_resolves(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(
        fake_pve,
        templates=[{"name": "base", "image": IMAGE, "disk": "10G", "cores": 4}],
        network=bake_network(build_host),
    )
    api = api_for(fake_pve, lab, monkeypatch)
    with pytest.raises(TemplateMissing, match="run `homelab template build base`"):
        resolve_template(api, lab, "base")

    lines: list[str] = []
    result = build_template(api, lab, "base", lines.append, now=NOW)

    assert [type(a) for a in result.plan.actions] == [
        DownloadImage,
        CreateTemplateVm,
        GrowTemplateDisk,
        BakeTemplateVm,
        SealTemplateVm,
        ConvertToTemplate,
    ]
    assert (result.version.vmid, result.version.name) == (9001, "base-202611020815")  # 9000 is taken
    assert resolve_template(api, lab, lab.templates[0]) == result.version
    assert any("download https://images.example/" in line for line in lines)

    config = vm_config(fake_pve, 9001)
    assert config is not None and config["template"]
    assert set(config["tags"].split(";")) == {"guest-agent", "homelab-template", "homelab-test"}
    volid = "local:import/debian-12-genericcloud-amd64-abababababababab.qcow2"
    assert f"import-from={volid}" in config["scsi0"] and config["scsi0"].startswith("local-lvm:base-9001-disk")
    assert "cloudinit" in config["ide2"] or "media=cdrom" in config["ide2"]
    assert (config["serial0"], config["vga"], config["agent"]) == ("socket", "serial0", "enabled=1")
    assert (config["cores"], str(config["memory"])) == (4, "2048")
    record = parse_mark(config["description"])
    assert record is not None
    assert record["lab"] == "test" and record["template"] == "base" and record["version"] == "202611020815"
    assert record["image"] == IMAGE["url"] and record["checksum"] == IMAGE["checksum"]
    assert record["built"] == "2026-11-02T08:15:42Z"
    assert "import/debian-12-genericcloud-amd64-abababababababab.qcow2" in volumes(fake_pve, "local")
    download = [p for m, p in fake_pve.requests() if m == "POST" and p.endswith("/download-url")]
    assert download == ["/api2/json/nodes/pve1/storage/local/download-url"]
    assert result.downloaded and result.api_calls > 0


def test_a_second_build_reuses_the_verified_image_and_becomes_the_newest(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    api = api_for(fake_pve, lab, monkeypatch)
    first = build_template(api, lab, "base", now=NOW)
    fake_pve.requests(clear=True)
    second = build_template(api, lab, "base", now=NOW)  # same minute: the version still grows

    assert isinstance(second.plan.actions[0], ReuseImage) and not second.downloaded
    assert not [p for _, p in fake_pve.requests() if p.endswith("/download-url")]
    assert (first.version.version, second.version.version) == ("202611020815", "202611020816")
    assert second.version.vmid == 9002
    assert resolve_template(api, lab, "base") == second.version


def test_a_pinned_version_wins_over_the_newest(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    api = api_for(fake_pve, lab, monkeypatch)
    first = build_template(api, lab, "base", now=NOW)
    build_template(api, lab, "base", now=NOW)
    pinned = make_lab(
        fake_pve,
        templates=[{"name": "base", "image": IMAGE, "version": first.version.version}],
        network=bake_network(build_host),
    )
    assert resolve_template(api, pinned, "base") == first.version
    gone = make_lab(
        fake_pve,
        templates=[{"name": "base", "image": IMAGE, "version": "202001010000"}],
        network=bake_network(build_host),
    )
    with pytest.raises(TemplateMissing, match="pins version 202001010000"):
        resolve_template(api, gone, "base")


def test_a_bad_checksum_fails_the_download_and_leaves_no_vm(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}])
    api = api_for(fake_pve, lab, monkeypatch)
    # PVE's own words when the downloaded file does not match the checksum it was given.
    mismatch = f"checksum mismatch: got '{'cd' * 64}' != expect '{'ab' * 64}'"
    fake_pve.call("fail", method="POST", suffix="/storage/local/download-url", status=500, message=mismatch)
    before = {vm["vmid"] for vm in fake_pve.vms()}

    with pytest.raises(ProxmoxError, match="checksum mismatch"):
        build_template(api, lab, "base", now=NOW)

    assert {vm["vmid"] for vm in fake_pve.vms()} == before == {9000}
    assert not [p for m, p in fake_pve.requests() if m == "POST" and p.endswith("/qemu")]
    assert not any(v.startswith("import/") for v in volumes(fake_pve, "local"))
    assert not any("9001" in v for v in volumes(fake_pve, "local-lvm"))
    with pytest.raises(TemplateMissing):
        resolve_template(api, lab, "base")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", "/nodes/pve1/qemu/9001/template"), ("PUT", "/nodes/pve1/qemu/9001/resize")],
)
def test_a_failure_after_the_vm_exists_removes_it_and_its_disks(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch, method: str, suffix: str
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}], network=bake_network(build_host))
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("fail", method=method, suffix=suffix, status=500, message="storage went away")
    lines: list[str] = []

    with pytest.raises(BuildFailed, match="storage went away; VM 9001 was removed"):
        build_template(api, lab, "base", lines.append, now=NOW)

    assert vm_config(fake_pve, 9001) is None
    assert not any("9001" in v for v in volumes(fake_pve, "local-lvm"))
    assert any("removing VM 9001" in line for line in lines)
    assert ("DELETE", "/api2/json/nodes/pve1/qemu/9001") in fake_pve.requests()


def test_a_failed_create_task_leaves_nothing_to_clean(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}])
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("fail", method="POST", suffix="/nodes/pve1/qemu", error="live_restore_failed")

    with pytest.raises(ProxmoxError):
        build_template(api, lab, "base", now=NOW)
    assert vm_config(fake_pve, 9001) is None
    assert not [p for m, p in fake_pve.requests() if m == "DELETE"]


def test_a_vm_that_took_the_planned_vmid_is_never_removed(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}])
    api = api_for(fake_pve, lab, monkeypatch)
    plan, facts = plan_build(api, lab, "base", now=NOW)
    # Between planning and creating, someone else's VM takes the vmid: create fails with "already exists".
    fake_pve.call("add_vm", vmid=plan.vmid, name="someone-elses-vm", config={"description": "not ours"})

    with pytest.raises(ProxmoxError, match="already exists"):
        run_build(api, lab, plan, facts, lambda _line: None)

    config = vm_config(fake_pve, plan.vmid)
    assert config is not None and config["name"] == "someone-elses-vm"
    assert not [p for m, p in fake_pve.requests() if m == "DELETE"]


@pytest.mark.parametrize(
    "change",
    [
        {"name": "someone-elses-vm"},
        {"description": 'homelab: {"lab": "other", "template": "base", "version": "202611020815"}'},
        {"description": 'homelab: {"lab": "test", "template": "base", "version": "202001010000"}'},
        {"description": ""},
    ],
    ids=["other-name", "other-lab", "other-version", "no-record"],
)
def test_a_failed_build_leaves_a_vm_alone_that_is_not_the_one_it_made(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, change: dict[str, str]
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}])
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("fail", method="PUT", suffix="/nodes/pve1/qemu/9001/resize", status=500, message="storage went away")

    def progress(line: str) -> None:
        # Once the VM exists, what sits at its vmid changes (replaced by hand, or by another tool).
        if line.startswith("grow "):
            config = next(vm["config"] for vm in fake_pve.vms() if vm["vmid"] == 9001)
            fake_pve.call(
                "vm_set", vmid=9001, config=dict(config, **change), **{k: v for k, v in change.items() if k == "name"}
            )

    with pytest.raises(BuildFailed, match=r"VM 9001 is not the one this build made.*left it alone"):
        build_template(api, lab, "base", progress, now=NOW)

    assert vm_config(fake_pve, 9001) is not None
    assert ("DELETE", "/api2/json/nodes/pve1/qemu/9001") not in fake_pve.requests()


def test_no_storage_for_imports_is_a_clear_error(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pve.call("set", storages={"local-lvm": fake_pve.call("storages")["local-lvm"]})
    lab = make_lab(fake_pve, templates=[{"name": "base", "image": IMAGE}])
    api = api_for(fake_pve, lab, monkeypatch)
    with pytest.raises(Exception, match=r"content type 'import'.*pvesm set local"):
        plan_build(api, lab, "base", now=NOW)
