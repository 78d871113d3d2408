"""The Packer builder: render for every OS and source, `packer validate`, and real `packer build` runs
against the fake Proxmox (Debian's Packer 1.6.6 logs in with user and password)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.adapters.process import ToolFailed
from homelab.adapters.proxmox.marks import parse_mark
from homelab.demo.launcher import FakeProxmox
from homelab.errors import InputError, SecretError
from homelab.state.secrets import ProxmoxAuth
from homelab.templates import resolve_template
from homelab.templates.build import build_template, plan_build, run_build
from homelab.templates.leftovers import BuildFailed
from homelab.templates.packer import PackerSettings, packer_credentials
from homelab.templates.packer_config import (
    MAIN_FILE,
    PLUGINS_FILE,
    PRIVATE_FILES,
    BuildKeys,
    hcl_string,
    known_hosts_line,
    make_build_key,
    make_build_keys,
    render_files,
    write_files,
)
from homelab.templates.plan import BuildFacts, plan_packer
from tests.harness.buildhost import BuildHost
from tests.harness.fixtures_build import bake_network
from tests.harness.hosts import SshHost
from tests.harness.labs import make_lab
from tests.test_templates_support import IMAGE, LOCAL_WITH_IMPORT, api_for, vm_config

PACKER = shutil.which("packer")
needs_packer = pytest.mark.skipif(PACKER is None, reason="packer is not installed (Debian: apt-get install packer)")
OSES = ["debian-12", "debian-13", "ubuntu-24.04"]
NOW = datetime(2026, 11, 2, 8, 15, tzinfo=UTC)
ISO = {"source": "iso", "iso_file": "local:iso/debian-12.iso"}
CLONE = {"source": "clone", "clone_vm": "debian-docker-202611010930"}


def packer_env(**extra: str) -> dict[str, str]:
    import os

    return dict(os.environ, CHECKPOINT_DISABLE="1", **extra)


def rendered(
    os_name: str, source: dict[str, str], communicator: str = "ssh", keys: BuildKeys | None = None, **extra: Any
) -> dict[str, str]:
    templates = [{"name": "golden", "builder": "packer", "os": os_name, "packer": source}]
    lab = make_lab(templates=templates, password=True, **extra)
    return render_files(
        lab,
        lab.templates[0],
        version="202611020815",
        vm_id=9010,
        description='homelab: {"lab": "test"}',
        communicator=communicator,
        keys=keys or make_build_keys(source["source"] == "iso"),
    )


@pytest.mark.parametrize("os_name", OSES)
def test_iso_render_has_the_unattended_install_for_the_os(os_name: str) -> None:
    files = rendered(os_name, ISO)
    hcl = files[MAIN_FILE]
    assert 'source "proxmox-iso" "homelab"' in hcl and 'iso_file    = "local:iso/debian-12.iso"' in hcl
    assert 'provisioner "ansible"' in hcl and f"homelab_os={os_name}" in hcl
    assert "required_plugins" not in hcl and "required_plugins" in files[PLUGINS_FILE]
    assert 'ssh_private_key_file = "build-key"' in hcl
    for rejected_by_1_6 in ("task_timeout", "boot_iso", "token", "serials", "tags"):
        assert not re.search(rf"^\s*{rejected_by_1_6}\s*(=|{{)", hcl, re.MULTILINE), rejected_by_1_6
    if os_name.startswith("debian"):
        assert "/preseed.cfg" in hcl and "http/preseed.cfg" in files
        assert "ssh-ed25519 " in files["http/preseed.cfg"] and "qemu-guest-agent" in files["http/preseed.cfg"]
    else:
        assert "autoinstall" in hcl and "/casper/vmlinuz" in hcl
        user_data = yaml.safe_load(files["http/user-data"])
        assert user_data["autoinstall"]["ssh"]["authorized-keys"][0].startswith("ssh-ed25519 ")
        assert "qemu-guest-agent" in user_data["autoinstall"]["packages"]
    assert yaml.safe_load(files["ansible/bake.yml"])[0]["name"] == "Bake a homelab template"


@pytest.mark.parametrize("os_name", OSES)
def test_clone_render_clones_fully_and_logs_in_as_the_cloud_user(os_name: str) -> None:
    hcl = rendered(os_name, CLONE)[MAIN_FILE]
    assert 'source "proxmox-clone" "homelab"' in hcl and "full_clone = true" in hcl
    assert 'default     = "debian-docker-202611010930"' in hcl
    assert f'ssh_username = "{os_name.split("-")[0]}"' in hcl
    assert "http/" not in "".join(rendered(os_name, CLONE))


def test_no_secret_is_ever_rendered(tmp_path: Path) -> None:
    files = rendered("debian-12", ISO)
    assert "password    = var.proxmox_password" in files[MAIN_FILE]
    assert 'default   = ""\n  sensitive = true' in files[MAIN_FILE]
    assert "PKR_VAR_proxmox_password" in files["README.md"]
    write_files(tmp_path, files)
    for name in ("build-key", "http/preseed.cfg"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert (tmp_path / "build-known-hosts").stat().st_mode & 0o777 == 0o644


def _run_host_key_script(script: str, root: Path) -> None:
    """Run an unattended install's host-key command with / moved to ``root``."""
    (root / "etc" / "ssh").mkdir(parents=True)
    subprocess.run(["sh", "-c", script.replace("/etc/", f"{root}/etc/")], check=True)


