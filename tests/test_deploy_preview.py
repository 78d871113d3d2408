"""The preview's one module run per VM (stacks/ansible/roles/stacks/tasks/preview.yml): homelab_files run as
Ansible runs it (its arguments as JSON, in check mode) on a folder here reports each public file's change with
its diff, the stack secrets only as changed or not (masked in what it echoes back), and whether any container
the stacks start is not running. The playbook around it runs against SSH test hosts in test_deploy_hosts.py,
test_deploy_docker.py and test_deploy_secrets.py."""

from __future__ import annotations

import base64
import importlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.test_deploy_removed import ROLE, homelab_files, with_role_module_utils

MODULE = ROLE / "library/homelab_files.py"
SECRET = "s3cret-Value-9f8e7d"


def run_module(args: dict[str, Any], check: bool) -> dict[str, Any]:
    """The module's JSON result, run as a script with Ansible's argument file (the ansible-core of the tests)."""
    pytest.importorskip("ansible")
    path = Path(args["root"]).parent / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check}}))
    # as Ansible ships it: the module with the role's module_utils beside ansible's own
    boot = (
        "import sys, runpy, ansible.module_utils as m; m.__path__.append(sys.argv.pop(1)); "
        "sys.argv[0] = sys.argv[1]; runpy.run_path(sys.argv.pop(1), run_name='__main__')"
    )
    argv = [sys.executable, "-c", boot, str(ROLE / "module_utils"), str(MODULE), str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    assert not result.get("failed"), result
    return result


def entry(path: str, text: str, mode: str = "0644") -> dict[str, Any]:
    return {"path": path, "mode": mode, "content_b64": base64.b64encode(text.encode()).decode()}


def test_one_check_reports_files_with_diffs_and_secrets_only_as_changed(tmp_path: Path) -> None:
    root = tmp_path / "stacks"
    secrets = {"dirs": ["web/secrets"], "files": [entry("web/secrets/TOKEN", SECRET, "0600")], "seeds": []}
    args = {
        "root": str(root),
        "owner": pwd.getpwuid(os.geteuid()).pw_name,
        "dirs": ["web"],
        "files": [entry("web/.env", "A=1\n")],
        "secrets": json.dumps(secrets),
    }
    first = run_module(args, check=True)
    assert first["changed"] and first["secrets_changed"]
    assert [(d["after_header"], d["homelab_change"]) for d in first["diff"]] == [
        (str(root), "new folder"),
        (str(root / "web"), "new folder"),
        (str(root / "web/.env"), "new"),
    ]
    assert SECRET not in json.dumps(first) and SECRET not in base64.b64encode(json.dumps(first).encode()).decode()
    assert first["invocation"]["module_args"]["secrets"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert not root.exists(), "check mode writes nothing"
    assert "docker_missing" not in first and "to_start" not in first  # not asked

    run_module(args, check=False)  # the real run writes what the check showed, secrets included
    assert (root / "web/secrets/TOKEN").read_text() == SECRET
    again = run_module(args, check=True)
    assert not again["changed"] and not again["secrets_changed"] and again["diff"] == []

    (root / "web/secrets/TOKEN").write_text("changed by hand")
    (root / "web/.env").write_text("A=2\n")
    drift = run_module(args, check=True)
    assert drift["secrets_changed"]
    assert [(d["homelab_change"], d["before"], d["after"]) for d in drift["diff"]] == [("content", "A=2\n", "A=1\n")]


def homelab_host() -> ModuleType:
    """The role's module_utils the module asks the host with (Docker, containers, the data disk)."""
    pytest.importorskip("ansible")
    with_role_module_utils()
    return importlib.import_module("ansible.module_utils.homelab_host")


def test_stacks_to_start_is_any_listed_container_not_running() -> None:
    module = homelab_host()

    def docker(rc: int, out: str) -> SimpleNamespace:
        def run_command(argv: list[str], handle_exceptions: bool = True) -> tuple[int, str, str]:
            assert argv[:4] == ["docker", "ps", "--filter", "status=running"] and not handle_exceptions
            return rc, out, ""

        return SimpleNamespace(run_command=run_command)

    def no_docker(argv: list[str], handle_exceptions: bool = True) -> tuple[int, str, str]:
        raise FileNotFoundError("docker")

    wanted = ["traefik/traefik", "traefik/socket-proxy"]
    assert not module.to_start(docker(0, "traefik/socket-proxy\ntraefik/traefik\nother/x\n"), wanted)
    assert module.to_start(docker(0, "traefik/traefik\n"), wanted)
    assert module.to_start(docker(1, ""), wanted)  # Docker does not answer: all to start
    assert module.to_start(SimpleNamespace(run_command=no_docker), wanted)  # no Docker at all


@pytest.mark.parametrize(
    ("dockerd", "compose_v1", "compose_v2", "missing"),
    [(True, True, False, False), (True, False, True, False), (True, False, False, True), (False, True, True, True)],
)
def test_docker_is_missing_without_the_engine_or_compose(
    monkeypatch: pytest.MonkeyPatch, dockerd: bool, compose_v1: bool, compose_v2: bool, missing: bool
) -> None:
    module = homelab_host()
    monkeypatch.setattr(module.os, "access", lambda path, mode: dockerd and path == "/usr/sbin/dockerd")
    found = {"docker-compose"} if compose_v1 else set()
    monkeypatch.setattr(module.shutil, "which", lambda name: f"/usr/bin/{name}" if name in found else None)
    calls: list[list[str]] = []

    def run_command(argv: list[str], handle_exceptions: bool = True) -> tuple[int, str, str]:
        calls.append(argv)
        return (0 if compose_v2 else 1), "", ""

    assert module.docker_missing(SimpleNamespace(run_command=run_command)) is missing
    assert all(argv == ["docker", "compose", "version"] for argv in calls)


def test_the_fstab_line_is_replaced_where_the_label_is_else_added() -> None:
    host = homelab_host()
    line = "LABEL=homelab-data /home/u/data ext4 defaults,nofail 0 2"
    assert host.with_fstab_line("", "homelab-data", "/home/u/data") == line + "\n"
    base = "UUID=1 / ext4 defaults 0 1\n"
    assert host.with_fstab_line(base, "homelab-data", "/home/u/data") == base + line + "\n"
    old = base + "LABEL=homelab-data /srv ext4 defaults 0 2\n# LABEL=homelab-data kept\n"
    assert host.with_fstab_line(old, "homelab-data", "/home/u/data") == base + line + "\n# LABEL=homelab-data kept\n"
    as_is = base + line  # already there, no newline at the end: lineinfile leaves it, and so does this
    assert host.with_fstab_line(as_is, "homelab-data", "/home/u/data") == as_is
    assert (
        host.with_fstab_line(base, "homelab-data-2", "/x")
        == base + "LABEL=homelab-data-2 /x ext4 defaults,nofail 0 2\n"
    )


def test_the_data_disk_check_says_what_the_datadisk_tasks_would_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = homelab_host()
    module = homelab_files()
    device, folder, fstab = tmp_path / "disk", tmp_path / "data", tmp_path / "fstab"
    disk = {"device": str(device), "label": "homelab-data", "dir": str(folder)}
    blkid: dict[str, tuple[int, str, str]] = {}

    def run_command(argv: list[str]) -> tuple[int, str, str]:
        assert argv == ["blkid", "-o", "value", "-s", "TYPE", str(device)]
        return blkid["answer"]

    def fail_json(msg: str) -> None:
        raise AssertionError(msg)

    fake = SimpleNamespace(run_command=run_command, fail_json=fail_json)

    def kinds() -> list[tuple[str, str]]:
        found = host.data_disk_changes(fake, disk, os.geteuid(), module._change, fstab=str(fstab))
        return [(entry["after_header"], entry["homelab_change"]) for entry in found]

    assert kinds() == []  # no disk: nothing (the tasks skip it too)
    device.write_bytes(b"")
    blkid["answer"] = (2, "", "")  # no file system on it
    assert kinds() == [
        (str(device), "format"),
        (str(folder), "new folder"),
        (str(fstab), "content"),
        (str(folder), "mount"),
    ]
    blkid["answer"] = (0, "ext4\n", "")
    folder.mkdir()
    fstab.write_text(host.fstab_line("homelab-data", str(folder)) + "\n")
    assert kinds() == [(str(folder), "mount")]  # a folder here is not a mount point
    monkeypatch.setattr(host.os.path, "ismount", lambda path: path == str(folder))
    folder.chmod(0o755)
    assert kinds() == []  # mounted, in fstab, the user's: nothing to do
    folder.chmod(0o700)
    assert kinds() == [(str(folder), "attributes")]  # "The login user owns it" sets 0755
    blkid["answer"] = (4, "", "cannot read")
    with pytest.raises(AssertionError, match="blkid exited 4: cannot read"):
        kinds()
