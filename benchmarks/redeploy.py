"""Benchmark: a no-change `homelab deploy` against a bare `ansible all -m ping` round, on SSH test hosts.

    sudo python benchmarks/redeploy.py [--hosts 3] [--runs 3] [--repeat 3]

Needs root (the hosts are network and mount namespaces with their own sshd, tests/harness/hosts.py) and, for the
Docker part, dockerd, docker-compose and a static busybox, as tests/test_deploy_docker.py does. Each host gets
the homelab user, homelab's admin key, a dockerd of its own and every image the stacks pin (a busybox imported
offline); the lab puts traefik and homepage on every host. One deploy brings them up (not measured). Then each
run times, ``--repeat`` times each, interleaved:

- ping: ``ansible all -m ping`` over the inventory that deploy wrote (the same hosts, keys and pinned host keys,
  and homelab's ansible.cfg), i.e. one module round trip per host: Ansible's floor;
- files: ``deploy_stacks`` with ``start_stacks`` and ``install_packages`` off (the stack files only);
- docker: ``deploy_stacks`` as `homelab deploy` runs it (Docker looked for, stacks and networks checked).

A no-change deploy is the preview (the playbook in check mode) that finds nothing to do: it must report
"Nothing to change." and no changed task. Prints per run the medians and ratios, then the median ratio and its
spread over the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make homelab and the test harness importable
    sys.path.insert(0, str(REPO))

from homelab.adapters.sshkeys import ensure_admin_key  # noqa: E402
from homelab.deploy.plan import DeployOptions, workdir  # noqa: E402
from homelab.deploy.service import deploy_stacks  # noqa: E402
from homelab.lab.models import Lab  # noqa: E402
from homelab.stackimages import pinned_images  # noqa: E402
from homelab.state.hosts import Host, save_hosts  # noqa: E402
from tests.harness.hosts import SshHost, host_support, make_host  # noqa: E402
from tests.harness.labs import make_lab  # noqa: E402

GOAL = 1.5
STACKS = ["traefik", "homepage"]
# as tests/test_deploy_docker.py: the user reaches the Docker socket itself (no sudo on the test hosts)
DOCKER_VARS = {"homelab_docker_become": False, "homelab_data_become": False}


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (SSH test hosts are network namespaces)"
    reason = host_support()
    if reason:
        return reason
    from tests.harness.docker import dockerd_support

    return dockerd_support()


@contextlib.contextmanager
def lab_hosts(count: int, root: Path) -> Iterator[tuple[Lab, list[SshHost]]]:
    """``count`` test hosts, each with the homelab user, dockerd and the pinned images; the lab that uses them."""
    from tests.harness.docker import BUSYBOX, dockerd

    vms = [{"name": f"web{i}", "ip": f"10.10.0.{10 + i}", "stacks": STACKS} for i in range(1, count + 1)]
    lab = make_lab(vms=vms, domain="lab.example")
    key = ensure_admin_key(lab)
    hosts: list[SshHost] = []
    with contextlib.ExitStack() as stack:
        for i in range(1, count + 1):
            vm = make_host(f"h{i}", root / "hosts", 100 + i, per_user_keys=True)
            stack.callback(vm.stop)
            vm.exec(["useradd", "-m", "-d", "/home/homelab", "-s", "/bin/sh", "homelab"])
            vm.exec(["usermod", "-p", "*", "homelab"])
            vm.exec(
                ["sh", "-c", "mkdir -p /etc/ssh/authorized_keys && cat > /etc/ssh/authorized_keys/homelab"], input=key
            )
            stack.enter_context(dockerd(vm, group="homelab"))
            rootfs = root / f"rootfs{i}"
            (rootfs / "bin").mkdir(parents=True)
            shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
            entry = '["/bin/busybox", "sh", "-c", "trap \\"exit 0\\" TERM; /bin/busybox sleep 600 & wait", "sh"]'
            vm.exec(["sh", "-c", f"tar -C {rootfs} -c . | docker import -c 'ENTRYPOINT {entry}' - busybox:test"])
            for image, _, tag in {pin for name in STACKS for pin in pinned_images(name)}:
                vm.exec(["docker", "tag", "busybox:test", f"{image}:{tag}"])
            hosts.append(vm)
        save_hosts(
            lab, [Host(f"web{i}", vm.address, "homelab", host_key=vm.host_key_pub) for i, vm in enumerate(hosts, 1)]
        )
        yield lab, hosts


def deploy(lab: Lab, files_only: bool) -> float:
    """One no-change deploy (its preview finds nothing to do); seconds."""
    if files_only:
        options = DeployOptions(install_packages=False, start_stacks=False, extra_vars=DOCKER_VARS)
    else:
        options = DeployOptions(extra_vars=DOCKER_VARS)
    lines: list[str] = []

    def refuse(question: str) -> None:
        raise SystemExit(f"a no-change deploy asked {question!r}:\n" + "\n".join(lines))

    start = time.perf_counter()
    result = deploy_stacks(lab, lines.append, refuse, options)
    wall = time.perf_counter() - start
    changed = sum(h.stats.changed for h in result.preview.hosts.values()) if result.preview else -1
    if "Nothing to change." not in lines or changed != 0 or not result.ok:
        raise SystemExit("not a no-change deploy:\n" + "\n".join(lines))
    return wall


def ping(lab: Lab) -> float:
    """``ansible all -m ping`` over the deploy's own inventory and ansible.cfg; seconds."""
    where = workdir(lab)
    env = dict(os.environ, ANSIBLE_CONFIG=str(where / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env = {k: v for k, v in env.items() if not k.startswith("HOMELAB_")}
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = tempfile.mkdtemp(prefix="hl-ping-")  # fresh connections, as a deploy
    argv = [str(Path(sys.executable).with_name("ansible")), "all", "-i", str(where / "hosts.yml"), "-m", "ping"]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    shutil.rmtree(env["ANSIBLE_SSH_CONTROL_PATH_DIR"], ignore_errors=True)
    if proc.returncode != 0 or proc.stdout.count("SUCCESS") != len(lab.vms):
        raise SystemExit(f"ansible -m ping failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=3, help="SSH test hosts (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timings of each kind per run (default 3)")
    args = parser.parse_args(argv)
    reason = why_not()
    if reason:
        print(f"skipped: {reason}")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="homelab-redeploy-"))
    os.environ["HOMELAB_STATE_DIR"] = str(tmp / "state")
    os.environ["HOMELAB_CONFIG_DIR"] = str(tmp / "config")
    ratios: dict[str, list[float]] = {"files": [], "docker": []}
    try:
        with lab_hosts(args.hosts, tmp) as (lab, _):
            first: list[str] = []
            setup = deploy_stacks(lab, first.append, lambda question: None, DeployOptions(extra_vars=DOCKER_VARS))
            if not setup.ok:
                raise SystemExit("the first deploy failed:\n" + "\n".join(first))
            print(f"setup: {args.hosts} hosts, first deploy done (not measured)", file=sys.stderr)
            deploy(lab, files_only=False)  # warm: bytecode, the OS's caches
            for run in range(1, args.runs + 1):
                walls: dict[str, list[float]] = {"ping": [], "files": [], "docker": []}
                for _ in range(args.repeat):
                    walls["ping"].append(ping(lab))
                    walls["files"].append(deploy(lab, files_only=True))
                    walls["docker"].append(deploy(lab, files_only=False))
                base = statistics.median(walls["ping"])
                parts = [f"ping {base:.2f} s"]
                for kind in ("files", "docker"):
                    median = statistics.median(walls[kind])
                    ratios[kind].append(median / base)
                    parts.append(f"{kind} {median:.2f} s = {median / base:.2f}x")
                print(f"run {run}: " + ", ".join(parts), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = True
    for kind, values in ratios.items():
        median = statistics.median(values)
        ok = ok and median <= GOAL
        what = "files only" if kind == "files" else "Docker check included"
        print(
            f"no-change deploy ({what}) / ansible -m ping, {args.hosts} hosts: median {median:.2f}x "
            f"(spread {min(values):.2f}-{max(values):.2f}x over {len(values)} runs; goal <= {GOAL:g}x"
            f"{'' if median <= GOAL else ', NOT MET'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