@pytest.mark.parametrize("os_name", OSES)
def test_an_iso_build_pins_the_host_key_its_unattended_install_gives_the_vm(os_name: str, tmp_path: Path) -> None:
    keys = make_build_keys(iso=True)
    files = rendered(os_name, ISO, keys=keys)
    hcl = files[MAIN_FILE]

    assert "HOST_KEY_CHECKING=False" not in hcl and "use_proxy = false" in hcl
    assert '"--extra-vars", "ansible_host_key_checking=true"' in hcl
    assert "-o UserKnownHostsFile=build-known-hosts -o GlobalKnownHostsFile=/dev/null" in hcl
    assert "-o StrictHostKeyChecking=yes -o HostKeyAlgorithms=ssh-ed25519" in hcl
    assert files["build-known-hosts"] == "* " + " ".join(keys.host[1].split()[:2]) + "\n"
    if os_name.startswith("debian"):
        line = next(x for x in files["http/preseed.cfg"].splitlines() if "ssh_host_ed25519_key" in x)
        script = line.strip().removeprefix("in-target sh -c '").removesuffix("'; \\")
    else:
        commands = yaml.safe_load(files["http/user-data"])["autoinstall"]["late-commands"]
        script = next(c for c in commands if "ssh_host_ed25519_key" in c).split(" -- sh -c ", 1)[1][1:-1]
    _run_host_key_script(script, tmp_path)
    installed = tmp_path / "etc" / "ssh" / "ssh_host_ed25519_key"
    assert installed.read_bytes() == keys.host[0] and installed.stat().st_mode & 0o777 == 0o600
    # cloud-init's first boot keeps it (the bake removes this file and every host key again).
    assert (tmp_path / "etc/cloud/cloud.cfg.d/50-homelab-build.cfg").read_text() == "ssh_deletekeys: false\n"
    bake = files["ansible/bake.yml"]
    assert "rm -f /etc/ssh/ssh_host_*" in bake and "rm -f /etc/cloud/cloud.cfg.d/50-homelab-build.cfg" in bake


def test_a_clone_build_goes_through_packers_proxy_and_pins_its_host_key() -> None:
    keys = make_build_keys(iso=False)
    files = rendered("debian-12", CLONE, keys=keys)
    hcl = files[MAIN_FILE]
    assert "HOST_KEY_CHECKING=False" not in hcl and "use_proxy         = true" in hcl
    assert 'ssh_host_key_file = "proxy-host-key"' in hcl
    assert files["proxy-host-key"] == keys.host[0].decode() and "build-key" not in files
    assert files["build-known-hosts"] == "* " + " ".join(keys.host[1].split()[:2]) + "\n"
    assert "-o StrictHostKeyChecking=yes" in hcl and "ansible_host_key_checking=true" in hcl


def test_hcl_strings_are_escaped() -> None:
    assert hcl_string('a "b" \\ ${x} %{y}\nz') == '"a \\"b\\" \\\\ $${x} %%{y}\\nz"'


