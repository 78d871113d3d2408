"""A fake of homelab's PlaybookRunner: each run plays back what a script says Ansible reported."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from homelab.adapters.ansible import HostStats, OnEvent, RunOutcome, RunRequest, TaskEvent

Script = Callable[[RunRequest], tuple[list[TaskEvent], dict[str, HostStats]]]
"""What one run reports: its task events in order, and the end-of-play stats per host."""


def inventory_hosts(request: RunRequest) -> dict[str, dict[str, Any]]:
    """The hosts of a run's inventory, each with its variables."""
    hosts: dict[str, dict[str, Any]] = json.loads(request.inventory.read_text())["all"]["hosts"]
    return hosts


class FakeRunner:
    """A PlaybookRunner that plays back ``script``, recording each request and its inventory's hosts.

    A run fails (rc 2) when a host failed or was unreachable. With ``never_starts`` (Ansible's last
    lines of output), every run ends before the play starts: no event, no stats, rc 4.
    """

    def __init__(self, script: Script, never_starts: tuple[str, ...] = ()) -> None:
        self.script = script
        self.never_starts = never_starts
        self.requests: list[RunRequest] = []
        self.hosts: list[dict[str, dict[str, Any]]] = []  # each run's inventory: host -> its variables

    def close(self) -> None:  # as AnsibleRunner, which use_fake_runner replaces with this
        pass

    def run(self, request: RunRequest, on_event: OnEvent) -> RunOutcome:
        self.requests.append(request)
        self.hosts.append(inventory_hosts(request))
        if self.never_starts:
            return RunOutcome("failed", 4, {}, self.never_starts)
        events, stats = self.script(request)
        for event in events:
            on_event(event)
        failed = any(s.failed or s.unreachable for s in stats.values())
        return RunOutcome("failed" if failed else "successful", 2 if failed else 0, stats)


def use_fake_runner(monkeypatch: pytest.MonkeyPatch, runner: FakeRunner) -> FakeRunner:
    """Make the CLI run its playbooks with ``runner``, as if Ansible were installed; returns ``runner``."""
    monkeypatch.setattr("homelab.adapters.ansible.AnsibleRunner", lambda: runner)
    monkeypatch.setattr("homelab.adapters.ansible.ansible_available", lambda: None)
    return runner
