"""`homelab export terraform DIR` on a lab applied on the fake Proxmox: fmt-clean HCL2 that names the real vmids
and template versions, every resource, block and attribute in the pinned provider's schema (a snapshot), and
the secret in no file. `terraform init` + `plan` runs only where the provider is in a plugin folder."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from homelab.cli import cli
from homelab.demo.launcher import FakeProxmox
from homelab.export.files import PROVIDER_SOURCE, PROVIDER_VERSION
from tests.harness import terraform as tf
from tests.harness.labs import SSH_KEY, lab_data, write_lab

pytestmark = pytest.mark.integration

VMS = [
    {"name": "web", "cores": 2, "memory": 2048, "disk": "20G", "ip": "10.10.0.10", "tags": ["docker"]},
    {"name": "db", "memory": 4096, "ip": "10.10.0.11"},
    {"name": "cache", "ip": "dhcp"},
]
TEMPLATE_VMID, TEMPLATE_VERSION = 9000, "202611010930"  # the fake's baked template version


def homelab(lab: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--lab", str(lab), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def applied(tmp_path: Path, fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lab, applied on the fake: three running VMs."""
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", fake_pve.token_secret)
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, VMS))
    code, out, err = homelab(lab, "apply", "--yes")
    assert code == 0, out + err
    return lab


@pytest.fixture
def exported(applied: Path, fake_pve: FakeProxmox, tmp_path: Path) -> Path:
    """The export of the applied lab; exporting only reads Proxmox."""
    fake_pve.requests(clear=True)
    code, out, err = homelab(applied, "export", "terraform", str(tmp_path / "tf"))
    assert code == 0, out + err
    assert [r for r in fake_pve.requests() if r[0] != "GET"] == []
    return tmp_path / "tf"


def test_the_export_adopts_the_running_vms_by_vmid_and_template_version(exported: Path, fake_pve: FakeProxmox) -> None:
    vmids = {vm["name"]: vm["vmid"] for vm in fake_pve.vms() if not vm["template"]}
    parsed = tf.parse(exported)
    imports = {tf.unquote(b["id"]): b["to"] for b in tf.blocks(parsed, "import")}
    assert imports == {f"pve1/{vmids[n]}": f"${{proxmox_virtual_environment_vm.{n}}}" for n in ("web", "db", "cache")}
    vms = {name: body for (_, name), body in tf.resources(parsed).items()}
    assert sorted(vms) == ["cache", "db", "web"]
    web = vms["web"]
    assert web["vm_id"] == vmids["web"] and tf.unquote(web["node_name"]) == "pve1"
    assert web["clone"][0]["vm_id"] == TEMPLATE_VMID and web["clone"][0]["full"] is False
    description = tf.unquote(web["description"])
    assert f'"template":"debian-docker","version":"{TEMPLATE_VERSION}","vm":"web"' in description
    # the same description line and tags as homelab writes: the import changes neither
    live = next(vm for vm in fake_pve.vms() if vm["name"] == "web")["config"]
    assert description == live["description"]
    assert tf.unquote(web["tags"]) == sorted(live["tags"].split(";")) == ["docker", "homelab-test"]
    assert (web["cpu"][0]["cores"], web["memory"][0]["dedicated"], web["disk"][0]["size"]) == (2, 2048, 20)
    assert tf.unquote(web["disk"][0]["interface"]) == "scsi0"
    assert tf.unquote(web["network_device"][0]["bridge"]) == "vmbr0"
    init = web["initialization"][0]
    assert tf.unquote(init["ip_config"][0]["ipv4"][0]["address"]) == "10.10.0.10/24"
    assert tf.unquote(init["ip_config"][0]["ipv4"][0]["gateway"]) == "10.10.0.1"
    assert tf.unquote(init["dns"][0]["servers"]) == ["10.10.0.1"]
    assert tf.unquote(init["dns"][0]["domain"]) == "home.arpa"
    account = init["user_account"][0]
    admin = (exported.parent / "state" / "test" / "ssh" / "id_ed25519.pub").read_text().strip()
    assert tf.unquote(account["username"]) == "homelab" and tf.unquote(account["keys"]) == [SSH_KEY, admin]
    assert web["agent"][0]["enabled"] is True and web["lifecycle"][0]["ignore_changes"] == ["clone"]
    assert tf.unquote(vms["cache"]["initialization"][0]["ip_config"][0]["ipv4"][0]["address"]) == "dhcp"
    assert "gateway" not in vms["cache"]["initialization"][0]["ip_config"][0]["ipv4"][0]
    outputs = {tf.unquote(k): v for entry in tf.blocks(parsed, "output") for k, v in entry.items()}
    assert tf.unquote(outputs["web_address"]["value"]) == "10.10.0.10"
    assert "ipv4_addresses" in outputs["cache_address"]["value"]


