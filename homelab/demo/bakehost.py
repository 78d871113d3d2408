"""The demo's build host: in `homelab demo` no VM exists to SSH into, so the fake stands in for it.

A cloud-image build bakes qemu-guest-agent in over SSH at network.build_ip (homelab.templates.bake). The demo's
fake has no machines, so this shell hands each bake script to the fake over its control socket instead, and the
fake records the agent install for the VM running at that address. Only `homelab demo` uses it; every other
build goes over SSH.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from homelab.adapters.ssh import ScriptResult
from homelab.demo.launcher import FakeProxmox
from homelab.errors import OperationError
from homelab.templates.bake import OpenShell


class DemoBuildShell:
    """A shell on the demo fake's stand-in for the build VM at ``address``."""

    def __init__(self, fake: FakeProxmox, address: str):
        self.fake = fake
        self.address = address

    def run(self, script: str, *, as_user: str, timeout: float = 120) -> ScriptResult:
        answer = self.fake.call("demo_bake", address=self.address, script=script)
        return ScriptResult(int(answer["returncode"]), str(answer["stdout"]), str(answer["stderr"]))


def demo_shell(fake: FakeProxmox) -> OpenShell:
    """An ``open_shell`` for the bake (homelab.templates.bake.OpenShell) that talks to the demo's fake."""

    @contextmanager
    def open_shell(
        address: str, user: str, lab_name: str, wait: float, note: Callable[[str], None]
    ) -> Iterator[DemoBuildShell]:
        note(f"{address} is the demo fake's stand-in for the build VM (no SSH in the demo)")
        shell = DemoBuildShell(fake, address)
        if not shell.run("true", as_user=user).ok:
            raise OperationError(f"the demo's build VM at {address} is not running")
        yield shell

    return open_shell
