"""What `homelab demo` runs in: a folder with the fake Proxmox, the demo lab written for it, and what to try next.

The folder is a temp folder unless the user names one. However the session ends (finished, an error, Ctrl-C,
SIGTERM, a closed terminal), the fake is stopped and a temp folder removed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from homelab.demo.launcher import FakeProxmox, start_fake_proxmox
from homelab.errors import InputError
from homelab.paths import data_dir
from homelab.state.secrets import TOKEN_ENV

# The fake Proxmox's `local` storage as a PVE 9 node has it with imports enabled (cloud images land there).
DEMO_STORAGES = {
    "local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "files": [], "path": "/var/lib/vz"}
}
# The fake does not download anything, so no checksum is checked; a real lab names the image's own.
DEMO_IMAGE = {
    "url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
    "checksum": "sha512:" + "0" * 128,
}
# Signals that end the demo as Ctrl-C does (KeyboardInterrupt), so that its clean-up runs. SIGINT is among
# them because a shell starts a background job with SIGINT ignored, and the demo still stops on it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The longest path a Unix socket can have (108 bytes on Linux, 104 on macOS, with the final NUL).
UNIX_SOCKET_PATH_MAX = 103


@dataclass(frozen=True)
class DemoSession:
    """A running demo: its folder, the fake Proxmox, and whether the folder goes when the session ends."""

    root: Path
    fake: FakeProxmox
    temporary: bool

    @property
    def lab_path(self) -> Path:
        return self.root / "lab.yml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def environment(self) -> dict[str, str]:
        """What a `homelab` command needs to work on the demo lab: its file, its state, the fake's token secret."""
        return {
            "HOMELAB_LAB": str(self.lab_path),
            "HOMELAB_STATE_DIR": str(self.state_dir),
            TOKEN_ENV: self.fake.token_secret,
        }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals(handler: Any, signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    old = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


@contextmanager
def demo_session(workdir: str | None, time_scale: float) -> Iterator[DemoSession]:
    """The demo's folder (a new temp folder unless ``workdir``) with the fake Proxmox running in it.

    SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt inside the session; clean-up itself is not interrupted
    by a second one.
    """
    temporary = workdir is None
    fake = None
    with _signals(_interrupt, STOP_SIGNALS):
        root = Path(tempfile.mkdtemp(prefix="homelab-demo-")) if workdir is None else Path(workdir)
        try:
            if len(os.fsencode(root.resolve() / "fakepve" / "control.sock")) > UNIX_SOCKET_PATH_MAX:
                raise InputError(
                    f"the demo folder's path is too long for the fake's control socket: {root} "
                    "(choose a shorter --workdir or TMPDIR)"
                )
            root.mkdir(parents=True, exist_ok=True)
            fake = start_fake_proxmox(
                root / "fakepve",
                guests=[],
                storages=DEMO_STORAGES,
                time_scale=time_scale,
                agent_delay=20,
                start_secs=5,
                ignore_sigint=True,  # Ctrl-C on a terminal reaches the whole group: the demo stops the fake itself
                demo_bake_host=True,  # no VM to SSH into: the fake stands in for the template's build VM
            )
            yield DemoSession(root, fake, temporary)
        finally:
            with _signals(signal.SIG_IGN, STOP_SIGNALS):
                if fake is not None:
                    fake.stop()
                if temporary:
                    shutil.rmtree(root, ignore_errors=True)


def write_demo_lab(session: DemoSession, vms: int) -> Path:
    """inventories/example/lab.yml pointed at the fake, with ``vms`` VMs and no config repo. The token's secret
    is not in the file: homelab reads it from the environment."""
    fake = session.fake
    data = yaml.safe_load((data_dir("inventories/example") / "lab.yml").read_text(encoding="utf-8"))
    data["name"] = "demo"
    data["proxmox"].update(
        url=fake.url, node="pve1", storage="local-lvm", token_id=fake.token_id, ca_bundle=fake.cafile
    )
    data["templates"][0]["image"] = DEMO_IMAGE
    data.pop("repo", None)
    base = data["vms"][0]
    data["vms"] = [base] + [
        {"name": f"node-{i:02d}", "cores": 2, "memory": 2048, "disk": "32G", "ip": f"192.168.10.{30 + i}"}
        for i in range(1, vms)
    ]
    session.lab_path.write_text(
        "# The demo lab: inventories/example/lab.yml pointed at the built-in fake Proxmox (no config repo).\n"
        + yaml.safe_dump(data, sort_keys=False),
        encoding="utf-8",
    )
    return session.lab_path


def try_it_lines(session: DemoSession) -> list[str]:
    """The shell lines that point `homelab` at the running demo, then the commands to try."""
    exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in session.environment().items())
    return [
        f"export {exports}",
        "homelab plan      # nothing to do; edit $HOMELAB_LAB (a VM's memory, say) and plan again",
        "homelab status",
        "homelab apply     # carries out the plan, after asking",
        "homelab destroy   # removes the demo's VMs, after asking",
    ]


NEXT_STEPS = [
    "Next, for your own Proxmox:",
    "  homelab init   # asks a few questions, reads your Proxmox, writes lab.yml",
    "  homelab up     # templates, VMs, deploy key, stacks: each stage shows what it will do and asks first",
    "To try plan, status, apply and destroy yourself on the fake first: homelab demo --keep",
]