def test_the_files_are_fmt_clean_hcl2_and_the_secret_is_in_none(exported: Path, fake_pve: FakeProxmox) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "imports.tf",
        "outputs.tf",
        "provider.tf",
        "variables.tf",
        "versions.tf",
        "vms.tf",
    ]
    checked = tf.fmt_check(exported)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(tf.parse(exported)) == 6
    for path in exported.iterdir():
        assert fake_pve.token_secret not in path.read_text(), path.name
    versions = tf.parse(exported)["versions.tf"]["terraform"][0]
    provider = versions["required_providers"][0]["proxmox"]
    assert tf.unquote(provider["source"]) == PROVIDER_SOURCE
    assert tf.unquote(provider["version"]) == f"~> {PROVIDER_VERSION}"
    readme = (exported / "README.md").read_text()
    assert "PROXMOX_VE_API_TOKEN" in readme and f"SSL_CERT_FILE={fake_pve.cafile}" in readme


def test_every_resource_block_and_attribute_is_in_the_pinned_provider_schema(exported: Path) -> None:
    schema = tf.load_schema()
    assert schema["version"] == PROVIDER_VERSION, "take a new schema snapshot for the pinned provider version"
    assert tf.schema_problems(tf.parse(exported), schema) == []


def test_the_schema_check_fails_on_a_renamed_or_retyped_attribute(exported: Path) -> None:
    parsed = tf.parse(exported)
    schema = tf.load_schema()
    renamed = copy.deepcopy(schema)
    vm = renamed["resources"]["proxmox_virtual_environment_vm"]
    vm["attributes"]["scsi_hw"] = vm["attributes"].pop("scsi_hardware")
    del vm["blocks"]["initialization"]["blocks"]["user_account"]["attributes"]["keys"]
    retyped = copy.deepcopy(schema)
    retyped["resources"]["proxmox_virtual_environment_vm"]["blocks"]["disk"]["attributes"]["size"] = "string"
    gone = copy.deepcopy(schema)
    del gone["resources"]["proxmox_virtual_environment_vm"]["attributes"]["ipv4_addresses"]
    assert any("'scsi_hardware' is not in" in p for p in tf.schema_problems(parsed, renamed))
    assert any("user_account[0]: attribute 'keys'" in p for p in tf.schema_problems(parsed, renamed))
    assert any("'size' is number, the provider wants string" in p for p in tf.schema_problems(parsed, retyped))
    assert any("ipv4_addresses" in p for p in tf.schema_problems(parsed, gone))


def test_the_export_is_stable_and_leaves_other_files_alone(applied: Path, exported: Path) -> None:
    (exported / "terraform.tfstate").write_text("{}")
    first = {p.name: p.read_text() for p in exported.iterdir()}
    code, out, err = homelab(applied, "export", "terraform", str(exported))
    assert code == 0, out + err
    assert {p.name: p.read_text() for p in exported.iterdir()} == first


def test_terraform_init_and_plan_adopt_the_vms_without_a_change(
    exported: Path, fake_pve: FakeProxmox, tmp_path: Path
) -> None:
    """Runs only where the provider is already in a plugin folder: it cannot be downloaded here."""
    plugins = tf.plugin_dir(PROVIDER_SOURCE, PROVIDER_VERSION)
    if plugins is None:
        pytest.skip(
            f"the {PROVIDER_SOURCE} provider {PROVIDER_VERSION} is not in a plugin folder "
            "($HOMELAB_TF_PLUGIN_DIR, $TF_PLUGIN_CACHE_DIR, ~/.terraform.d/plugins) and cannot be downloaded here"
        )
    env = tf.terraform_env(
        PROXMOX_VE_API_TOKEN=f"{fake_pve.token_id}={fake_pve.token_secret}", SSL_CERT_FILE=fake_pve.cafile
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [tf.terraform(), *args], cwd=exported, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run("init", "-input=false", f"-plugin-dir={plugins}")
    run("plan", "-input=false", "-out=adopt.plan")
    changes = json.loads(run("show", "-json", "adopt.plan").stdout)["resource_changes"]
    assert sorted(c["name"] for c in changes) == ["cache", "db", "web"]
    assert all(c["change"]["actions"] == ["no-op"] and c["change"].get("importing") for c in changes), changes
