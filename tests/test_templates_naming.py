"""Version names, tags and the description line; cloud image checksums; the subprocess helper."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from homelab.adapters.process import ToolFailed, ToolMissing, run
from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.marks import (
    describe_template,
    join_tags,
    mark_line,
    parse_mark,
    split_tags,
    template_tags,
)
from homelab.adapters.proxmox.versions import find_versions, parse_version_name
from homelab.errors import OperationTimeout
from homelab.templates.facts import VmidRangeFull, next_free_vmid
from homelab.templates.images import Image, checksum_from_list, image_filename, image_for
from homelab.templates.naming import new_version
from tests.harness.labs import make_lab


def test_a_version_is_the_utc_minute_and_only_ever_grows() -> None:
    local = datetime(2026, 11, 2, 9, 15, 59, tzinfo=timezone(timedelta(hours=1)))
    assert new_version(local) == "202611020815"
    assert new_version(local, ["202611020815"]) == "202611020816"
    assert new_version(local, ["202611022359"]) == "202611030000"  # a clock that went back
    assert new_version(local, ["202611010000"]) == "202611020815"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base-202611020815", "202611020815"),
        ("base-20261102081", None),
        ("base-202613020815", None),  # month 13
        ("base-extra-202611020815", None),
        ("basement-202611020815", None),
        ("base", None),
    ],
)
def test_version_names(name: str, expected: str | None) -> None:
    assert parse_version_name("base", name) == expected


def test_tags() -> None:
    assert template_tags("home") == ["homelab-template", "homelab-home"]
    assert split_tags("homelab-template;homelab-home, x") == ("homelab-template", "homelab-home", "x")
    assert join_tags(["b", "a", "b"]) == "a;b"


def test_the_description_line_round_trips_and_reads_apply_s_vm_lines() -> None:
    record = {"lab": "home", "template": "base", "version": "202611020815", "checksum": "sha256:" + "0" * 64}
    text = describe_template(record)
    assert text.splitlines()[0] == "homelab template base version 202611020815 (lab home)"
    assert len(text.splitlines()) == 2 and parse_mark(text) == record
    assert mark_line(record).startswith('homelab: {"lab": "home"')
    vm = 'Managed by homelab.\nhomelab: {"lab":"home","state":"ready","template":"base","version":"1","vm":"web"}'
    assert parse_mark(vm) == {"lab": "home", "state": "ready", "template": "base", "version": "1", "vm": "web"}
    assert parse_mark("homelab: {broken") is None
    assert parse_mark(None) is None


def test_versions_are_found_by_name_among_templates_only() -> None:
    guests = [
        Guest(9003, "pve1", "base-202611020815", True),
        Guest(9001, "pve1", "base-202601010000", True),
        Guest(120, "pve1", "base-202612010000", False),  # a VM, not a template
        Guest(9002, "pve1", "other-202612010000", True),
    ]
    assert [v.vmid for v in find_versions(guests, "base")] == [9001, 9003]
    assert next_free_vmid(guests, (9001, 9010)) == 9004
    with pytest.raises(VmidRangeFull, match="template prune"):
        next_free_vmid(guests, (9001, 9001))


SUMS = (
    f"{'1' * 128}  debian-12-genericcloud-amd64.json\n"
    f"{'2' * 128}  debian-12-genericcloud-amd64.qcow2\n"
    f"{'3' * 64} *noble-server-cloudimg-amd64.img\n"
)


def test_checksums_come_from_the_list_beside_the_image() -> None:
    assert checksum_from_list(SUMS, "debian-12-genericcloud-amd64.qcow2") == "2" * 128
    assert checksum_from_list(SUMS, "noble-server-cloudimg-amd64.img") == "3" * 64
    assert checksum_from_list(SUMS, "missing.qcow2") is None
    fetched: list[str] = []

    def fetch(url: str) -> str:
        fetched.append(url)
        return SUMS

    lab = make_lab(templates=[{"name": "base", "os": "ubuntu-24.04"}])
    image = image_for(lab.templates[0], fetch)
    assert image.algorithm == "sha256" and image.checksum == "3" * 64 and image.url.endswith("amd64.img")
    assert fetched == [fetched[0]] and fetched[0].endswith("/SHA256SUMS")
    pinned = make_lab(
        templates=[{"name": "base", "image": {"url": "https://x.example/a.raw", "checksum": "sha256:" + "f" * 64}}]
    )
    assert image_for(pinned.templates[0], fetch) == Image("https://x.example/a.raw", "sha256", "f" * 64)
    assert len(fetched) == 1


def test_image_file_names_carry_the_checksum_and_an_importable_extension() -> None:
    assert image_filename(Image("https://x.example/noble-server-cloudimg-amd64.img", "sha256", "ab" * 32)) == (
        "noble-server-cloudimg-amd64-abababababababab.qcow2"
    )
    assert image_filename(Image("https://x.example/d/Disk Image.RAW", "sha256", "cd" * 32)).endswith(".raw")


def test_run_streams_output_logs_argv_and_masks_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines: list[str] = []
    log = tmp_path / "logs" / "tool.log"
    code = "import os, sys; print('hello; $(rm -rf /)'); print('pw=' + os.environ['PW'], file=sys.stderr)"
    with caplog.at_level(logging.INFO, logger="homelab.adapters.process"):
        result = run(
            [sys.executable, "-c", code],
            env={"PLAIN": "1"},
            secret_env={"PW": "hunter2-secret"},
            log_path=log,
            on_line=lines.append,
        )
    assert result.returncode == 0 and lines == ["hello; $(rm -rf /)", "pw=***"]
    text = log.read_text()
    assert "hunter2-secret" not in text and "PW=***" in text and "PLAIN=1" in text and "pw=***" in text
    assert "hunter2-secret" not in caplog.text and "-c" in caplog.text


def test_run_reports_failures_and_missing_programs(tmp_path: Path) -> None:
    with pytest.raises(ToolFailed, match="exited with status 3") as failed:
        run([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], what="test")
    assert failed.value.tail == ["boom"] and "  | boom" in failed.value.lines()
    assert run([sys.executable, "-c", "raise SystemExit(4)"], check=False).returncode == 4
    with pytest.raises(ToolMissing, match="not installed"):
        run(["homelab-no-such-program"])
    with pytest.raises(OperationTimeout, match=r"did not finish within 0\.2s"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# A tool with a child of its own (as Packer has its plugins and Ansible); the child ignores SIGTERM.
TOOL_WITH_CHILD = "(trap '' TERM; exec sleep 60) & echo child $!; wait"


@pytest.mark.parametrize("how", ["interrupt", "timeout"])
def test_stopping_a_tool_stops_its_children_too(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import homelab.adapters.process

    monkeypatch.setattr(homelab.adapters.process, "STOP_GRACE", 0.5, raising=False)
    children: list[int] = []

    def on_line(line: str) -> None:
        children.append(int(line.split()[1]))
        if how == "interrupt":
            raise KeyboardInterrupt  # Ctrl-C while the tool runs

    expected: type[BaseException] = KeyboardInterrupt if how == "interrupt" else OperationTimeout
    started = time.monotonic()
    with pytest.raises(expected):
        run(["sh", "-c", TOOL_WITH_CHILD], on_line=on_line, timeout=1.0 if how == "timeout" else None)
    try:
        assert children and _gone(children[0]), "the tool's child outlived it"
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - started < 10


def test_build_time_is_utc() -> None:
    assert datetime(2026, 1, 1, tzinfo=UTC).strftime("%Y%m%d%H%M") == new_version(datetime(2026, 1, 1, tzinfo=UTC))
