"""Stacks a VM no longer lists: which folders homelab may take away (data in, removals out), how the deploy
previews, confirms and runs them against a fake runner, the deploy record of VMs that got stacks, and the
homelab_files module's own checks on the host side (run here against a temporary folder)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from homelab.adapters.ansible import FileDiff, HostStats, RunRequest, TaskEvent, to_task_event
from homelab.deploy.plan import DeployOptions, deployed_file, deployed_vms, prepare
from homelab.deploy.removed import MARKER, RemoveStack, marker_text, read_marker, removed_stacks
from homelab.deploy.service import deploy_stacks
from homelab.errors import InputError, OperationError
from homelab.state.hosts import Host, save_hosts
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, make_lab, write_lab
from tests.harness.playbooks import FakeRunner, inventory_hosts, use_fake_runner

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
WEB = {"name": "web", "ip": "10.10.0.10", "stacks": ["traefik"]}
SPARE = {"name": "spare", "ip": "10.10.0.12"}  # lists no stacks
SPARE_WITH_TRAEFIK = dict(SPARE, stacks=["traefik"])
MARK = {name: marker_text("test", name) for name in ("traefik", "media", "portainer")}

# (what the VM lists, the markers found under its stacks folder) -> the stacks to remove
CASES: dict[str, tuple[list[str], dict[str, str], list[str]]] = {
    "nothing dropped": (["traefik", "media"], {"traefik": MARK["traefik"], "media": MARK["media"]}, []),
    "one dropped": (["traefik"], {"traefik": MARK["traefik"], "media": MARK["media"]}, ["media"]),
    "all dropped, in name order": ([], dict(reversed(MARK.items())), ["media", "portainer", "traefik"]),
    "another lab's folder": ([], {"media": marker_text("other", "media")}, []),
    "a copy under another name": ([], {"media-old": MARK["media"]}, []),
    "a marker naming no stack": ([], {"mine": "lab=test\n"}, []),
    "a marker made by hand": ([], {"mine": "# mine\nlab = test\nstack = mine\n"}, ["mine"]),
    "a commented-out marker": ([], {"media": "#lab=test\n#stack=media\n"}, []),
    "no markers at all": ([], {}, []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_which_stacks_leave_the_vm(case: str) -> None:
    listed, markers, expected = CASES[case]
    assert [r.stack for r in removed_stacks("web", "test", listed, markers)] == expected


def test_removals_describe_what_happens() -> None:
    assert read_marker(marker_text("test", "media")) == ("test", "media")
    assert read_marker("stack=media\n") is None
    state = "/home/homelab/data/stacks/media"
    kept_data = "; its data is kept in /home/homelab/data/stacks/media"
    assert (
        RemoveStack("web", "media", state=state).describe()
        == f"- web: stack media (compose down, folder removed){kept_data}"
    )
    purged = RemoveStack("web", "media", state=state, purge=True).describe()
    assert "ALL ITS DATA IS DELETED FOR GOOD: /home/homelab/data/stacks/media" in purged and "no undo" in purged
    no_start = RemoveStack("web", "media", compose_down=False, state=state)
    assert (
        no_start.describe() == "- web: stack media (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/media"
    )
    kept = removed_stacks("web", "test", [], {"media": MARK["media"]}, keep=True)
    assert [r.describe() for r in kept] == ["= web: stack media kept (no longer in the lab file; --keep-removed)"]


def with_markers(markers: dict[str, dict[str, str]], fail: tuple[str, ...] = ()) -> FakeRunner:
    """Plays the playbook: each run reports ``markers`` per host; the real run removes what it is told;
    the hosts in ``fail`` cannot be reached."""

    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        events: list[TaskEvent] = []
        stats: dict[str, HostStats] = {}
        for name, entry in inventory_hosts(request).items():
            if name in fail:
                events.append(TaskEvent("unreachable", name, "Stack files", message="No route to host"))
                stats[name] = HostStats(unreachable=1)
                continue
            found = tuple(sorted(markers.get(name, {}).items()))
            events.append(TaskEvent("ok", name, "Stack files", markers=found))
            removed = entry["homelab_remove_stacks"]
            if removed and not request.check:
                events.append(TaskEvent("changed", name, "Remove stack folders"))
            stats[name] = HostStats(ok=1 + bool(removed), changed=int(bool(removed)))
        return events, stats

    return FakeRunner(script)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.questions: list[str] = []

    def echo(self, line: str) -> None:
        self.lines.append(line)

    def confirm(self, question: str) -> None:
        self.questions.append(question)


@pytest.fixture(autouse=True)
def recorded_hosts(isolated_homelab_dirs: Path) -> None:
    """Both VMs as apply leaves them: recorded, with their host keys pinned (the record is the lab "test"'s)."""
    hosts = [Host("web", "10.77.1.2", "homelab", host_key=KEY), Host("spare", "10.77.3.2", "homelab", host_key=KEY)]
    save_hosts(make_lab(vms=[WEB, SPARE]), hosts)


FILES_ONLY = DeployOptions(install_packages=False, start_stacks=False)


def test_a_dropped_stack_is_previewed_confirmed_and_removed_exactly_as_previewed() -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"], "mine": "lab=test\n"}})
    out = Recorder()
    result = deploy_stacks(lab, out.echo, out.confirm, DeployOptions(), runner=runner)
    assert (
        "  - web: stack media (compose down, folder removed); its data is kept in "
        "/home/homelab/data/stacks/media" in out.lines
    )
    assert (
        "Stacks no longer listed: `docker compose down`, then their folder is deleted; their data in "
        "/home/homelab/data/stacks/<name> is kept" in out.lines
    )
    assert out.questions == ["Deploy to 1 VM(s)?"] and [r.check for r in runner.requests] == [True, False]
    assert runner.hosts[0]["web"]["homelab_remove_stacks"] == []  # the check run removes nothing
    assert runner.hosts[1]["web"]["homelab_remove_stacks"] == ["media"]
    assert runner.hosts[1]["web"]["homelab_lab"] == "test"
    assert result.ok and [r.stack for r in result.to_remove] == ["media"]


def test_the_vms_losing_stacks_are_snapshotted_after_the_question_and_before_the_run() -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"]}})
    out = Recorder()
    seen: list[tuple[list[str], int, int]] = []
    hook = lambda vms: seen.append((list(vms), len(runner.requests), len(out.questions)))  # noqa: E731
    deploy_stacks(lab, out.echo, out.confirm, DeployOptions(before_removal=hook), runner=runner)
    assert seen == [(["web"], 1, 1)], "once, for web, after the check run and the question, before the run"
    assert "  snapshot web first, data disk included (settings.snapshot_before_changes)" in out.lines
    assert [r.check for r in runner.requests] == [True, False]


def test_a_snapshot_that_fails_stops_the_deploy_before_anything_is_removed() -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"]}})

    def hook(vms: object) -> None:
        raise OperationError("snapshot of web failed: storage does not support snapshots")

    with pytest.raises(OperationError, match="snapshot of web failed"):
        deploy_stacks(lab, Recorder().echo, Recorder().confirm, DeployOptions(before_removal=hook), runner=runner)
    assert [r.check for r in runner.requests] == [True], "nothing ran after the failed snapshot"


def test_nothing_but_a_removal_is_still_a_change_and_check_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"]}})
    out = Recorder()
    deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert (
        "  - web: stack media (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/media" in out.lines
    )
    assert "  (no file or package would change)" not in out.lines
    assert [r.check for r in runner.requests] == [True, False]

    lab_file = tmp_path / "lab.yml"
    write_lab(lab_file, lab_data(vms=[WEB, SPARE]))
    use_fake_runner(monkeypatch, runner)
    result = run_cli("deploy", "--check", "--no-start", lab=lab_file)
    assert (
        result.exit_code == 3
        and "  - web: stack media (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/media"
        in result.stdout
    )
    result = run_cli("deploy", "--check", "--no-start", "--keep-removed", lab=lab_file)
    assert result.exit_code == 0 and "  = web: stack media kept (no longer in the lab file; --keep-removed)" in (
        result.stdout
    )


def test_keep_removed_leaves_them_and_says_so() -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"]}})
    out = Recorder()
    result = deploy_stacks(
        lab, out.echo, out.confirm, DeployOptions(start_stacks=False, keep_removed=True), runner=runner
    )
    assert "  = web: stack media kept (no longer in the lab file; --keep-removed)" in out.lines
    assert "  (no file or package would change)" in out.lines and "Nothing to change." in out.lines
    assert [r.check for r in runner.requests] == [True] and out.questions == []
    assert "  note: web: stack media is no longer in the lab file; kept there (--keep-removed)" in out.lines
    assert result.to_remove == [] and [r.stack for r in result.kept] == ["media"]


def test_a_host_the_preview_could_not_check_gets_no_removals() -> None:
    lab = make_lab(vms=[WEB, SPARE_WITH_TRAEFIK])
    runner = with_markers({"web": {"media": MARK["media"]}, "spare": {"media": MARK["media"]}}, fail=("spare",))
    out = Recorder()
    with pytest.raises(OperationError, match="failed on spare"):
        deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=runner)
    assert [line for line in out.lines if line.startswith("  - ")] == [
        "  - web: stack media (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/media"
    ]
    assert runner.hosts[1]["web"]["homelab_remove_stacks"] == ["media"]
    assert "spare" not in runner.hosts[1]  # the run never goes to a VM the preview could not reach