SHELL_LOCAL = 'build {\n  sources = ["source.proxmox-iso.homelab"]\n  provisioner "shell-local" { inline = ["id"] }\n}'


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"source": "iso", "iso_file": "local:iso/debian-12.iso\n" + SHELL_LOCAL}, "iso_file"),
        ({"source": "iso", "iso_file": 'local:iso/debian-12.iso" }'}, "iso_file"),
        ({"source": "iso", "iso_file": "debian-12.iso"}, "iso_file"),
        ({"source": "iso", "iso_file": "local:images/debian-12.iso"}, "iso_file"),
        ({"source": "clone", "clone_vm": "debian-docker\n" + SHELL_LOCAL}, "clone_vm"),
        ({"source": "clone", "clone_vm": "debian docker"}, "clone_vm"),
        ({"source": "clone", "clone_vm": "-debian"}, "clone_vm"),
    ],
    ids=[
        "iso-newline",
        "iso-quote",
        "iso-no-storage",
        "iso-not-iso-content",
        "clone-newline",
        "clone-space",
        "clone-dash",
    ],
)
def test_an_iso_file_or_clone_vm_that_is_not_a_plain_name_is_refused_before_rendering(
    tmp_path: Path, source: dict[str, str], field: str
) -> None:
    from homelab.errors import LabFileError
    from homelab.lab.models import PackerSource

    # The lab file refuses it ...
    with pytest.raises(LabFileError, match=rf"templates\[0\]\.packer\.{field}: .* is not valid"):
        make_lab(templates=[{"name": "golden", "builder": "packer", "packer": source}], password=True)
    # ... and so do render and plan, for a model that was built without validation (defence in depth).
    lab = make_lab(templates=[{"name": "golden", "builder": "packer", "packer": CLONE}], password=True)
    fields = {"source": "clone", "iso_file": None, "clone_vm": None, **source}
    template = lab.templates[0].model_copy(update={"packer": PackerSource.model_construct(**fields)})
    with pytest.raises(InputError, match=rf"packer\.{field} .* is not"):
        render_files(lab, template, version="202611020815", vm_id=9010, keys=make_build_keys(True))
    with pytest.raises(InputError, match=rf"packer\.{field} .* is not"):
        plan_packer(lab, template, BuildFacts((), ()), NOW, tmp_path / "build", tmp_path / "build.log")


@pytest.mark.parametrize("source", [ISO, CLONE], ids=["iso", "clone"])
def test_lab_values_never_appear_raw_in_hcl_comments(source: dict[str, str]) -> None:
    hcl = rendered("debian-12", source)[MAIN_FILE]
    value = source.get("iso_file") or source["clone_vm"]
    comments = [line for line in hcl.splitlines() if line.lstrip().startswith("#")]
    assert comments and not [line for line in comments if value in line and f'"{value}"' not in line]
    assert hcl.count(value) == hcl.count(hcl_string(value))  # only ever as a quoted HCL string


def test_packer_1_6_with_an_api_token_is_refused_clearly() -> None:
    lab = make_lab(templates=[{"name": "golden", "builder": "packer", "packer": CLONE}])
    auth = ProxmoxAuth(token_id="root@pam!homelab", token_secret="s3cret")
    with pytest.raises(SecretError, match=r"Packer 1\.6\.6 logs in with a user and password only"):
        packer_credentials(lab, auth, (1, 6, 6))
    env, secret = packer_credentials(lab, auth, (1, 11, 2))
    assert env == {"PKR_VAR_proxmox_username": "root@pam!homelab"} and secret == {"PROXMOX_TOKEN": "s3cret"}


