"""`homelab deploy` and `homelab stack add` against SSH test hosts set up like provisioned VMs: a homelab user
whose only key is homelab's admin key, and hosts.json with each host's pinned SSH host key (as apply writes).

Ansible really runs (ansible-runner -> ansible-playbook -> ssh with the pinned known_hosts). The hosts share
the machine's /usr, so Docker is not installed (--no-install-docker) and no stack is started (--no-start).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from homelab.adapters.ansible import AnsibleRunner
from homelab.deploy.plan import DeployOptions, prepare, workdir
from homelab.deploy.render import render_lab
from homelab.deploy.secretvalues import stack_secret_values, staged_secrets
from homelab.deploy.service import execute, stage
from homelab.lab import load_lab
from homelab.state.hosts import hosts_file
from tests.harness.cli import run_cli
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.hosts import SshHost
from tests.harness.vms import provision

pytestmark = pytest.mark.integration

LAB = """\
# A lab for the deploy tests. This comment must survive `homelab stack add`.
name: test
proxmox:
  url: https://pve.test:8006
  node: pve1
  token_id: root@pam!homelab
network:
  subnet: 10.10.0.0/24
  gateway: 10.10.0.1
  build_ip: 10.10.0.250
  domain: lab.example   # stacks answer on <name>.lab.example
templates:
  - name: debian-docker
vms:
  - name: web
    ip: 10.10.0.10
    stacks: [traefik, portainer]   # the front VM
  - name: db
    ip: 10.10.0.11
    stacks: [traefik, homepage]
stacks:
  portainer:
    subdomain: docker
"""
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def stacks_on(vm: SshHost) -> dict[str, tuple[str, str]]:
    """Every file and folder under the host's /home/homelab/stacks: owner and octal mode, as the host sees them."""
    out = vm.run("cd /home/homelab/stacks && find . -mindepth 1 -exec stat -c '%n %U:%G %a' {} +").stdout
    return {name[2:]: (owner, mode) for name, owner, mode in (line.split() for line in out.splitlines())}


