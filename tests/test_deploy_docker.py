"""`docker compose up` through the deploy, for real: dockerd inside an SSH test host, an image built offline.

No image can be pulled here, so the test makes one: a static busybox imported and tagged as every image the
stacks pin (their default tags). The shipped compose files and their rendered .env then start it on the
networks the stacks role creates; swapping portainer for homepage in the lab takes its container down. dockerd
runs in the host's own mount and network namespaces: /run is a tmpfs there (its socket stays inside), its data
lives in the host's /home, and the cgroup hierarchies are mounted there (``ip netns exec`` hides the
machine's). The homelab user owns the socket group, so the role runs docker without sudo
(homelab_docker_become=false). The docker role runs as on a baked VM: it finds Docker and compose (the
machine's, through the shared /usr) and installs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from homelab.adapters.ansible import AnsibleRunner, OnEvent, RunOutcome, RunRequest, TaskEvent
from homelab.deploy.plan import DeployOptions
from homelab.deploy.service import deploy_stacks
from homelab.deploy.stackfiles import secret_specs
from homelab.stackimages import pinned_images
from homelab.stacks import catalogue
from homelab.state.stacksecrets import known
from tests.harness.docker import busybox_image, containers, dockerd, needs_dockerd
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.labs import make_lab
from tests.harness.vms import provision

pytestmark = pytest.mark.integration


class Recording(AnsibleRunner):
    """The real runner, keeping every task event it reports."""

    def __init__(self, events: list[Any]) -> None:
        super().__init__()
        self.events = events

    def run(self, request: RunRequest, on_event: OnEvent) -> RunOutcome:
        def both(event: TaskEvent) -> None:
            self.events.append(event)
            on_event(event)

        return super().run(request, both)


@needs_dockerd
def test_deploy_starts_the_stacks_with_compose_swaps_one_and_a_second_deploy_changes_nothing(
    tmp_path: Path, ssh_hosts: HostFactory
) -> None:
    web = {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "portainer", "media"]}
    stacks = {"media": {"env": {"DATA_ROOT": "/home/homelab/data/media"}}}  # homelab may make it without sudo
    lab = make_lab(vms=[web], domain="lab.example", stacks=stacks)
    (vm,) = ssh_hosts(1, per_user_keys=True)
    provision(lab, {"web": vm})
    uid, gid = (vm.exec(["id", flag, "homelab"]).stdout.strip() for flag in ("-u", "-g"))

    with dockerd(vm, group="homelab"):
        entrypoint = '["/bin/busybox", "sh", "-c", "trap \\"exit 0\\" TERM; /bin/busybox sleep 600 & wait", "sh"]'
        busybox_image(vm, tmp_path, "busybox:test", entrypoint)
        for image, _, tag in {pin for name in catalogue() for pin in pinned_images(name)}:
            vm.exec(["docker", "tag", "busybox:test", f"{image}:{tag}"])  # every image the stacks pin, offline

        # A fresh VM: the preview runs to the end (new stack folders and all) and says something would change.
        options = DeployOptions(extra_vars={"homelab_docker_become": False, "homelab_data_become": False})
        lines: list[str] = []
        check = deploy_stacks(lab, lines.append, lambda question: None, options, check_only=True)
        assert check.ok and check.would_change, "\n".join(lines)  # `homelab deploy --check` exits 3
        assert "  + web: /home/homelab/stacks/media/.env (new file)" in lines
        assert "  ~ web: Stack secrets (0600 files; not shown)" in lines

        lines.clear()
        result = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert result.ok and result.run is not None, "\n".join(lines)
        assert any("web: ok Look for Docker and compose" in line for line in lines), lines
        assert not any("Install Docker" in line or "Read the distribution" in line for line in lines), lines
        assert any("web: changed Create the homelab networks: homelab-socket" in line for line in lines), lines
        assert any("web: changed Compose up: traefik" in line for line in lines), lines
        running = containers(vm)
        assert sorted(running) == sorted(
            [
                "traefik",
                "socket-proxy",
                "portainer",
                "jellyfin",
                "sonarr",
                "radarr",
                "prowlarr",
                "bazarr",
                "jellyseerr",
                "qbittorrent",
            ]
        )
        assert all(c["State"]["Running"] for c in running.values())

        # Nothing claimable, one socket user besides Portainer: the read-only proxy on an internal network.
        def socket_users() -> set[str]:
            return {
                name
                for name, c in containers(vm).items()
                if any(m["Source"].endswith("docker.sock") for m in c["Mounts"])
            }

        assert socket_users() == {"socket-proxy", "portainer"}
        assert list(running["socket-proxy"]["NetworkSettings"]["Networks"]) == ["homelab-socket"]
        assert (
            vm.exec(["docker", "network", "inspect", "-f", "{{.Internal}}", "homelab-socket"]).stdout.strip() == "true"
        )
        password = known(lab, "portainer", secret_specs(lab, "portainer"))["PORTAINER_ADMIN_PASSWORD"].value
        host_file = "/home/homelab/stacks/portainer/secrets/PORTAINER_ADMIN_PASSWORD"
        assert vm.exec(["stat", "-c", "%U %a", host_file]).stdout.split() == ["homelab", "600"]
        assert running["portainer"]["Args"][-2:] == ["--admin-password-file", "/secrets/PORTAINER_ADMIN_PASSWORD"]
        inside = vm.exec(
            ["docker", "exec", running["portainer"]["Id"], "/bin/busybox", "cat", "/secrets/PORTAINER_ADMIN_PASSWORD"]
        )
        assert inside.stdout == password
        assert all(password not in json.dumps(c) for c in running.values())  # not in any container's config
        labels = running["jellyfin"]["Config"]["Labels"]
        assert labels["traefik.http.routers.jellyfin.entrypoints"] == "websecure"
        assert labels["traefik.http.routers.jellyfin.tls"] == "true"

        # Each stack's state in STATE_DIR, made by the deploy and owned by the user before any container started
        owners = vm.exec(
            ["stat", "-c", "%U", "/home/homelab/data/stacks/traefik/acme", "/home/homelab/data/stacks/media/sonarr"]
        )
        assert owners.stdout.split() == ["homelab", "homelab"]
        mounts = {m["Destination"]: m["Source"] for m in running["sonarr"]["Mounts"]}
        assert mounts["/config"] == "/home/homelab/data/stacks/media/sonarr"

        # The media stack: /data owned by the VM's user, the same mount everywhere, hardlinks across it.
        tree = vm.exec(["sh", "-c", "cd /home/homelab/data/media && stat -c '%n %U %a' . */ */*/"]).stdout
        tree = tree.split("\n")
        assert sorted(line.split()[0] for line in tree if line) == [
            ".",
            "media/",
            "media/movies/",
            "media/tv/",
            "torrents/",
            "torrents/movies/",
            "torrents/tv/",
        ]
        assert {tuple(line.split()[1:]) for line in tree if line} == {("homelab", "2775")}
        env = dict(item.split("=", 1) for item in running["sonarr"]["Config"]["Env"])
        assert (env["PUID"], env["PGID"], env["UMASK"]) == (uid, gid, "002")
        link = (
            "cd /data && /bin/busybox touch torrents/tv/episode.mkv && /bin/busybox ln torrents/tv/episode.mkv "
            "media/tv/episode.mkv && /bin/busybox stat -c '%h %u' media/tv/episode.mkv"
        )
        made = vm.exec(
            ["docker", "exec", "-u", f"{uid}:{gid}", running["sonarr"]["Id"], "/bin/busybox", "sh", "-c", link]
        )
        assert made.stdout.split() == ["2", uid]
        seen = [
            "docker",
            "exec",
            running["jellyfin"]["Id"],
            "/bin/busybox",
            "stat",
            "-c",
            "%h",
            "/data/media/tv/episode.mkv",
        ]
        assert vm.exec(seen).stdout.strip() == "2"  # Jellyfin sees the same file through the same mount

        # portainer and homepage swap places in one edit: the preview still runs, the removal is not skipped.
        lab = make_lab(vms=[dict(web, stacks=["traefik", "homepage", "media"])], domain="lab.example", stacks=stacks)
        lines.clear()
        swapped = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert (
            swapped.ok
            and "  - web: stack portainer (compose down, folder removed); its data is kept in "
            "/home/homelab/data/stacks/portainer"
            in lines
        ), "\n".join(lines)
        assert any("web: changed Compose down: portainer" in line for line in lines), lines
        assert any("web: changed Compose up: homepage" in line for line in lines), lines
        assert "portainer" not in containers(vm) and "homepage" in containers(vm)
        assert not (vm.home_dir / "homelab" / "stacks" / "portainer").exists()
        assert socket_users() == {"socket-proxy"}  # Homepage reads the proxy, not the socket
        assert "homelab-socket" in containers(vm)["homepage"]["NetworkSettings"]["Networks"]

        # Nothing changed and every service runs: the preview says so per host ("Stacks to start" answers ok),
        # and the deploy ends there, with no question and no second play.
        lines.clear()
        events: list[Any] = []
        again = deploy_stacks(
            lab, lines.append, lambda question: pytest.fail(question), options, runner=Recording(events)
        )
        assert again.ok and again.run is None and "Nothing to change." in lines, "\n".join(lines)
        assert again.preview is not None and again.preview.hosts["web"].stats.changed == 0
        assert [e.kind for e in events if e.task == "Stacks to start"] == ["ok"]
        # A stopped service is something to start: the preview names it, the deploy starts it again.
        vm.exec(["docker", "stop", containers(vm)["homepage"]["Id"]])
        lines.clear()
        restarted = deploy_stacks(lab, lines.append, lambda question: None, options)
        assert "  ~ web: Stacks to start" in lines, "\n".join(lines)
        assert any("web: changed Compose up: homepage" in line for line in lines), lines
        assert containers(vm)["homepage"]["State"]["Running"] and restarted.ok
        lines.clear()
        after = deploy_stacks(lab, lines.append, lambda question: None, options, check_only=True)
        assert after.ok and not after.would_change, "\n".join(lines)  # `homelab deploy --check` exits 0