@needs_packer
@pytest.mark.parametrize("os_name", OSES)
@pytest.mark.parametrize("source", [ISO, CLONE], ids=["iso", "clone"])
@pytest.mark.parametrize("communicator", ["ssh", "none"])
def test_rendered_files_pass_packer_validate_and_fmt(
    tmp_path: Path, os_name: str, source: dict[str, str], communicator: str
) -> None:
    write_files(tmp_path, rendered(os_name, source, communicator))
    env = packer_env(PKR_VAR_proxmox_password="only-for-validate")
    check = subprocess.run(
        [PACKER, "validate", MAIN_FILE], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [PACKER, "fmt", "-check", MAIN_FILE], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, f"not packer-fmt clean: {fmt.stdout}"


@needs_packer
def test_packer_1_6_rejects_the_plugins_file_which_is_why_it_is_separate(tmp_path: Path) -> None:
    write_files(tmp_path, rendered("debian-12", CLONE))
    version = subprocess.run([PACKER, "version"], capture_output=True, text=True, env=packer_env(), check=True)
    if "v1.6." not in version.stdout:
        pytest.skip(f"this checks Packer 1.6, not {version.stdout.strip()}")
    check = subprocess.run(
        [PACKER, "validate", PLUGINS_FILE], cwd=tmp_path, env=packer_env(), capture_output=True, text=True, check=False
    )
    assert check.returncode != 0 and "required_plugins" in check.stdout + check.stderr


def _assert_finished_version(fake: FakeProxmox, lab: object, api: object, result: object, source: str) -> None:
    version = result.version  # type: ignore[attr-defined]
    assert resolve_template(api, lab, "golden") == version  # type: ignore[arg-type]
    config = vm_config(fake, version.vmid)
    assert config is not None and config["template"] and config["name"] == f"golden-{version.version}"
    # the bake playbook installs qemu-guest-agent
    assert set(config["tags"].split(";")) == {"guest-agent", "homelab-template", "homelab-test"}
    assert (config["serial0"], config["vga"], config["agent"]) == ("socket", "serial0", "1")
    record = parse_mark(config["description"])
    assert record is not None and record["builder"] == "packer" and record["source"] == source
    log = result.log_path.read_text()  # type: ignore[attr-defined]
    first = log.splitlines()[0]
    assert first.startswith("$ ") and first.endswith("build -color=false homelab.pkr.hcl"), first
    assert "A template was created" in log
    assert fake.password not in log
    folder = result.log_path.parent.parent / "packer" / "golden"  # type: ignore[attr-defined]
    for path in folder.rglob("*"):
        if path.is_file():
            assert fake.password not in path.read_text(errors="replace"), path
    for name in PRIVATE_FILES:
        assert not (folder / name).exists(), name


@pytest.mark.integration
@needs_packer
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_packer_clone_build_on_top_of_a_cloud_image_version(
    fake_pve: FakeProxmox, build_host: BuildHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(
        fake_pve,
        templates=[
            {"name": "cloud", "image": IMAGE, "vmid_range": [9100, 9199]},
            {"name": "golden", "builder": "packer", "packer": {"source": "clone", "clone_vm": "cloud"}},
        ],
        password=True,
        network=bake_network(build_host),
    )
    api = api_for(fake_pve, lab, monkeypatch)
    cloud = build_template(api, lab, "cloud", now=NOW)
    lines: list[str] = []
    settings = PackerSettings(packer=PACKER or "packer", communicator="none")
    result = build_template(api, lab, "golden", lines.append, packer=settings, now=NOW)

    assert cloud.version.name == "cloud-202611020815"
    assert (result.version.vmid, result.version.name) == (9001, "golden-202611020815")
    _assert_finished_version(fake_pve, lab, api, result, "cloud-202611020815")
    assert any(line.startswith("packer: Creating VM") for line in lines)
    clone = [p for m, p in fake_pve.requests() if m == "POST" and p.endswith("/clone")]
    assert clone == ["/api2/json/nodes/pve1/qemu/9100/clone"]


@pytest.mark.integration
@needs_packer
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_packer_iso_build_with_the_iso_already_on_storage(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "golden", "builder": "packer", "packer": ISO}], password=True)
    api = api_for(fake_pve, lab, monkeypatch)
    result = build_template(
        api, lab, "golden", packer=PackerSettings(packer=PACKER or "packer", communicator="none"), now=NOW
    )
    _assert_finished_version(fake_pve, lab, api, result, "local:iso/debian-12.iso")
    config = vm_config(fake_pve, result.version.vmid)
    assert config is not None and config["ide2"] == "none,media=cdrom"  # the installer ISO is unmounted


@pytest.mark.integration
@needs_packer
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_a_failing_packer_build_leaves_no_template(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "golden", "builder": "packer", "packer": CLONE}], password=True)
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("fail", method="POST", suffix="/nodes/pve1/qemu/9001/template", status=500, message="disk full")
    settings = PackerSettings(packer=PACKER or "packer", communicator="none")
    with pytest.raises(ToolFailed, match="exited with status 1") as failed:
        build_template(api, lab, "golden", packer=settings, now=NOW)
    assert any("disk full" in line for line in failed.value.lines())
    assert vm_config(fake_pve, 9001) is None


