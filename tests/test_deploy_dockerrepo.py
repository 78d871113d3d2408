"""The docker role installs Docker from Docker's apt repository, or a mirror the lab names, on an SSH test host.

Docker's repository cannot be reached here, so the repository is a local stand-in (tests/harness/dockerrepo.py):
signed with a throwaway key and laid out like download.docker.com/linux/debian, its packages named and versioned
like Docker's (docker-ce, docker-ce-cli, containerd.io, docker-buildx-plugin, docker-compose-plugin) but
**stand-ins** that carry no Docker code and depend on Debian's containerd, runc and docker-compose (installed on
this machine; Debian's docker.io conflicts with docker-ce, so installing them replaces it, as on a VM that
switches from the distribution's Docker to Docker's). The lab points at it with ``docker.repository`` (the
setting a user with a mirror sets); the key comes from ``<repository>/gpg`` as from Docker.

The role's package tasks (roles/docker/tasks/packages.yml) run with real apt and dpkg on a test host whose
``/usr``, ``/var/lib`` and ``/var/cache`` are overlays (their upper layers in the test's folder), as ``/etc`` and
``/var/log`` already are, and a ``/run`` of its own with a policy-rc.d that lets no package start or stop a
service: nothing reaches the machine's own. The host hides the machine's apt sources and its
dockerd and docker-compose, so it looks like a VM without Docker. Starting the daemon (systemd) is not run:
the test host has no systemd.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.adapters.ansible import AnsibleRunner, RunRequest, TaskEvent
from homelab.deploy.service import docker_vars, playbook
from tests.harness.dockerrepo import PACKAGES, VERSION, RepoServer, build_repo, repo_support
from tests.harness.hosts import SshHost, host_support, make_host
from tests.harness.labs import make_lab

pytestmark = pytest.mark.integration

LAYERS = ("/usr", "/var/lib", "/var/cache")
POLICY = "/usr/sbin/policy-rc.d"  # 101: no maintainer script starts or stops a service


def overlay_mounts(layers: Path) -> list[str]:
    """Shell commands (run in the host's mount namespace before sshd) giving it its own /usr, /var/lib,
    /var/cache; a failed mount stops the host from starting (never a host that writes to the machine's)."""
    commands = ["mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd || exit 1"]
    for target in LAYERS:
        upper, work = layers / target.strip("/").replace("/", "-"), layers / (target.strip("/") + "-work")
        opts = f"lowerdir={target},upperdir={upper},workdir={work}"
        commands.append(
            f"mkdir -p {shlex.quote(str(upper))} {shlex.quote(str(work))} && "
            f"mount -t overlay overlay -o {shlex.quote(opts)} {target} || exit 1"
        )
    return commands


def run_packages(host: SshHost, workdir: Path, extravars: dict[str, Any]) -> list[TaskEvent]:
    """The docker role's packages.yml on ``host`` as root (no sudo here: the role's become is off)."""
    tasks = playbook().parent / "roles" / "docker"
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"name": "Read the distribution", "ansible.builtin.setup": {"gather_subset": ["min"]}},
                {"ansible.builtin.include_role": {"name": str(tasks), "tasks_from": "packages.yml"}},
            ],
        }
    ]
    workdir.mkdir(parents=True)
    (workdir / "play.yml").write_text(yaml.safe_dump(play))
    ssh = f"-F none -o IdentitiesOnly=yes -o UserKnownHostsFile={host.known_hosts_file} -o StrictHostKeyChecking=yes"
    inventory = {
        "all": {
            "hosts": {
                "vm": {
                    "ansible_host": host.address,
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(host.client_key),
                    "ansible_ssh_common_args": ssh,
                    "ansible_become": False,  # a variable beats the tasks' become keyword
                    "ansible_python_interpreter": "/usr/bin/python3",
                }
            }
        }
    }
    (workdir / "inventory.yml").write_text(yaml.safe_dump(inventory))
    events: list[TaskEvent] = []
    with AnsibleRunner() as runner:
        request = RunRequest(workdir / "play.yml", workdir / "inventory.yml", workdir / "run", extravars)
        runner.run(request, events.append)
    return events


