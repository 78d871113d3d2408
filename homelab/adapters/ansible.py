"""The ansible-runner adapter: the only module that imports ansible_runner.

It runs one playbook and turns Ansible's job events into :class:`TaskEvent` and its stats into
:class:`HostStats`; the rest of homelab sees only these and the :class:`PlaybookRunner` protocol
(tests use a fake). Ansible runs with a config file of our own (a user's ansible.cfg cannot turn host
key checking off) and host key checking on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from homelab.errors import OperationError
from homelab.interrupts import deferring_interrupts

log = logging.getLogger(__name__)

EventKind = Literal["ok", "changed", "failed", "unreachable", "skipped"]

ANSIBLE_CFG = """\
# Written by homelab for its own runs; a user's ansible.cfg is not read.
[defaults]
host_key_checking = True
retry_files_enabled = False
# homelab's VMs are Debian or Ubuntu cloud images, whose python3 (cloud-init's) is here: no discovery round trip
interpreter_python = /usr/bin/python3
gathering = explicit
nocows = True
max_diff_size = 65536

[ssh_connection]
pipelining = True
ssh_args = -C -o ControlMaster=auto -o ControlPersist=15s
"""


@dataclass(frozen=True)
class FileDiff:
    """A file or folder change Ansible reports in diff mode.

    ``change`` is "new", "new folder", "content", "attributes" (mode or owner only) or "removed stack"
    for the homelab_files module; "content" for other modules' text diffs.
    """

    path: str
    change: str
    before: str = ""
    after: str = ""


@dataclass(frozen=True)
class TaskEvent:
    """One task's result on one host (or one item of a looped task)."""

    kind: EventKind
    host: str
    task: str
    item: str | None = None  # the loop item's label
    loop: bool = False  # the summary of a looped task (its items came as events before it)
    message: str = ""
    diffs: tuple[FileDiff, ...] = ()
    # homelab_files' report of the folders under the stacks folder that hold a .homelab-stack marker:
    # (folder, the marker's text); None from other tasks
    markers: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class HostStats:
    """Ansible's end-of-play counts for one host."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class RunRequest:
    """One playbook run: everything Ansible gets."""

    playbook: Path
    inventory: Path
    workdir: Path  # ansible-runner's private data folder (artifacts go there)
    extravars: Mapping[str, Any] = field(default_factory=dict)
    check: bool = False  # check and diff mode: report, change nothing


@dataclass(frozen=True)
class RunOutcome:
    """How the run ended: per-host stats (empty when the play never started) and the output's last lines."""

    status: str
    rc: int
    stats: dict[str, HostStats]
    tail: tuple[str, ...] = ()


OnEvent = Callable[[TaskEvent], None]


class PlaybookRunner(Protocol):
    """Runs a playbook, reporting each task result as it happens."""

    def run(self, request: RunRequest, on_event: OnEvent) -> RunOutcome: ...


_KINDS: dict[str, EventKind] = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_ok": "ok",
    "runner_item_on_failed": "failed",
    "runner_item_on_skipped": "skipped",
}


def to_task_event(event: Mapping[str, Any]) -> TaskEvent | None:
    """Our event for one of ansible-runner's job events; None for events we do not report."""
    kind = _KINDS.get(str(event.get("event", "")))
    data = event.get("event_data") or {}
    if kind is None or not data.get("host"):
        return None
    res = data.get("res") or {}
    item_event = str(event["event"]).startswith("runner_item_")
    if kind == "ok" and res.get("changed"):
        kind = "changed"
    if kind == "failed" and data.get("ignore_errors"):
        kind = "ok"
    label = res.get("_ansible_item_label", res.get("item")) if item_event else None
    return TaskEvent(
        kind=kind,
        host=str(data["host"]),
        task=str(data.get("task") or data.get("task_action") or "?"),
        item=None if label is None else str(label),
        loop="results" in res,
        message=_message(res) if kind in ("failed", "unreachable") else "",
        diffs=_diffs(res.get("diff")),
        markers=_markers(res.get("stack_markers")),
    )