def test_a_vm_that_lists_no_stacks_any_more_is_cleared_while_the_record_names_it() -> None:
    lab = make_lab(vms=[WEB, SPARE_WITH_TRAEFIK])
    runner = with_markers({})
    deploy_stacks(lab, Recorder().echo, Recorder().confirm, FILES_ONLY, runner=runner)
    assert deployed_vms(lab) == {"web", "spare"}  # both got stacks

    lab = make_lab(vms=[WEB, SPARE])
    deployment = prepare(lab, FILES_ONLY)
    assert [(t.name, t.clear_only) for t in deployment.targets] == [("web", False), ("spare", True)]
    assert prepare(lab, DeployOptions(vms=("spare",))).targets[0].clear_only

    kept = with_markers({"spare": {"traefik": MARK["traefik"]}})
    out = Recorder()
    deploy_stacks(lab, out.echo, out.confirm, DeployOptions(start_stacks=False, keep_removed=True), runner=kept)
    assert "  spare (10.77.3.2): no stacks (those deployed before are removed)" in out.lines
    assert kept.hosts[0]["spare"]["homelab_stacks"] == [] and kept.hosts[0]["spare"]["homelab_stack_files"] == []
    assert deployed_vms(lab) == {"web", "spare"}  # its stack was kept: still homelab's to clear later

    cleared = with_markers({"spare": {"traefik": MARK["traefik"]}})
    out = Recorder()
    deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=cleared)
    assert (
        "  - spare: stack traefik (folder removed; no compose down: --no-start); its data is kept in "
        "/home/homelab/data/stacks/traefik" in out.lines
    )
    assert cleared.hosts[1]["spare"]["homelab_remove_stacks"] == ["traefik"]
    assert deployed_vms(lab) == {"web"}
    assert json.loads(deployed_file(lab).read_text()) == {"vms": ["web"]}
    assert [t.name for t in prepare(lab, FILES_ONLY).targets] == ["web"]  # spare is left alone from now on
    with pytest.raises(InputError, match="'spare' lists no stacks"):
        prepare(lab, DeployOptions(vms=("spare",)))