@pytest.mark.integration
@needs_packer
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_a_template_homelab_cannot_tag_is_removed(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "golden", "builder": "packer", "packer": CLONE}], password=True)
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("fail", method="PUT", suffix="/nodes/pve1/qemu/9001/config", status=500, message="no quorum")
    settings = PackerSettings(packer=PACKER or "packer", communicator="none")
    with pytest.raises(BuildFailed, match="no quorum; VM 9001 was removed"):
        build_template(api, lab, "golden", packer=settings, now=NOW)
    assert vm_config(fake_pve, 9001) is None


def _bake_on(host: SshHost, folder: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the rendered build block with Packer's null builder against a test host (a tiny playbook)."""
    write_files(folder, files)
    (folder / "ansible" / "bake.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: id\n"
    )
    shutil.copy(host.client_key, folder / "client-key")
    hcl = files[MAIN_FILE]
    build = hcl[hcl.index("build {") :].replace('"source.proxmox-iso.homelab"', '"source.null.homelab"')
    build = build.replace('"source.proxmox-clone.homelab"', '"source.null.homelab"')
    source = (
        f'source "null" "homelab" {{\n  communicator = "ssh"\n  ssh_host = "{host.address}"\n'
        '  ssh_username = "root"\n  ssh_private_key_file = "client-key"\n}\n\n'
    )
    (folder / MAIN_FILE).write_text(source + build)
    return subprocess.run(
        [PACKER, "build", "-color=false", MAIN_FILE],
        cwd=folder,
        env=packer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.integration
@needs_packer
@pytest.mark.skipif(shutil.which("ansible-playbook") is None, reason="ansible is not installed")
@pytest.mark.parametrize("source", [ISO, CLONE], ids=["iso-direct", "clone-proxy"])
def test_the_bake_connects_only_to_the_pinned_host_key(
    ssh_host: SshHost, tmp_path: Path, source: dict[str, str]
) -> None:
    """Real Packer and Ansible: the ansible provisioner as rendered accepts the pinned host key only."""
    iso = source["source"] == "iso"
    stranger = make_build_keys(iso)
    if iso:  # what the unattended install would have put on the VM: here, the test host's own key
        pinned = BuildKeys(host=(ssh_host.host_key.read_bytes(), ssh_host.host_key_pub), login=stranger.login)
    else:  # the proxy presents whatever host key the build made
        pinned = stranger

    as_root = {"access": {"user": "root"}}  # the test host's client key logs in as root
    ok = _bake_on(ssh_host, tmp_path / "pinned", rendered("debian-12", source, keys=pinned, **as_root))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok=1" in ok.stdout and "Host key verification failed" not in ok.stdout

    files = rendered("debian-12", source, keys=pinned, **as_root)
    files["build-known-hosts"] = known_hosts_line(make_build_key()[1])  # a key the other end does not have
    refused = _bake_on(ssh_host, tmp_path / "other", files)
    assert refused.returncode != 0
    assert "Host key verification failed" in refused.stdout, refused.stdout


@pytest.mark.integration
@pytest.mark.fake_pve(storages=LOCAL_WITH_IMPORT)
def test_ctrl_c_during_packer_removes_the_half_built_vm_then_stops(
    fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab = make_lab(fake_pve, templates=[{"name": "golden", "builder": "packer", "packer": CLONE}], password=True)
    api = api_for(fake_pve, lab, monkeypatch)
    fake_pve.call("add_vm", vmid=8000, name="debian-docker-202611010930", template=True)
    # A stand-in for Packer that creates the VM, then works on until it is stopped.
    packer = tmp_path / "packer"
    packer.write_text(
        '#!/bin/sh\ncase "$1" in\n  version) echo "Packer v1.6.6" ;;\n'
        '  build) echo "==> proxmox-clone.homelab: Creating VM"; sleep 60 ;;\nesac\n'
    )
    packer.chmod(0o755)
    plan, facts = plan_build(api, lab, "golden", now=NOW)
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        if line == "packer: Creating VM":
            fake_pve.call("add_vm", vmid=plan.vmid, name=plan.name)  # what Packer made so far
            raise KeyboardInterrupt  # the user presses Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        run_build(api, lab, plan, facts, progress, PackerSettings(packer=str(packer), communicator="none"))

    assert vm_config(fake_pve, plan.vmid) is None
    assert any(f"removing what Packer left at VM {plan.vmid}" in line for line in lines)
    assert not (plan.actions[0].directory / "build-key").exists()  # type: ignore[union-attr]