def _markers(found: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(found, Mapping):
        return None
    return tuple(sorted((str(folder), str(text)) for folder, text in found.items()))


def _message(res: Mapping[str, Any]) -> str:
    msg = one_line(str(res.get("msg") or "")).removeprefix("Task failed: ")
    for stream in ("stderr", "stdout", "module_stderr"):
        text = str(res.get(stream) or "").strip()
        if text and text not in msg:
            said = _conclusion(text)
            msg = f"{msg}: {said}" if msg else said
    return msg or "failed"


_ERROR_LINE = re.compile(r"^(ERROR|Error|error)\b[: ]")
_MAX_CAUSES = 3


def _conclusion(text: str) -> str:
    """A command's output as its last line, after the error lines before it that name the cause (compose v1 ends
    with "Encountered errors while bringing up the project." and says why only in the ``ERROR: for ...`` lines
    above it)."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    last = lines[-1]
    causes = [line for line in lines[:-1] if _ERROR_LINE.match(line) and line != last]
    if not causes:  # no line says ERROR: the ones that mention an error at all
        causes = [line for line in lines[:-1] if "error" in line.lower() and line != last]
    causes = list(dict.fromkeys(causes))[-_MAX_CAUSES:]
    return "; ".join([*causes, last])


def one_line(text: str) -> str:
    """A multi-line message (ssh's host key banner, say) as its first line and its conclusion."""
    lines = [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head, tail = lines[0].rstrip("@ "), lines[-1]
    presented = re.search(r"SHA256:[A-Za-z0-9+/]+", text)
    if presented and "host key" in tail.lower():
        tail = f"{tail.rstrip('.')}: it presented {presented.group(0)}"
    return f"{head} {tail}"


def _diffs(diff: Any) -> tuple[FileDiff, ...]:
    found = []
    for entry in diff if isinstance(diff, list) else [diff]:
        if not isinstance(entry, Mapping):
            continue
        path = str(entry.get("after_header") or entry.get("before_header") or "")
        change = entry.get("homelab_change")
        before, after = entry.get("before"), entry.get("after")
        if isinstance(after, str):
            before = before if isinstance(before, str) else ""
            found.append(FileDiff(path, str(change or "content"), before, after))
        elif change:
            found.append(FileDiff(path, str(change)))
    return tuple(found)


def to_host_stats(stats: Mapping[str, Mapping[str, int]] | None) -> dict[str, HostStats]:
    """ansible-runner's stats (counter -> host -> n) as per-host counts."""
    stats = stats or {}
    hosts = sorted({h for counter in stats.values() if isinstance(counter, Mapping) for h in counter})

    def n(key: str, host: str) -> int:
        return int((stats.get(key) or {}).get(host, 0))

    return {
        h: HostStats(
            ok=n("ok", h),
            changed=n("changed", h),
            failed=n("failures", h),
            unreachable=n("dark", h),
            skipped=n("skipped", h),
        )
        for h in hosts
    }


class AnsibleRunner:
    """Runs playbooks with ansible-runner (which starts ansible-playbook as a child process).

    Its runs share SSH connections (ControlPersist) in a folder of its own, removed by :meth:`close`:
    a later deploy never reuses a connection made before, so every deploy checks the pinned host keys anew.
    """

    def __init__(self) -> None:
        self._control_dir: str | None = None

    def close(self) -> None:
        """Forget the shared SSH connections (their masters exit after ControlPersist's few idle seconds)."""
        if self._control_dir is not None:
            import shutil

            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    def __enter__(self) -> AnsibleRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, request: RunRequest, on_event: OnEvent) -> RunOutcome:
        import tempfile

        if self._control_dir is None:
            # short and private: a control socket's path must stay under the 108 bytes of a unix socket
            self._control_dir = tempfile.mkdtemp(prefix="hl-ssh-")
        request.workdir.mkdir(parents=True, exist_ok=True)
        cfg = request.workdir / "ansible.cfg"
        cfg.write_text(ANSIBLE_CFG, encoding="utf-8")
        envvars = {
            "ANSIBLE_CONFIG": str(cfg),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_ROLES_PATH": str(request.playbook.parent / "roles"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": self._control_dir,
        }

        def handler(event: dict[str, Any]) -> bool:
            converted = to_task_event(event)
            if converted is not None:
                on_event(converted)
            return True

        mode = " --check --diff" if request.check else " --diff"
        log.info("ansible: %s%s (inventory %s)", request.playbook, mode, request.inventory)
        try:
            with _without_homelab_env():
                result = self._run(request, envvars, handler)
        except (OSError, RuntimeError, ValueError) as exc:
            raise OperationError(f"ansible-runner could not start ansible-playbook: {exc}") from None
        tail: tuple[str, ...] = ()
        if result.stdout is not None:
            try:
                lines = [line.rstrip() for line in result.stdout.read().splitlines() if line.strip()]
                tail = tuple(lines[-12:])
            except (OSError, ValueError):
                pass
        log.info("ansible: %s (rc %s)", result.status, result.rc)
        return RunOutcome(str(result.status), int(result.rc or 0), to_host_stats(result.stats), tail)

    @staticmethod
    def _run(request: RunRequest, envvars: dict[str, str], handler: Callable[[dict[str, Any]], bool]) -> Any:
        """One ansible-runner run. Ctrl-C stops the playbook through ansible-runner's cancel callback (it ends
        ansible-playbook), then comes out as KeyboardInterrupt. Given no callback, ansible-runner would install
        SIGINT and SIGTERM handlers of its own that only set a flag, and leave them: every later Ctrl-C in the
        process, at the next question too, would be swallowed."""
        import ansible_runner

        stop = threading.Event()
        with deferring_interrupts(stop):
            return ansible_runner.run(
                private_data_dir=str(request.workdir),
                playbook=str(request.playbook),
                inventory=str(request.inventory),
                extravars=dict(request.extravars),
                envvars=envvars,
                cmdline="--check --diff" if request.check else "--diff",
                event_handler=handler,
                cancel_callback=stop.is_set,
                quiet=True,
                rotate_artifacts=4,
                suppress_env_files=True,
            )


@contextlib.contextmanager
def _without_homelab_env() -> Iterator[None]:
    """Hide homelab's own variables (secrets among them: HOMELAB_PROXMOX_TOKEN, HOMELAB_<STACK>_<NAME>) from
    ansible-runner, which hands its whole environment to ansible-playbook and records it in the run's
    artifacts (``artifacts/<id>/command``). Ansible needs none of them."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("HOMELAB_")}
    try:
        yield
    finally:
        os.environ.update(hidden)


def ansible_available() -> str | None:
    """None when ansible-runner and ansible-playbook are installed; otherwise what is missing."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("ansible_runner") is None:
        return "the Python package ansible-runner is not installed (pip install ansible-runner)"
    if shutil.which("ansible-playbook") is None and not os.environ.get("ANSIBLE_RUNNER_BINARY"):
        return "ansible-playbook is not installed (pip install ansible-core)"
    return None
