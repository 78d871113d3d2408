"""The deploy stage's logic against a fake playbook runner: targets, preview, confirm, run, summary, failures;
and the conversion of ansible-runner's job events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from homelab.adapters.ansible import (
    FileDiff,
    HostStats,
    RunRequest,
    TaskEvent,
    to_host_stats,
    to_task_event,
)
from homelab.deploy.plan import DeployOptions, deployed_vms, prepare
from homelab.deploy.report import HostChange as Change
from homelab.deploy.service import deploy_stacks
from homelab.errors import Aborted, InputError, OperationError
from homelab.lab.models import Lab
from homelab.state.hosts import Host, save_hosts
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, make_lab, write_lab
from tests.harness.playbooks import FakeRunner, Script, inventory_hosts, use_fake_runner

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFOr7xB0Q1YhYyH8nEIpwoZzvvz4cLyYWpaT3wKJ7rpv"
VMS = [
    {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik", "portainer"]},
    {"name": "db", "ip": "10.10.0.11", "stacks": ["portainer"]},
    {"name": "spare", "ip": "10.10.0.12"},
]


def new_file(host: str, path: str) -> TaskEvent:
    return TaskEvent("changed", host, "Stack files", diffs=(FileDiff(path, "new", "", "X=1\n"),))


def fresh_then_done(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
    """Both hosts need their files in check mode and get them in the real run."""
    events = [new_file(h, f"/home/homelab/stacks/{h}/.env") for h in ("web", "db")]
    return events, {h: HostStats(ok=1, changed=1) for h in ("web", "db")}


def all_ok(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
    return [TaskEvent("ok", h, "Stack files") for h in ("web", "db")], {h: HostStats(ok=1) for h in ("web", "db")}


@pytest.fixture
def lab() -> Lab:
    lab = make_lab(vms=VMS, domain="lab.example")
    save_hosts(
        lab,
        [Host("web", "10.77.1.2", "homelab", host_key=KEY_A), Host("db", "10.77.2.2", "homelab", host_key=KEY_B)],
    )
    return lab


class Recorder:
    def __init__(self, refuse: bool = False):
        self.lines: list[str] = []
        self.questions: list[str] = []
        self.refuse = refuse

    def echo(self, line: str) -> None:
        self.lines.append(line)

    def confirm(self, question: str) -> None:
        self.questions.append(question)
        if self.refuse:
            raise Aborted("Nothing was changed.")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


FILES_ONLY = DeployOptions(install_packages=False, start_stacks=False)


def test_preview_then_confirm_then_run_with_pinned_inventory(lab: Lab, tmp_path: Path) -> None:
    runner = FakeRunner(fresh_then_done)
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert [r.check for r in runner.requests] == [True, False]
    assert out.questions == ["Deploy to 2 VM(s)?"]
    assert result.ok and [h.name for h in result.hosts] == ["web", "db"]
    assert "  web (10.77.1.2): traefik, portainer" in out.lines
    assert "  + db: /home/homelab/stacks/db/.env (new file)" in out.lines
    assert "  web: ok (ok=1 changed=1 failed=0 unreachable=0)" in out.lines
    extravars = dict(runner.requests[0].extravars)
    secrets_file = Path(extravars.pop("homelab_secrets_file"))  # portainer's admin password, traefik's login
    assert extravars == {
        "homelab_install_packages": False,
        "homelab_start_stacks": False,
        "homelab_docker_source": "docker",
    }
    # outside the deploy's workdir (inventory, artifacts), and gone once the deploy is over
    assert tmp_path / "state" / "test" / "deploy" not in secrets_file.parents and not secrets_file.exists()
    assert runner.requests[0].playbook.name == "deploy.yml" and runner.requests[0].playbook.is_file()
    hosts = runner.hosts[1]
    assert sorted(hosts) == ["db", "web"]  # spare lists no stacks
    known_hosts = tmp_path / "state" / "test" / "deploy" / "known_hosts"
    assert known_hosts.read_text() == f"10.77.1.2 {KEY_A}\n10.77.2.2 {KEY_B}\n"
    assert f"UserKnownHostsFile={known_hosts}" in hosts["web"]["ansible_ssh_common_args"]
    assert hosts["web"]["ansible_ssh_private_key_file"] == str(tmp_path / "state" / "test" / "ssh" / "id_ed25519")


def test_nothing_to_change_asks_nothing_and_runs_nothing(lab: Lab) -> None:
    runner = FakeRunner(all_ok)
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert [r.check for r in runner.requests] == [True] and out.questions == []
    assert "Nothing to change." in out.lines and result.ok and result.run is None
    assert "  db: ok (ok=1 changed=0 failed=0 unreachable=0)" in out.lines


def web_stopped(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
    """The preview finds every file as it should be, and a stack on web with a service not running."""
    events, stats = all_ok(request)
    if request.check:
        events.append(TaskEvent("changed", "web", "Stacks to start"))
        stats["web"] = HostStats(ok=2, changed=1)
    return events, stats


def test_starting_stacks_is_a_change_that_is_asked_for(lab: Lab) -> None:
    runner = FakeRunner(web_stopped)
    out = Recorder(refuse=True)
    with pytest.raises(Aborted):
        deploy_stacks(lab, out.echo, out.confirm, DeployOptions(), runner=runner)
    assert [r.check for r in runner.requests] == [True]  # refused: the real run never happened
    assert runner.requests[0].extravars["homelab_start_stacks"] is True
    assert "Stacks: the homelab network made, then `docker compose up -d` in each" in out.lines
    assert "  ~ web: Stacks to start" in out.lines and out.questions == ["Deploy to 2 VM(s)?"]


def test_running_stacks_with_nothing_to_change_run_no_second_play(lab: Lab) -> None:
    """Where the preview's "Stacks to start" finds every service running (no change) and no file differs, the
    deploy asks nothing and runs nothing more: a re-deploy costs one check-mode play."""
    runner = FakeRunner(all_ok)
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, DeployOptions(), runner=runner)
    assert [r.check for r in runner.requests] == [True] and out.questions == []
    assert "Nothing to change." in out.lines and result.ok and result.run is None


def test_a_host_with_another_host_key_fails_by_name_and_the_other_deploys(lab: Lab) -> None:
    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        msg = "Failed to connect to the host via ssh: Host key verification failed."
        events = [
            TaskEvent("unreachable", "db", "Stack files", message=msg),
            new_file("web", "/home/homelab/stacks/traefik/.env"),
        ]
        return events, {"web": HostStats(ok=1, changed=1), "db": HostStats(unreachable=1)}

    out = Recorder()
    with pytest.raises(OperationError, match=r"failed on db \(Stack files\); the other VMs are deployed"):
        deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=FakeRunner(script))
    summary = out.lines[out.lines.index("Summary:") :]
    assert summary[1] == "  web: ok (ok=1 changed=1 failed=0 unreachable=0)"
    assert summary[2].startswith("  db: FAILED at 'Stack files': Failed to connect to the host via ssh: Host key")
    assert "homelab apply" in summary[2]  # the hint says how to re-pin a rebuilt VM
    assert any(line.startswith("  ! db: cannot check: Stack files") for line in out.lines)


def unreachable(*hosts: str) -> Script:
    """The check run cannot reach ``hosts``; the others are fine and need no change."""

    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        names = list(inventory_hosts(request))
        events = [
            TaskEvent("unreachable", h, "Stack files", message="Failed to connect to the host via ssh: timed out")
            if h in hosts
            else TaskEvent("ok", h, "Stack files")
            for h in names
        ]
        return events, {h: HostStats(unreachable=1) if h in hosts else HostStats(ok=1) for h in names}

    return script


def test_a_preview_that_could_not_reach_the_vm_is_an_error_never_no_change(lab: Lab) -> None:
    save_hosts(lab, [Host("web", "10.77.1.2", "homelab", host_key=KEY_A)])
    runner = FakeRunner(unreachable("web"))
    out = Recorder()
    with pytest.raises(OperationError, match=r"^the deploy failed on web \(Stack files\)$"):
        deploy_stacks(lab, out.echo, out.confirm, DeployOptions(vms=("web",)), runner=runner)
    assert not any("would change" in line for line in out.lines)
    assert "  ! web: cannot check: Stack files: Failed to connect to the host via ssh: timed out" in out.lines
    assert out.questions == [] and [r.check for r in runner.requests] == [True]  # never asked, never run
    assert "Nothing to deploy: the preview could not reach any VM." in out.lines
    assert out.lines[-1].startswith("  web: FAILED at 'Stack files': Failed to connect")


def test_no_change_is_said_only_of_the_vms_the_preview_reached(lab: Lab) -> None:
    runner = FakeRunner(unreachable("db"))
    out = Recorder()
    with pytest.raises(OperationError, match=r"failed on db \(Stack files\); the other VMs are deployed"):
        deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert "  (no file or package would change)" not in out.lines
    assert "  (no file or package would change on web)" in out.lines and "Nothing to change on web." in out.lines
    assert out.questions == [] and len(runner.requests) == 1
    summary = out.lines[out.lines.index("Summary:") :]
    assert summary[1] == "  web: ok (ok=1 changed=0 failed=0 unreachable=0)"
    assert summary[2].startswith("  db: FAILED at 'Stack files': Failed to connect to the host via ssh")


def test_the_deploy_asks_for_and_goes_to_only_the_vms_the_preview_could_reach(lab: Lab) -> None:
    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        events, stats = unreachable("db")(request)
        if request.check:  # web has a stack to start: a change
            events.append(TaskEvent("changed", "web", "Stacks to start"))
        return events, stats

    runner = FakeRunner(script)
    out = Recorder()
    with pytest.raises(OperationError, match=r"failed on db \(Stack files\); the other VMs are deployed"):
        deploy_stacks(lab, out.echo, out.confirm, DeployOptions(), runner=runner)
    assert out.questions == ["Deploy to 1 VM(s)? (db could not be reached: not deployed)"]
    assert [r.check for r in runner.requests] == [True, False]
    assert sorted(runner.hosts[1]) == ["web"]  # db gets nothing it was not previewed for
    assert deployed_vms(lab) == {"web"}


def test_a_vm_the_preview_reached_is_deployed_even_if_its_check_stopped_at_a_task(lab: Lab) -> None:
    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        if not request.check:
            return all_ok(request)
        # on a fresh VM, check mode cannot chdir into a stack folder it did not make
        stopped = TaskEvent("failed", "db", "Compose up", message="Unable to change directory before execution.")
        return [TaskEvent("ok", "web", "Stack files"), stopped], {"web": HostStats(ok=1), "db": HostStats(failed=1)}

    runner = FakeRunner(script)
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, DeployOptions(), runner=runner)
    assert "  ! db: cannot check: Compose up: Unable to change directory before execution." in out.lines
    assert "  (no file or package would change on web)" in out.lines  # db's check did not finish: not said of it
    assert out.questions == ["Deploy to 2 VM(s)?"] and sorted(runner.hosts[1]) == ["db", "web"]
    assert result.ok


def test_vms_without_a_recorded_or_pinned_host_are_failures_and_are_never_contacted(lab: Lab) -> None:
    save_hosts(lab, [Host("web", "10.77.1.2", "homelab", host_key=None)])
    deployment = prepare(lab, FILES_ONLY)
    assert [(t.name, t.problem is not None) for t in deployment.targets] == [("web", True), ("db", True)]
    assert "not pinned" in (deployment.targets[0].problem or "")
    assert "run `homelab apply` first" in (deployment.targets[1].problem or "")
    runner = FakeRunner(all_ok)
    out = Recorder()
    with pytest.raises(OperationError, match=r"failed on web .*, db"):
        deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert runner.requests == []


def test_only_the_named_vms_and_requirement_notes(lab: Lab) -> None:
    deployment = prepare(lab, DeployOptions(vms=("db",)))
    assert [t.name for t in deployment.targets] == ["db"]
    assert deployment.warnings == ("db: portainer is reached through traefik, which this VM does not run",)
    with pytest.raises(InputError, match="no VM named 'nope'"):
        prepare(lab, DeployOptions(vms=("nope",)))
    with pytest.raises(InputError, match="'spare' lists no stacks"):
        prepare(lab, DeployOptions(vms=("spare",)))


def test_check_only_stops_after_the_preview(lab: Lab) -> None:
    runner = FakeRunner(fresh_then_done)
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner, check_only=True)
    assert [r.check for r in runner.requests] == [True] and out.questions == []
    assert result.preview is not None and len(result.preview.changes) == 2


def test_a_play_that_never_starts_is_an_error_with_ansibles_last_lines(lab: Lab) -> None:
    broken = FakeRunner(all_ok, never_starts=("ERROR! the role 'docker' was not found",))
    with pytest.raises(OperationError, match="before the play started") as caught:
        deploy_stacks(lab, Recorder().echo, Recorder().confirm, FILES_ONLY, runner=broken)
    assert "role 'docker' was not found" in str(caught.value)


def test_a_lab_without_stacks_skips_the_stage() -> None:
    lab = make_lab(vms=[{"name": "spare", "ip": "10.10.0.12"}], domain="lab.example")
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, runner=FakeRunner(all_ok))
    assert result.skipped and out.lines == ["Skipped: no VM in the lab file lists stacks."]


def test_changes_describe_themselves_with_their_diff() -> None:
    assert Change("web", "/x/stacks/traefik", "new folder").describe() == "+ web: /x/stacks/traefik/ (new folder)"
    assert Change("web", "/x/.env", "attributes", "A\n", "A\n").describe() == "~ web: /x/.env (mode or owner)"
    changed = Change("web", "/x/.env", "content", "A=1\nB=2\n", "A=1\nB=3\n")
    assert changed.describe() == "~ web: /x/.env" and changed.diff_lines() == ["-B=2", "+B=3"]
    assert Change("web", "Install docker.io and compose").describe() == "~ web: Install docker.io and compose"


# Shapes of ansible-runner's job events, as it writes them to artifacts/<ident>/job_events.
def test_runner_events_become_task_events() -> None:
    homelab_files = {
        "event": "runner_on_ok",
        "event_data": {
            "host": "web",
            "task": "Stack files",
            "res": {
                "changed": True,
                "diff": [
                    {
                        "before_header": "/h/stacks",
                        "after_header": "/h/stacks",
                        "before": {"path": "/h/stacks", "state": "absent"},
                        "after": {"path": "/h/stacks", "state": "directory"},
                        "homelab_change": "new folder",
                    },
                    {
                        "before_header": "/h/stacks/.env",
                        "after_header": "/h/stacks/.env",
                        "before": "A=1\n",
                        "after": "A=2\n",
                        "homelab_change": "content",
                    },
                ],
            },
        },
    }
    event = to_task_event(homelab_files)
    assert event is not None and event.kind == "changed" and event.task == "Stack files"
    assert event.diffs == (FileDiff("/h/stacks", "new folder"), FileDiff("/h/stacks/.env", "content", "A=1\n", "A=2\n"))

    item = {
        "event": "runner_item_on_ok",
        "event_data": {"host": "db", "task": "Compose up", "res": {"changed": False, "_ansible_item_label": "traefik"}},
    }
    assert to_task_event(item) == TaskEvent("ok", "db", "Compose up", item="traefik")
    loop = {"event": "runner_on_ok", "event_data": {"host": "db", "task": "Compose up", "res": {"results": []}}}
    event = to_task_event(loop)
    assert event is not None and event.loop

    unreachable = {
        "event": "runner_on_unreachable",
        "event_data": {
            "host": "db",
            "task": "Stack files",
            "res": {"msg": "Failed to connect to the host via ssh: Host key verification failed.", "unreachable": True},
        },
    }
    event = to_task_event(unreachable)
    assert event is not None and event.kind == "unreachable" and "Host key verification failed" in event.message
    failed = {
        "event": "runner_on_failed",
        "event_data": {
            "host": "web",
            "task": "Compose up",
            "res": {"msg": "non-zero return code", "stderr": "a\nboom"},
        },
    }
    event = to_task_event(failed)
    assert event is not None and event.message == "non-zero return code: boom"
    # compose v1 says why only above its last line
    failed["event_data"]["res"]["stderr"] = (
        "Creating traefik_socket-proxy_1 ... \nCreating traefik_socket-proxy_1 ... error\n\n"
        "ERROR: for traefik_socket-proxy_1  Cannot start service socket-proxy: port is already allocated\n\n"
        "ERROR: for socket-proxy  Cannot start service socket-proxy: port is already allocated\n"
        "ERROR: Encountered errors while bringing up the project."
    )
    event = to_task_event(failed)
    assert event is not None
    assert event.message == (
        "non-zero return code: ERROR: for traefik_socket-proxy_1 Cannot start service socket-proxy: port is already "
        "allocated; ERROR: for socket-proxy Cannot start service socket-proxy: port is already allocated; "
        "ERROR: Encountered errors while bringing up the project."
    )
    ignored = {"event": "runner_on_failed", "event_data": {"host": "web", "task": "t", "ignore_errors": True}}
    event = to_task_event(ignored)
    assert event is not None and event.kind == "ok"
    assert to_task_event({"event": "playbook_on_task_start", "event_data": {"task": "x"}}) is None
    assert to_task_event({"event": "verbose", "stdout": "..."}) is None


def test_runner_stats_become_host_stats() -> None:
    stats = {"ok": {"web": 3, "db": 1}, "changed": {"web": 1}, "failures": {}, "dark": {"db": 1}, "skipped": {}}
    assert to_host_stats(stats) == {"db": HostStats(ok=1, unreachable=1), "web": HostStats(ok=3, changed=1)}
    assert to_host_stats(None) == {}


@pytest.fixture
def lab_file(lab: Lab, tmp_path: Path) -> Path:
    return write_lab(tmp_path / "lab.yml", lab_data(vms=VMS, domain="lab.example"))


def test_cli_deploy_check_exits_3_when_something_would_change(lab_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = use_fake_runner(monkeypatch, FakeRunner(fresh_then_done))
    result = run_cli("deploy", "--check", lab=lab_file)
    assert result.exit_code == 3 and "+ web: /home/homelab/stacks/web/.env (new file)" in result.stdout
    assert [r.check for r in fake.requests] == [True]
    use_fake_runner(monkeypatch, FakeRunner(all_ok))
    assert run_cli("deploy", "--check", "--no-start", lab=lab_file).exit_code == 0


def test_cli_deploy_without_a_terminal_needs_yes(lab_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = use_fake_runner(monkeypatch, FakeRunner(fresh_then_done))
    result = run_cli("deploy", "--no-install-docker", lab=lab_file)
    assert result.exit_code == 2 and "pass --yes" in result.stderr
    assert [r.check for r in fake.requests] == [True]  # only the read-only preview ran
    assert fake.requests[0].extravars["homelab_install_packages"] is False
    result = run_cli("deploy", "--yes", "--vm", "web", lab=lab_file)
    assert result.exit_code == 0 and [r.check for r in fake.requests] == [True, True, False]
    assert list(fake.hosts[-1]) == ["web"]


def test_cli_stack_list_with_and_without_a_lab(lab_file: Path, tmp_path: Path) -> None:
    result = run_cli("stack", "list", lab=tmp_path / "missing.yml")
    assert result.exit_code == 0 and "on:" not in result.stdout
    assert re.search(r"^portainer +Management +Portainer CE", result.stdout, re.M)  # columns as wide as the longest
    result = run_cli("stack", "list", lab=lab_file)
    assert (
        result.exit_code == 0
        and "on: web, db  https://portainer.lab.example" in result.stdout
        and "on: not in the lab" in result.stdout
    )
    result = run_cli("stack", "list", "--json", lab=lab_file)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["traefik"]["vms"] == ["web"] and rows["media"]["requires"] == ["traefik"]


def test_cli_stack_add_then_deploys_only_that_vm(lab_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = use_fake_runner(monkeypatch, FakeRunner(fresh_then_done))
    result = run_cli("stack", "add", "traefik", "--vm", "db", "--yes", "--no-start", lab=lab_file)
    assert result.exit_code == 0, result.stdout
    assert "added traefik to db." in result.stdout
    assert yaml.safe_load(lab_file.read_text())["vms"][1]["stacks"] == ["portainer", "traefik"]
    assert list(fake.hosts[-1]) == ["db"]
    result = run_cli("stack", "add", "traefik", "--vm", "db", "--no-deploy", lab=lab_file)
    assert result.exit_code == 0 and "db already runs traefik; the file is unchanged." in result.stdout
    result = run_cli("stack", "add", "homepage", "--vm", "spare", "--no-deploy", lab=lab_file)
    assert result.exit_code == 0 and "added homepage to spare (and traefik, which it needs)." in result.stdout
    assert yaml.safe_load(lab_file.read_text())["vms"][2]["stacks"] == ["traefik", "homepage"]
    result = run_cli("stack", "add", "portaner", "--no-deploy", lab=lab_file)
    assert result.exit_code == 2 and "unknown stack 'portaner'; did you mean 'portainer'?" in result.stderr