def test_the_role_adds_the_signed_repository_and_installs_dockers_packages_from_it(tmp_path: Path) -> None:
    reason = host_support() or repo_support()
    if reason:
        pytest.skip(reason)
    repo = build_repo(tmp_path / "repo")
    host = make_host("dock", tmp_path / "hosts", 1, extra_mounts=overlay_mounts(tmp_path / "layers"))
    try:
        for target in (*LAYERS, "/etc"):  # everything below changes only the host's upper layers
            assert host.exec(["findmnt", "-n", "-o", "FSTYPE", target]).stdout.strip() == "overlay", target
        assert host.exec(["findmnt", "-n", "-o", "FSTYPE", "/run"]).stdout.strip() == "tmpfs"
        hide = "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* /usr/sbin/dockerd /usr/bin/docker-compose"
        host.exec(["sh", "-c", f"{hide} && printf '#!/bin/sh\\nexit 101\\n' > {POLICY} && chmod 755 {POLICY}"])
        with RepoServer(repo, host.machine_address) as server:
            lab = make_lab(docker={"repository": f"{server.url}/linux/{{distribution}}"})
            extravars = docker_vars(lab.docker)
            assert extravars == {
                "homelab_docker_source": "docker",
                "homelab_docker_repository": f"{server.url}/linux/{{distribution}}",
            }
            events = run_packages(host, tmp_path / "play", extravars)
            failed = [e for e in events if e.kind in ("failed", "unreachable")]
            assert failed == [], [(e.task, e.message) for e in failed]
            asked = set(server.paths)
        keyring = host.exec(["cat", "/etc/apt/keyrings/docker.asc"]).stdout
        assert keyring == repo.key and "BEGIN PGP PUBLIC KEY BLOCK" in keyring
        source = host.exec(["cat", "/etc/apt/sources.list.d/docker.sources"]).stdout
        fields = dict(line.split(": ", 1) for line in source.splitlines() if ": " in line)
        assert fields["URIs"] == f"{server.url}/linux/debian" and fields["Suites"] == "bookworm"
        assert fields["Components"] == "stable" and fields["Signed-By"] == "/etc/apt/keyrings/docker.asc"
        assert {"/linux/debian/gpg", "/linux/debian/dists/bookworm/InRelease"} <= asked
        for name in PACKAGES:
            shown = host.exec(["dpkg-query", "-W", "-f=${Status} ${Version}", name]).stdout
            assert shown == f"install ok installed {VERSION}", name
        replaced = host.exec(["dpkg-query", "-W", "-f=${db:Status-Status}", "docker.io"], check=False).stdout
        assert replaced in ("not-installed", "config-files")  # the distribution's engine made way
        changed = {e.task for e in events if e.kind == "changed"}
        assert {"Docker's signing key", "Docker's repository", "Install Docker and compose"} <= changed

        # A repository signed by another key than the one the source trusts: apt refuses it, the role fails.
        host.exec(["sh", "-c", "dpkg --purge docker-ce docker-ce-cli containerd.io docker-compose-plugin"])
        other = build_repo(tmp_path / "other")
        with RepoServer(other, host.machine_address) as server:
            wrong_key = docker_vars(make_lab(docker={"repository": f"{server.url}/linux/{{distribution}}"}).docker)
            wrong_key["homelab_docker_key_url"] = f"{server.url}/nowhere-else/gpg"
            (other.root / "nowhere-else").mkdir()
            (other.root / "nowhere-else" / "gpg").write_text(repo.key)  # the first repository's key
            events = run_packages(host, tmp_path / "play-wrong-key", wrong_key)
        failed = [e for e in events if e.kind == "failed"]
        assert [e.task for e in failed] == ["Install Docker and compose"], [(e.task, e.message) for e in events]
        assert "NO_PUBKEY" in failed[0].message or "not signed" in failed[0].message, failed[0].message
        assert "not-installed" in host.exec(["dpkg-query", "-W", "-f=${db:Status-Status}", "docker-ce"]).stdout
    finally:
        host.stop()