def test_a_vm_that_failed_keeps_its_record() -> None:
    lab = make_lab(vms=[WEB, SPARE_WITH_TRAEFIK])
    deploy_stacks(lab, Recorder().echo, Recorder().confirm, FILES_ONLY, runner=with_markers({}))
    lab = make_lab(vms=[WEB, SPARE])
    with pytest.raises(OperationError, match="failed on spare"):
        deploy_stacks(lab, Recorder().echo, Recorder().confirm, FILES_ONLY, runner=with_markers({}, fail=("spare",)))
    assert deployed_vms(lab) == {"web", "spare"}
    deployed_file(lab).write_text("not json")
    assert deployed_vms(lab) == frozenset()  # an unreadable record clears nothing


def test_no_deploy_record_reads_as_no_deploy_yet_and_a_malformed_one_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lab = make_lab(vms=[WEB, SPARE])
    assert not deployed_file(lab).exists()
    assert deployed_vms(lab) == frozenset()
    out = Recorder()
    assert deploy_stacks(lab, out.echo, out.confirm, FILES_ONLY, runner=with_markers({})).ok
    assert capsys.readouterr().err == "", "a first deploy says nothing of a deploy record"
    assert not any("deploy record" in line for line in out.lines)
    deployed_file(lab).write_text('["web"]')
    assert deployed_vms(lab) == frozenset()
    said = capsys.readouterr().err
    assert 'the deploy record is not {"vms": [...]}' in said and "the next deploy writes a new record" in said


