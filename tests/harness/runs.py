"""`homelab` as separate processes, as a user (or a cron job beside a user) starts it: for races and kills."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Waits for a barrier file, then runs the command line: processes started one after the other begin together.
BARRIER_MAIN = (
    "import os, sys, time\n"
    "barrier = sys.argv[1]\n"
    "from homelab.cli import main\n"  # import first: the start is then as close as it gets
    "import homelab.cli.vms, homelab.pipeline, homelab.provision.service, homelab.adapters.proxmox.client\n"
    "open(f'{barrier}.ready.{os.getpid()}', 'w').close()\n"
    "while not os.path.exists(barrier):\n"
    "    time.sleep(0.001)\n"
    "sys.argv = ['homelab', *sys.argv[2:]]\n"
    "main()\n"
)


def homelab_env(state: Path, token: str, **extra: str) -> dict[str, str]:
    """The environment of a run: its own state folder (one per "machine"), the token, this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMELAB_")}
    env.update(
        HOMELAB_STATE_DIR=str(state),
        HOMELAB_CONFIG_DIR=str(state.parent / "config"),
        HOMELAB_PROXMOX_TOKEN=token,
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        **extra,
    )
    return env


def start_at_barrier(barrier: Path, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """A `homelab ARGS` process that starts its work once ``barrier`` exists; its output goes to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", BARRIER_MAIN, str(barrier), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def start_held(barrier: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A `homelab ARGS` process held at ``barrier`` (see :func:`start_at_barrier`) whose output (stdout and stderr
    together) is read line by line: started early, its interpreter start overlaps other work."""
    return subprocess.Popen(
        [sys.executable, "-c", BARRIER_MAIN, str(barrier), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def wait_ready(barrier: Path, count: int, timeout: float = 120) -> None:
    """Wait until ``count`` processes started with :func:`start_at_barrier` have imported homelab and spin."""
    deadline = time.monotonic() + timeout
    while len(list(barrier.parent.glob(barrier.name + ".ready.*"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} runs reached the barrier {barrier} within {timeout}s")
        time.sleep(0.05)


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A `homelab ARGS` process whose output (stdout and stderr together) is read line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "homelab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `homelab ARGS` to its end; stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", "homelab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def wait_all(processes: list[subprocess.Popen[bytes]], timeout: float = 300) -> list[int]:
    """Each process's exit code, once all have ended (killing what outlives ``timeout``)."""
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
    return codes
