"""A lab's own stack through the deploy, for real: dockerd inside an SSH test host (see test_deploy_docker.py),
a small image built there offline, the stack found beside the lab file.

Its container writes into STATE_DIR (/home/<user>/data/stacks/<name>); a state folder of the earlier layout
(inside the stack folder) moves there on the first deploy; a redeploy after the compose file changed keeps
what the container wrote; removing the stack stops it and deletes its folder but keeps its data; only
--purge-data deletes the data.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from homelab.deploy.plan import DeployOptions
from homelab.deploy.service import deploy_stacks
from homelab.lab.loader import load_lab
from homelab.lab.models import Lab
from homelab.stacks import catalogue
from tests.harness.docker import busybox_image, containers, dockerd, needs_dockerd
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.labs import lab_data, write_lab
from tests.harness.vms import provision

pytestmark = pytest.mark.integration

STACK_YML = """\
description: Notes, a stack of the lab's own (the deploy test's)
category: Productivity
version_var: NOTES_VERSION
host_ids: true
state: [data]
settings: [{name: NOTE, default: hello, description: what the container writes}]
"""
COMPOSE = """\
services:
  notes:
    image: "homelab-notes:${NOTES_VERSION:-1.0.0}"
    restart: unless-stopped
    user: "${PUID:-1000}:${PGID:-1000}"
    command: ["sh", "-c", "echo $${NOTE} >> /data/note.txt; trap 'exit 0' TERM; sleep 600 & wait"]
    environment:
      NOTE: "${NOTE:-hello}"
    volumes:
      - "${STATE_DIR:-./state}/data:/data"
    networks: [homelab]
networks:
  homelab:
    external: true
"""


@needs_dockerd
def test_a_lab_stack_deploys_keeps_its_data_on_removal_and_purges_only_when_asked(
    tmp_path: Path, ssh_hosts: HostFactory
) -> None:
    folder = tmp_path / "lab" / "stacks" / "notes"
    folder.mkdir(parents=True)
    (folder / "stack.yml").write_text(STACK_YML)
    (folder / "compose.yml").write_text(COMPOSE)
    path = tmp_path / "lab" / "lab.yml"

    def lab_with(stacks: list[str], note: str = "hello") -> Lab:
        data = lab_data(vms=[{"name": "web", "ip": "10.10.0.10", "stacks": stacks}], domain="lab.example")
        data["stacks"] = {"notes": {"env": {"NOTE": note}}}
        write_lab(path, data)
        catalogue.cache_clear()
        return load_lab(path)

    lab = lab_with(["notes"])
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(lab, {"web": vm})
    # an earlier deployment kept the state inside the stack folder: it moves to STATE_DIR, never deleted
    old = "mkdir -p /home/homelab/stacks/notes/data && echo old > /home/homelab/stacks/notes/data/old.txt"
    vm.exec(["su", "homelab", "-c", old])
    state = vm.home_dir / "homelab" / "data" / "stacks" / "notes"

    def note() -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (state / "data" / "note.txt").exists() and (state / "data" / "note.txt").read_text():
                return (state / "data" / "note.txt").read_text()
            time.sleep(0.2)
        return ""

    options = DeployOptions(extra_vars={"homelab_docker_become": False, "homelab_data_become": False})
    with dockerd(vm, group="homelab"):
        busybox_image(vm, tmp_path, "homelab-notes:1.0.0", sh=True)

        lines: list[str] = []
        result = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert result.ok and result.run is not None, "\n".join(lines)
        assert containers(vm)["notes"]["State"]["Running"]
        assert note() == "hello\n"
        assert (state / "data" / "old.txt").read_text() == "old\n"  # moved...
        assert not (vm.home_dir / "homelab" / "stacks" / "notes" / "data").exists()  # ...not copied
        uid = vm.exec(["id", "-u", "homelab"]).stdout.strip()
        assert vm.exec(["stat", "-c", "%u", str(state), f"{state}/data"]).stdout.split() == [uid, uid]

        # the compose file changes (a new setting value): the container is recreated, the data stays
        lab = lab_with(["notes"], note="again")
        lines.clear()
        result = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert result.ok, "\n".join(lines)
        deadline = time.monotonic() + 20
        while note() != "hello\nagain\n" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert note() == "hello\nagain\n"

        # removed from the lab: compose down, folder gone, data kept (and the preview said so)
        lab = lab_with([])
        lines.clear()
        result = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert result.ok, "\n".join(lines)
        assert (
            "  - web: stack notes (compose down, folder removed); its data is kept in "
            + ("/home/homelab/data/stacks/notes")
            in lines
        ), "\n".join(lines)
        assert "notes" not in containers(vm)
        assert not (vm.home_dir / "homelab" / "stacks" / "notes").exists()
        assert (state / "data" / "note.txt").read_text() == "hello\nagain\n"

        # back again: it finds its data; then removed with --purge-data: the data goes, in words first
        lab = lab_with(["notes"], note="again")
        assert deploy_stacks(lab, lines.append, lambda question: None, options).ok
        assert note().startswith("hello\nagain\n")
        lab = lab_with([])
        lines.clear()
        purge = DeployOptions(extra_vars=options.extra_vars, purge_data=("notes",))
        result = deploy_stacks(lab, lines.append, lambda question: None, purge)
        assert result.ok, "\n".join(lines)
        assert any("AND ALL ITS DATA IS DELETED FOR GOOD: /home/homelab/data/stacks/notes" in line for line in lines)
        assert not state.exists() and (vm.home_dir / "homelab" / "data" / "stacks").is_dir()