def test_deploy_twice_then_a_host_with_another_key_fails_alone(
    tmp_path: Path, ssh_hosts: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine_home = sorted(os.listdir("/home"))
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(LAB)
    lab = load_lab(lab_path)
    web, db = ssh_hosts(2, per_user_keys=True)
    provision(lab, {"web": web, "db": db})

    result = run_cli("deploy", "--yes", "--no-install-docker", "--no-start", lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "+ web: /home/homelab/stacks/portainer/.env (new file)" in result.stdout  # the preview came first
    assert result.stdout.index("Changes:") < result.stdout.index("Deploying:") < result.stdout.index("Summary:")
    # files, state folders, secrets and that they changed (and the look for state to move)
    assert "  web: ok (ok=7 changed=4 failed=0 unreachable=0)" in result.stdout
    rendered = render_lab(lab, stack_secret_values(lab))  # the values the deploy generated and kept
    for name, vm in (("web", web), ("db", db)):
        expected = {f.path: f.content for f in rendered[name].files}
        on_host = stacks_on(vm)
        assert {path for path, (_, mode) in on_host.items() if mode == "644"} == {
            f.path for f in rendered[name].plain_files
        }
        assert {path for path, (_, mode) in on_host.items() if mode == "600"} == {
            f.path for f in rendered[name].secret_files
        }
        assert {path for path, (_, mode) in on_host.items() if mode == "755"} == set(rendered[name].dirs)
        assert {path for path, (_, mode) in on_host.items() if mode == "700"} == set(rendered[name].private_dirs)
        assert {owner for owner, _ in on_host.values()} == {"homelab:homelab"}
        uid = int(vm.exec(["id", "-u", "homelab"]).stdout)
        root = vm.home_dir / "homelab" / "stacks"  # the machine's side of the host's /home
        assert stat.S_IMODE(root.stat().st_mode) == 0o755 and root.stat().st_uid == uid
        for path, content in expected.items():
            assert (root / path).read_text() == content
    assert "PORTAINER_HOST=docker.lab.example" in (web.home_dir / "homelab/stacks/portainer/.env").read_text()
    services = (db.home_dir / "homelab/stacks/homepage/config/services.yaml").read_text()
    assert "https://docker.lab.example" in services and "https://traefik.lab.example" in services
    assert "http://" not in services
    assert sorted(os.listdir("/home")) == machine_home  # the machine's own /home is untouched

    result = run_cli("deploy", "--yes", "--no-install-docker", "--no-start", lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "(no file or package would change)" in result.stdout and "Nothing to change." in result.stdout
    # the preview is one module run per VM ("Check the VM"), and with nothing to change the deploy ends there
    assert "  db: ok (ok=1 changed=0 failed=0 unreachable=0)" in result.stdout

    # The real run (not only check mode) is idempotent too: Ansible's own stats say changed=0.
    deployment = prepare(
        lab, DeployOptions(install_packages=False, start_stacks=False), secrets=stack_secret_values(lab)
    )
    inventory = stage(deployment, tmp_path / "state" / "test" / "ssh" / "id_ed25519", workdir(lab))
    with AnsibleRunner() as runner, staged_secrets(deployment) as secrets_file:
        report = execute(deployment, runner, inventory, workdir(lab), check=False, secrets_file=secrets_file)
    # ok: state to move, state folders, files, secrets and the two includes (the docker role, the compose tasks)
    assert {name: (h.stats.ok, h.stats.changed, h.stats.failed) for name, h in report.hosts.items()} == {
        "web": (6, 0, 0),
        "db": (6, 0, 0),
    }

    # db now presents a key other than the pinned one: it fails by name, web still gets its change.
    lab_path.write_text(LAB.replace("stacks:\n  portainer:", "stacks:\n  traefik:\n    version: v3.6.2\n  portainer:"))
    records = json.loads(hosts_file(lab).read_text())
    records["hosts"][1]["host_key"] = OTHER_KEY
    hosts_file(lab).write_text(json.dumps(records))
    result = run_cli("deploy", "--yes", "--no-install-docker", "--no-start", lab=lab_path)
    assert result.exit_code == 1
    assert "the deploy failed on db (Check the VM); the other VMs are deployed" in result.stderr
    assert (
        "  ~ web: /home/homelab/stacks/traefik/.env" in result.stdout
        and "      +TRAEFIK_VERSION=v3.6.2" in result.stdout
    )
    failed = next(line for line in result.stdout.splitlines() if line.startswith("  db: FAILED"))
    assert "Host key verification failed" in failed
    assert "web: ok (ok=6 changed=1" in result.stdout
    assert "TRAEFIK_VERSION=v3.6.2" in (web.home_dir / "homelab/stacks/traefik/.env").read_text()
    assert "TRAEFIK_VERSION" not in (db.home_dir / "homelab/stacks/traefik/.env").read_text()


def test_stack_add_keeps_the_comments_and_deploys_the_new_stack(tmp_path: Path, ssh_hosts: HostFactory) -> None:
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(LAB)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(load_lab(lab_path), {"db": vm})

    result = run_cli(
        "stack", "add", "portainer", "--vm", "db", "--yes", "--no-install-docker", "--no-start", lab=lab_path
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    text = lab_path.read_text()
    assert text == LAB.replace("stacks: [traefik, homepage]", "stacks: [traefik, homepage, portainer]")
    assert "added portainer to db." in result.stdout and "Deploy to 1 VM(s)" in result.stdout
    assert "PORTAINER_HOST=docker.lab.example" in (vm.home_dir / "homelab/stacks/portainer/.env").read_text()
    services = (vm.home_dir / "homelab/stacks/homepage/config/services.yaml").read_text()
    assert "Portainer" in services  # Homepage lists the new stack too
    assert sorted(stacks_on(vm)) == sorted(
        [
            "traefik",
            "traefik/compose.yml",
            "traefik/.env",
            "traefik/.homelab-stack",
            "traefik/dynamic",
            "traefik/dynamic/tls.yml",
            "traefik/traefik.yml",
            "traefik/traefik.env",
            "traefik/secrets",
            "traefik/secrets/dashboard.htpasswd",
            "traefik/secrets/local-tls.crt",
            "traefik/secrets/local-tls.key",
            "homepage",
            "homepage/compose.yml",
            "homepage/.env",
            "homepage/.homelab-stack",
            "homepage/config",
            "homepage/config/services.yaml",
            "homepage/config/docker.yaml",
            "portainer",
            "portainer/compose.yml",
            "portainer/.env",
            "portainer/.homelab-stack",
            "portainer/secrets",
            "portainer/secrets/PORTAINER_ADMIN_PASSWORD",
        ]
    )


ONE_VM = """\
name: test
proxmox:
  url: https://pve.test:8006
  node: pve1
  token_id: root@pam!homelab
network:
  subnet: 10.10.0.0/24
  gateway: 10.10.0.1
  build_ip: 10.10.0.250
  domain: lab.example
templates:
  - name: debian-docker
vms:
  - name: web
    ip: 10.10.0.10
    stacks: [traefik, portainer]
settings:
  snapshot_before_changes: false  # no Proxmox here to snapshot the VM before a stack goes
"""
FILES_ONLY = ("--yes", "--no-install-docker", "--no-start")


def test_a_stack_dropped_from_the_lab_file_leaves_the_vm_and_nothing_else_does(
    tmp_path: Path, ssh_hosts: HostFactory
) -> None:
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(ONE_VM)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(load_lab(lab_path), {"web": vm})
    result = run_cli("deploy", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    stacks = vm.home_dir / "homelab" / "stacks"
    # Folders homelab did not make: by hand, by another lab, a copy of a stack's folder under another name.
    by_hand = "mkdir mine && echo 'services: {}' > mine/compose.yml && echo 'lab=test' > mine/.homelab-stack"
    other_lab = "mkdir elsewhere && printf 'lab=other\\nstack=elsewhere\\n' > elsewhere/.homelab-stack"
    vm.exec(["sh", "-c", f"cd /home/homelab/stacks && {by_hand} && {other_lab} && cp -a portainer portainer-old"])
    theirs = {
        name: sorted(p.name for p in (stacks / name).iterdir()) for name in ("mine", "elsewhere", "portainer-old")
    }
    traefik = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (stacks / "traefik").iterdir()}

    lab_path.write_text(ONE_VM.replace("[traefik, portainer]", "[traefik]"))
    result = run_cli("deploy", "--check", "--no-install-docker", "--no-start", lab=lab_path)
    assert result.exit_code == 3, result.stdout  # something would change
    assert (
        "  - web: stack portainer (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/portainer" in result.stdout
    )
    assert (
        "stack mine" not in result.stdout and "elsewhere" not in result.stdout and "portainer-old" not in result.stdout
    )

    result = run_cli("deploy", *FILES_ONLY, "--keep-removed", lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "  = web: stack portainer kept (no longer in the lab file; --keep-removed)" in result.stdout
    assert "note: web: stack portainer is no longer in the lab file; kept there (--keep-removed)" in result.stdout
    assert (stacks / "portainer" / "compose.yml").is_file()

    result = run_cli("deploy", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (
        "  - web: stack portainer (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/portainer" in result.stdout
    )
    assert "web: changed Remove stack folders" in result.stdout and "web: ok (ok=7 changed=1" in result.stdout
    assert not (stacks / "portainer").exists()
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (stacks / "traefik").iterdir()} == traefik
    assert {name: sorted(p.name for p in (stacks / name).iterdir()) for name in theirs} == theirs

    result = run_cli("deploy", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "(no file or package would change)" in result.stdout and "Nothing to change." in result.stdout
    assert "  web: ok (ok=1 changed=0 failed=0 unreachable=0)" in result.stdout

    # The VM lists no stacks at all: the deploy record says homelab put some there, so it is cleared too.
    lab_path.write_text(ONE_VM.replace("    stacks: [traefik, portainer]\n", ""))
    result = run_cli("deploy", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "  web (" in result.stdout and "): no stacks (those deployed before are removed)" in result.stdout
    assert (
        "  - web: stack traefik (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/traefik" in result.stdout
    )
    assert sorted(p.name for p in stacks.iterdir()) == ["elsewhere", "mine", "portainer-old"]
    result = run_cli("deploy", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0 and "Skipped: no VM in the lab file lists stacks." in result.stdout


def test_purge_data_deletes_what_an_earlier_removal_kept_and_only_that(tmp_path: Path, ssh_hosts: HostFactory) -> None:
    lab_path = tmp_path / "lab.yml"
    lab_path.write_text(ONE_VM)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(load_lab(lab_path), {"web": vm})
    assert run_cli("deploy", *FILES_ONLY, lab=lab_path).exit_code == 0
    data = vm.home_dir / "homelab" / "data" / "stacks"
    mine = "mkdir -p stacks/mine data/stacks/mine && echo keep > data/stacks/mine/keep.txt"  # made by hand
    for stack in ("portainer", "traefik"):
        mine += f" && echo db > data/stacks/{stack}/{stack}.db"
    vm.exec(["su", "homelab", "-c", f"cd /home/homelab && {mine}"])
    result = run_cli("stack", "remove", "portainer", "--vm", "web", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (data / "portainer" / "portainer.db").is_file(), "removed: its data kept"
    lab_text = lab_path.read_bytes()

    result = run_cli("stack", "remove", "portainer", "--vm", "web", "--purge-data", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "web does not run portainer (the lab file stays as it is); the data its removal kept goes:" in result.stdout
    assert "  - web: /home/homelab/data/stacks/portainer/ (DATA DELETED FOR GOOD: --purge-data)" in result.stdout
    assert "web: changed Delete kept data (--purge-data)" in result.stdout
    assert not (data / "portainer").exists()
    assert (data / "traefik" / "traefik.db").is_file() and (data / "mine" / "keep.txt").is_file()
    assert lab_path.read_bytes() == lab_text

    result = run_cli("stack", "remove", "portainer", "--vm", "web", "--purge-data", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Nothing to change." in result.stdout
    assert "web: nothing deleted: no /home/homelab/data/stacks/portainer there" in result.stdout
    # a folder of that name in the stacks folder (here one made by hand): its data is not homelab's to delete
    result = run_cli("stack", "remove", "mine", "--vm", "web", "--purge-data", *FILES_ONLY, lab=lab_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "web: nothing deleted" in result.stdout and (data / "mine" / "keep.txt").is_file()