def test_the_runner_reports_the_markers_homelab_files_found() -> None:
    res = {"changed": False, "stack_markers": {"media": "lab=test\nstack=media\n", "traefik": "x"}}
    event = to_task_event({"event": "runner_on_ok", "event_data": {"host": "web", "task": "Stack files", "res": res}})
    assert event is not None and event.markers == (("media", "lab=test\nstack=media\n"), ("traefik", "x"))
    other = to_task_event({"event": "runner_on_ok", "event_data": {"host": "web", "task": "Compose up", "res": {}}})
    assert other is not None and other.markers is None


ROLE = Path(__file__).parent.parent / "stacks/ansible/roles/stacks"


def with_role_module_utils() -> None:
    """Let ``ansible.module_utils.homelab_*`` resolve to the stacks role's module_utils, as Ansible ships them
    with the role's modules."""
    import ansible.module_utils

    if str(ROLE / "module_utils") not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(ROLE / "module_utils"))


def homelab_files() -> ModuleType:
    pytest.importorskip("ansible")
    with_role_module_utils()
    path = ROLE / "library/homelab_files.py"
    spec = importlib.util.spec_from_file_location("homelab_files_module", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_on_the_host_reports_and_removes_only_marked_folders(tmp_path: Path) -> None:
    module = homelab_files()
    assert module.MARKER == MARKER
    root = tmp_path / "stacks"
    for name in ("media", "mine", "linked-marker"):
        (root / name).mkdir(parents=True)
    (root / "media" / MARKER).write_text(MARK["media"])
    (root / "media" / "config").mkdir()
    (root / "media" / "config" / "db.sqlite").write_text("data")
    (root / "mine" / "compose.yml").write_text("services: {}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / MARKER).write_text(marker_text("test", "linked"))
    os.symlink(outside, root / "linked")  # a symlinked folder is not one homelab made
    os.symlink(outside / MARKER, root / "linked-marker" / MARKER)
    (root / "file").write_text("x")
    assert module._markers(str(root)) == {"media": MARK["media"]}
    assert module._markers(str(tmp_path / "missing")) == {}
    for name, (lab, stack) in {"media": ("test", "media"), "mine": (None, None)}.items():
        text = module._marker(str(root / name))
        assert (module._owner(text) if text else (None, None)) == (lab, stack)
        if text:
            assert read_marker(text) == (lab, stack)  # the module's copy reads markers as homelab does

    checking = SimpleNamespace(check_mode=True)
    changes: list[dict[str, Any]] = []
    assert module._remove_stack(checking, str(root), "media", "test", changes)
    assert (root / "media").is_dir() and changes[0]["homelab_change"] == "removed stack"
    running = SimpleNamespace(check_mode=False)
    for name, lab in (("mine", "test"), ("linked", "test"), ("media", "other"), ("absent", "test")):
        assert not module._remove_stack(running, str(root), name, lab, [])
    with pytest.raises(ValueError, match="not a folder name"):
        module._remove_stack(running, str(root), "../stacks", "test", [])
    assert module._remove_stack(running, str(root), "media", "test", [])
    assert sorted(p.name for p in root.iterdir()) == ["file", "linked", "linked-marker", "mine"]
    assert (outside / MARKER).is_file()


def test_the_module_deletes_kept_data_only_of_a_stack_with_no_folder_left(tmp_path: Path) -> None:
    module = homelab_files()
    root, data = tmp_path / "stacks", tmp_path / "data" / "stacks"
    for folder in (root / "media", data / "media", data / "gone" / "db", data / "elsewhere"):
        folder.mkdir(parents=True)
    (data / "gone" / "db" / "x.sqlite").write_text("data")
    checking, running = SimpleNamespace(check_mode=True), SimpleNamespace(check_mode=False)
    changes: list[dict[str, Any]] = []
    assert module._purge_kept(checking, str(root), "gone", str(data / "gone"), changes)
    assert (data / "gone" / "db" / "x.sqlite").is_file(), "check mode deletes nothing"
    assert [c["homelab_change"] for c in changes] == ["data deleted (--purge-data)"]
    assert changes[0]["before_header"] == str(data / "gone")
    # a stack with a folder under the stacks folder (deployed, or one homelab did not remove) keeps its data
    assert not module._purge_kept(running, str(root), "media", str(data / "media"), [])
    assert not module._purge_kept(running, str(root), "absent", str(data / "absent"), [])  # nothing there
    with pytest.raises(ValueError, match="not the state folder of stack elsewhere"):
        module._purge_kept(running, str(root), "elsewhere", str(tmp_path / "data"), [])
    with pytest.raises(ValueError, match="not a folder name"):
        module._purge_kept(running, str(root), "../data", str(data), [])
    assert module._purge_kept(running, str(root), "gone", str(data / "gone"), [])
    assert sorted(p.name for p in data.iterdir()) == ["elsewhere", "media"]


def purging(kept_data: dict[str, list[str]]) -> FakeRunner:
    """Plays the playbook: each host's ``homelab_purge_kept`` stacks whose data ``kept_data`` says is there are
    deleted (reported in the preview, done in the real run)."""

    def script(request: RunRequest) -> tuple[list[TaskEvent], dict[str, HostStats]]:
        events: list[TaskEvent] = []
        for name, entry in inventory_hosts(request).items():
            events.append(TaskEvent("ok", name, "Stack files", markers=()))
            paths = [path for stack, path in entry["homelab_purge_kept"].items() if stack in kept_data.get(name, [])]
            if paths:
                diffs = tuple(FileDiff(path, "data deleted (--purge-data)") for path in paths)
                events.append(TaskEvent("changed", name, "Delete kept data (--purge-data)", diffs=diffs))
        return events, {name: HostStats(ok=2) for name in inventory_hosts(request)}

    return FakeRunner(script)


def test_purge_data_of_a_stack_removed_before_previews_snapshots_and_deletes_its_kept_data() -> None:
    lab = make_lab(vms=[WEB, SPARE])  # neither lists media any more
    runner = purging({"spare": ["media"]})
    out = Recorder()
    seen: list[list[str]] = []
    options = DeployOptions(vms=("spare",), purge_data=("media",), before_removal=lambda vms: seen.append(list(vms)))
    result = deploy_stacks(lab, out.echo, out.confirm, options, runner=runner)
    assert result.ok
    # spare lists no stacks and has no deploy record: it is a target all the same, for its kept data
    assert [list(hosts) for hosts in runner.hosts] == [["spare"], ["spare"]]
    kept = {"media": "/home/homelab/data/stacks/media"}
    assert [h["spare"]["homelab_purge_kept"] for h in runner.hosts] == [kept, kept]
    assert [h["spare"]["homelab_remove_stacks"] for h in runner.hosts] == [[], []]
    assert "  - spare: /home/homelab/data/stacks/media/ (DATA DELETED FOR GOOD: --purge-data)" in out.lines
    assert "  snapshot spare first, data disk included (settings.snapshot_before_changes)" in out.lines
    assert out.questions == ["Deploy to 1 VM(s)?"] and seen == [["spare"]]
    assert deployed_vms(lab) == frozenset(), "deleting kept data puts no stack on the VM"


def test_purge_data_never_names_a_listed_stack_or_one_this_deploy_removes() -> None:
    lab = make_lab(vms=[WEB, SPARE])
    runner = with_markers({"web": {"traefik": MARK["traefik"], "media": MARK["media"]}})
    options = DeployOptions(vms=("web",), purge_data=("traefik", "media", "old"))
    deploy_stacks(lab, Recorder().echo, Recorder().confirm, options, runner=runner)
    assert [h["web"]["homelab_purge_kept"] for h in runner.hosts] == [
        {"media": "/home/homelab/data/stacks/media", "old": "/home/homelab/data/stacks/old"},  # the module looks
        {"old": "/home/homelab/data/stacks/old"},  # media's folder is removed in this run, its data with it
    ]
    assert runner.hosts[1]["web"]["homelab_purge_state"] == {"media": "/home/homelab/data/stacks/media"}
    keep = DeployOptions(vms=("web",), purge_data=("old",), keep_removed=True)
    runner = with_markers({"web": {"traefik": MARK["traefik"]}})
    deploy_stacks(lab, Recorder().echo, Recorder().confirm, keep, runner=runner)
    assert runner.hosts[0]["web"]["homelab_purge_kept"] == {}
