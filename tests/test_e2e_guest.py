"""`homelab up` against a fake Proxmox whose VMs are real Debian guests under QEMU: cloud-init, the guest agent,
SSH host keys, apt without internet, Docker, a data disk, a replacement.

The guests are TCG-emulated (KVM does not work here), so every boot costs a minute or more of CPU: the module
is ONE sequence on ONE lab, each stage a module fixture that runs once, and the tests check what each stage
left (they run in file order; a stage's fixture runs when its first test needs it):

1. ``up_run``: `homelab up --no-deploy` of a one-VM lab from the stock image (no agent, as Debian's cloud images
   ship): the bake installs the agent (and git) from the local apt repository, the clone boots with a data
   disk, its address and host key come from the real agent once cloud-init finished, the deploy key lands
   and checks the config repo out from a git server on a test host;
2. ``re_pinned``: an SSH key added to the lab changes the cloud-init instance: the reboot regenerates the host
   keys and homelab pins the new one;
3. ``deployed``: `homelab deploy --no-start` installs Debian's docker.io, docker-compose and
   apparmor (``docker.source: distribution``: Docker's own repository cannot be reached) from the local
   repository and formats and mounts the data disk; the test imports a static busybox as the traefik stack's
   images (nothing can be pulled), then `homelab up` starts the stack; a second `homelab up` changes nothing;
4. ``replaced``: files on the data disk (one synced, one just written), a newer template
   version, `homelab up`: the old VM is shut down, the VM replaced, and the new VM has the same data disk with
   both files;
5. last, PVE's shutdown through the real agent ends the QEMU process.

Skips, with the reason, without root, QEMU, debootstrap or the Debian mirror (tests/harness/guest-deps.sh
installs the tools), or when HOMELAB_SKIP_REALVM is set; ``-m "not realvm"`` deselects the module. Images
and the apt repository are cached (tests/harness/guest_image.py, $HOMELAB_TEST_CACHE): the first run on a
machine builds them (minutes). Every QEMU runs inside the module's lab network namespace (``hlg-*``), which
the fixtures delete with whatever still runs in it. Stage times go to ``TIMINGS`` (printed after the run).
Every stage runs by default, in CI too; with HOMELAB_E2E_QUICK=1 stages 3 and 4 skip (they are most of the
emulation time). In a whole-suite run the module runs in a child process beside the other tests
(tests/harness/beside.py): its emulation is CPU-bound, the rest of the suite mostly waits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from homelab.demo.launcher import FakeProxmox
from homelab.stackimages import pinned_images
from tests.harness import aptrepo, guest_image, realpve, realvm
from tests.harness.gitserver import GitServer, make_git_server
from tests.harness.guest_image import STOCK, GuestImage
from tests.harness.hosts import host_support
from tests.harness.labs import write_lab

pytestmark = [pytest.mark.e2e, pytest.mark.realvm, pytest.mark.timeout(3600)]

full_run = pytest.mark.skipif(
    bool(os.environ.get("HOMELAB_E2E_QUICK")),
    reason="HOMELAB_E2E_QUICK is set: the Docker, stack and replacement stages (most of the emulation) skip",
)

TIMINGS: dict[str, float] = {}
"""Seconds measured by the stages (printed at the end of the run by tests/conftest.py)."""

BUSYBOX = "/usr/bin/busybox"
STACK = "traefik"
DATA_DIR = "/home/homelab/data"
DATA_DEVICE = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_homelab-data"


def _skip_reason() -> str | None:
    for reason in (guest_image.build_support(), realvm.guest_support(), aptrepo.repo_support(), host_support()):
        if reason:
            return reason
    if os.environ.get("HOMELAB_SKIP_REALVM"):
        return f"HOMELAB_SKIP_REALVM is set: {os.environ['HOMELAB_SKIP_REALVM']}"
    return None


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    TIMINGS[name] = time.monotonic() - started


# --------------------------------------------------------------------------------------- environment


@pytest.fixture(scope="module")
def images() -> dict[str, GuestImage]:
    """The stock image, built first if the cache lacks it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with timed("image (cached)" if guest_image.is_cached(STOCK) else "image build (uncached)"):
        # Only the stock variant (no agent): homelab's bake puts the agent in.
        return {STOCK: guest_image.ensure_image(STOCK)}


@pytest.fixture(scope="module")
def lab_net(images: dict[str, GuestImage]) -> Iterator[realvm.LabNetwork]:
    with realvm.lab_network(40) as net:
        yield net


@pytest.fixture(scope="module")
def apt_server(images: dict[str, GuestImage], lab_net: realvm.LabNetwork) -> Iterator[aptrepo.AptRepoServer]:
    """The local apt repository on the lab network's gateway (the guests' apt proxy)."""
    repo = aptrepo.ensure_repo(images[STOCK])
    with aptrepo.serve_repo(repo, lab_net.gateway) as server:
        yield server


@pytest.fixture(scope="module")
def git(tmp_path_factory: pytest.TempPathFactory, lab_net: realvm.LabNetwork) -> Iterator[GitServer]:
    """A git server on a test host that the lab network's guests reach through the machine."""
    server = make_git_server(tmp_path_factory.mktemp("git") / "server", index=210)
    try:
        realvm.route_to_host(lab_net, server.host)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@guest", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="module")
def real_pve(
    tmp_path_factory: pytest.TempPathFactory,
    images: dict[str, GuestImage],
    lab_net: realvm.LabNetwork,
    apt_server: aptrepo.AptRepoServer,
) -> Iterator[FakeProxmox]:
    urls = {realpve.image_url(image): image for image in images.values()}
    fake = realpve.start_real_pve(tmp_path_factory.mktemp("realpve"), lab_net, urls)
    try:
        yield fake
    finally:
        fake.stop()


def ssh(
    address: str,
    key: Path,
    host_key: str,
    command: str,
    *,
    user: str = "homelab",
    timeout: float = 600,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` over SSH, trusting exactly ``host_key`` (StrictHostKeyChecking yes)."""
    known = key.parent / f"known_hosts-{address}"
    known.write_text(f"{address} {' '.join(host_key.split()[:2])}\n")
    argv = ["ssh", "-F", "none", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}"]
    argv += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
    argv += ["-o", "ConnectTimeout=20", f"{user}@{address}", command]
    if input is None:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
    return subprocess.CompletedProcess(argv, done.returncode, done.stdout.decode(), done.stderr.decode())


def homelab(lab: Path, *args: str) -> tuple[int, str, str]:
    from homelab.cli import cli

    result = CliRunner().invoke(cli, ["--lab", str(lab), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


class Lab:
    """The module's lab: its file, state folder, environment, the VM's address."""

    def __init__(self, path: Path, state: Path, env: dict[str, str], address: str, fake: FakeProxmox) -> None:
        self.path = path
        self.state = state
        self.env = env
        self.address = address
        self.fake = fake

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def run(self, *args: str) -> tuple[int, str, str]:
        with self.environment():
            return homelab(self.path, *args)

    def must(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"homelab {' '.join(args)} exited {code}:\n{out}{err}\n{self.fake.log.read_text()[-3000:]}"
        return out

    def host(self) -> dict[str, Any]:
        hosts = json.loads((self.state / "guest" / "hosts.json").read_text())["hosts"]
        assert [h["name"] for h in hosts] == ["web"]
        return dict(hosts[0])

    @property
    def admin_key(self) -> Path:
        return self.state / "guest" / "ssh" / "id_ed25519"

    def ssh(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``command`` on the VM as homelab, with homelab's admin key, trusting only the pinned host key."""
        return ssh(self.address, self.admin_key, self.host()["host_key"], command, **kwargs)

    def vmid(self) -> int:
        return vmid_of(self.fake, "web")


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
    images: dict[str, GuestImage],
    lab_net: realvm.LabNetwork,
    real_pve: FakeProxmox,
    git: GitServer,
    client_key: Path,
) -> Lab:
    """The lab file (one VM with a data disk and the traefik stack, Docker from the distribution, a config repo),
    its deploy key made, accepted by the git server and verified."""
    root = tmp_path_factory.mktemp("lab")
    stock = images[STOCK]
    address = lab_net.address(2)
    data = {
        "name": "guest",
        "proxmox": {"url": real_pve.url, "node": "pve1", "token_id": real_pve.token_id, "ca_bundle": real_pve.cafile},
        "network": {
            "subnet": str(lab_net.subnet),
            "gateway": lab_net.gateway,
            "dns": [lab_net.gateway],
            "domain": "home.arpa",
            "build_ip": lab_net.address(9),  # the template's build VM, for its bake
        },
        "templates": [
            {
                "name": "debian",
                "image": {"url": realpve.image_url(stock), "checksum": f"sha512:{stock.sha512}"},
                "disk": "4G",
                "memory": 1024,
                "cores": 1,
            }
        ],
        "access": {"ssh_keys": [client_key.with_suffix(".pub").read_text().strip()]},
        # TCG on a busy 2-core machine: an apt install in the guest can take many minutes.
        "settings": {"timeouts": {"task": 1800, "agent": 1800, "start": 600}},
        # Docker's own repository cannot be reached from the test network: the distribution's packages are.
        "docker": {"source": "distribution"},
        "repo": {"url": git.url, "branch": "main"},
        "vms": [
            {
                "name": "web",
                "ip": address,
                "disk": "4G",
                "memory": 1024,
                "cores": 1,
                "data_disk": "1G",
                "stacks": [STACK],
            }
        ],
    }
    path = write_lab(root / "lab.yml", data)
    env = {
        "HOMELAB_STATE_DIR": str(root / "state"),
        "HOMELAB_CONFIG_DIR": str(root / "config"),
        "HOMELAB_PROXMOX_TOKEN": real_pve.token_secret,
    }
    made = Lab(path, root / "state", env, address, real_pve)
    out = made.must("keys", "generate")
    git.add_key(next(line.strip() for line in out.splitlines() if line.strip().startswith("ssh-ed25519")))
    made.must("keys", "verify", "--yes")
    return made


def pve(fake: FakeProxmox) -> Any:
    from proxmoxer import ProxmoxAPI

    user, token = fake.token_id.split("!")
    return ProxmoxAPI(
        fake.host, port=fake.port, user=user, token_name=token, token_value=fake.token_secret, verify_ssl=fake.cafile
    )


def vmid_of(fake: FakeProxmox, name: str) -> int:
    return next(vm["vmid"] for vm in fake.vms() if vm["name"] == name and not vm["template"])


def wait_for_port(address: str, port: int = 22, timeout: float = 600) -> float:
    """Seconds until ``address:port`` accepts TCP connections."""
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((address, port), timeout=3):
                return time.monotonic() - started
        except OSError:
            if time.monotonic() - started > timeout:
                raise
            time.sleep(2)


# ---------------------------------------------------------------- stage 1: `homelab up --no-deploy`


class UpRun:
    """What the first `homelab up` printed and how long it took."""

    def __init__(self, output: str, seconds: float) -> None:
        self.output = output
        self.seconds = seconds


@pytest.fixture(scope="module")
def up_run(lab: Lab, apt_server: aptrepo.AptRepoServer) -> UpRun:
    """`homelab up --yes --no-deploy` from the stock image: the issue's own scenario. homelab's bake boots it at
    build_ip, installs qemu-guest-agent and git from the harness's apt repository, cleans cloud-init and makes the
    template; the VM cloned from it (with a new data disk) is learned through its real agent once cloud-init
    finished, and the deploy key checks the config repo out on it."""
    started = time.monotonic()
    out = lab.must("up", "--yes", "--no-deploy")
    TIMINGS["homelab up --no-deploy (bake, clone, boot, deploy key)"] = seconds = time.monotonic() - started
    return UpRun(out, seconds)


def test_up_bakes_the_agent_and_git_in_from_the_local_repository(
    lab: Lab, up_run: UpRun, apt_server: aptrepo.AptRepoServer
) -> None:
    assert "bake: installing qemu-guest-agent git" in up_run.output
    fetched = {url.rsplit("/", 1)[-1].split("_")[0] for _, url, status in apt_server.requests if status == 200}
    assert {"qemu-guest-agent", "git"} <= fetched
    (template,) = [vm for vm in lab.fake.vms() if vm["template"]]
    assert "guest-agent" in template["config"]["tags"].split(";")


def test_up_pins_the_host_key_the_real_agent_read(lab: Lab, up_run: UpRun, client_key: Path) -> None:
    host = lab.host()
    assert host["address"] == lab.address
    assert host["host_key"].startswith("ssh-ed25519 ")
    # SSH with homelab's own admin key, trusting only the pinned key: the guest really has that key.
    result = lab.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == host["host_key"].split()[:2]
    # ... and the lab's access key works too (cloud-init got both through PVE's sshkeys)
    assert ssh(lab.address, client_key, host["host_key"], "true").returncode == 0


def test_up_installed_the_deploy_key_and_checked_out_the_repo(lab: Lab, up_run: UpRun, git: GitServer) -> None:
    assert "web: ok" in up_run.output
    result = lab.ssh("git -C /home/homelab/config rev-parse HEAD")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == git.head()


def test_the_vm_has_its_data_disk_by_serial(lab: Lab, up_run: UpRun) -> None:
    """PVE's ``scsi1: ...,serial=homelab-data`` is a disk the guest finds by id (blank until the deploy)."""
    config = _config(lab.fake, lab.vmid())
    assert "serial=homelab-data" in config["scsi1"]
    result = lab.ssh(f"readlink -f {DATA_DEVICE} && sudo blockdev --getsize64 {DATA_DEVICE}")
    assert result.returncode == 0, result.stderr
    device, size = result.stdout.split()
    assert device.startswith("/dev/sd") and int(size) == 1024**3


def _config(fake: FakeProxmox, vmid: int) -> dict[str, Any]:
    return dict(next(vm["config"] for vm in fake.vms() if vm["vmid"] == vmid))


def test_fake_agent_endpoints_are_answered_by_the_guest(lab: Lab, up_run: UpRun) -> None:
    vm = pve(lab.fake).nodes("pve1").qemu(lab.vmid())
    interfaces = vm.agent("network-get-interfaces").get()["result"]
    addresses = {a["ip-address"] for i in interfaces for a in i.get("ip-addresses", [])}
    assert lab.address in addresses
    assert vm.agent("file-read").get(file="/etc/hostname")["content"].strip() == "web"
    pid = vm.agent.exec.post(command=["cloud-init", "status", "--wait"])["pid"]
    for _ in range(300):
        status = vm.agent("exec-status").get(pid=pid)
        if status["exited"]:
            break
        time.sleep(2)
    assert status["exitcode"] == 0 and "status: done" in status["out-data"]
    from proxmoxer.core import ResourceException

    with pytest.raises(ResourceException, match="qga command 'guest-file-open' failed - failed to open file"):
        vm.agent("file-read").get(file="/nonexistent")


def test_a_stock_image_vm_has_no_agent_to_answer(real_pve: FakeProxmox, images: dict[str, GuestImage]) -> None:
    """A VM from the stock image starts, but the API answers for its agent as PVE does: not running."""
    from proxmoxer.core import ResourceException

    api = pve(real_pve)
    node = api.nodes("pve1")
    url = realpve.image_url(images[STOCK])
    _task(api, node.storage("local")("download-url").post(url=url, content="import", filename="stock.qcow2"))
    _task(
        api,
        node.qemu.post(
            vmid=150,
            name="stock",
            memory=512,
            scsi0="local-lvm:0,import-from=local:import/stock.qcow2",
            ide2="local-lvm:cloudinit",
            agent="enabled=1",
            net0="virtio,bridge=vmbr0",
        ),
    )
    try:
        assert _task(api, node.qemu(150).status.start.post()) == "OK"
        assert node.qemu(150).status.current.get()["status"] == "running"
        with pytest.raises(ResourceException, match="QEMU guest agent is not running"):
            node.qemu(150).agent.ping.post()
    finally:
        _task(api, node.qemu(150).status.stop.post())
    with pytest.raises(ResourceException, match="VM 150 is not running"):
        node.qemu(150).agent.ping.post()
    _task(api, node.qemu(150).delete())


def test_a_reassigned_data_disk_is_the_same_file_in_the_other_vm(
    real_pve: FakeProxmox, images: dict[str, GuestImage]
) -> None:
    """The real-VM fake's side of #13: a disk PVE allocates (scsi1 with serial homelab-data) is a blank file the
    guest gets on virtio-scsi with that serial; ``move_disk`` with target-vmid gives the other VM that same file
    (the guests only start: their boot is not waited for)."""
    api = pve(real_pve)
    node = api.nodes("pve1")
    url = realpve.image_url(images[STOCK])
    _task(api, node.storage("local")("download-url").post(url=url, content="import", filename="moves.qcow2"))
    for vmid in (161, 162):
        _task(
            api,
            node.qemu.post(
                vmid=vmid,
                name=f"moves{vmid}",
                memory=256,
                scsihw="virtio-scsi-single",
                scsi0="local-lvm:0,import-from=local:import/moves.qcow2",
                net0="virtio,bridge=vmbr0",
            ),
        )
    node.qemu(161).config.put(scsi1="local-lvm:1,serial=homelab-data,discard=on")

    def data_drive(vmid: int) -> list[str]:
        assert _task(api, node.qemu(vmid).status.start.post()) == "OK"
        try:
            argv = subprocess.run(["pgrep", "-af", f"name vm{vmid} "], capture_output=True, text=True).stdout
        finally:
            _task(api, node.qemu(vmid).status.stop.post())
        return [arg for arg in argv.split() if "drive-scsi1" in arg]

    before = data_drive(161)
    assert before[1].endswith(",lun=1,drive=drive-scsi1,serial=homelab-data"), before
    assert _task(api, node.qemu(161).move_disk.post(disk="scsi1", **{"target-vmid": 162})) == "OK"
    assert "scsi1" not in node.qemu(161).config.get()
    assert node.qemu(162).config.get()["scsi1"].startswith("local-lvm:vm-162-disk-")
    after = data_drive(162)
    assert after == before, "the other VM got another file"
    for vmid in (161, 162):
        _task(api, node.qemu(vmid).delete())


def _task(api: Any, upid: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.nodes("pve1").tasks(upid).status.get()
        if status["status"] == "stopped":
            return str(status["exitstatus"])
        time.sleep(0.2)
    raise TimeoutError(upid)


# --------------------------------------------------------------- stage 2: a cloud-init change


class RePinned:
    def __init__(self, old: str, new_key: Path) -> None:
        self.old = old
        self.new_key = new_key


@pytest.fixture(scope="module")
def re_pinned(lab: Lab, up_run: UpRun, tmp_path_factory: pytest.TempPathFactory) -> RePinned:
    """A new SSH key changes PVE's user-data, so the instance id: the reboot makes cloud-init regenerate the
    host keys, and homelab must pin the new one (an old pin would make every later SSH refuse the VM)."""
    old = lab.host()["host_key"]
    new_key = tmp_path_factory.mktemp("newkey") / "id_new"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "new@guest", "-f", str(new_key)], check=True)
    data = yaml.safe_load(lab.path.read_text())
    data["access"]["ssh_keys"].append(new_key.with_suffix(".pub").read_text().strip())
    write_lab(lab.path, data)
    with timed("homelab up with a reboot (cloud-init change)"):
        lab.must("up", "--yes", "--no-deploy")
    return RePinned(old, new_key)


def test_a_cloud_init_change_re_pins_the_new_host_key(lab: Lab, re_pinned: RePinned) -> None:
    old = re_pinned.old
    wait_for_port(lab.address)
    seen = _guest_host_key(lab)
    assert seen.split()[:2] != old.split()[:2], "cloud-init kept the old host keys for a new instance"
    pinned = lab.host()["host_key"]
    assert pinned is not None, "homelab forgot the host key"
    assert pinned.split()[:2] != old.split()[:2], "homelab kept the old pin after the reboot"
    assert pinned.split()[:2] == seen.split()[:2], f"homelab pinned {pinned}, the VM has {seen}"
    assert ssh(lab.address, re_pinned.new_key, pinned, "true").returncode == 0
    refused = ssh(lab.address, re_pinned.new_key, old, "true")
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr


def _guest_host_key(lab: Lab, timeout: float = 600) -> str:
    """The VM's ed25519 host key through the fake's agent endpoint, once the agent answers."""
    from proxmoxer.core import ResourceException

    vm = pve(lab.fake).nodes("pve1").qemu(lab.vmid())
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(vm.agent("file-read").get(file="/etc/ssh/ssh_host_ed25519_key.pub")["content"]).strip()
        except ResourceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


# ------------------------------------------------------------------ stage 3: Docker and the stack (full run)


def busybox_rootfs() -> bytes:
    """A tar of an image's root: a static busybox, nothing else (no image can be pulled here)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
    return buffer.getvalue()


class Deployed:
    """What the deploy stage printed."""

    def __init__(self, no_start: str, up: str) -> None:
        self.no_start = no_start
        self.up = up


@pytest.fixture(scope="module")
def deployed(lab: Lab, up_run: UpRun) -> Deployed:
    """`homelab deploy --no-start` (Docker from the local repository, the data disk formatted and mounted, the
    stack's files), a static busybox imported as every image the stack pins, then `homelab up` starts it."""
    if not os.path.exists(BUSYBOX):
        pytest.skip(f"no static {BUSYBOX} to build an image from offline (Debian package busybox-static)")
    with timed("homelab deploy --no-start (Docker install, data disk)"):
        no_start = lab.must("deploy", "--yes", "--no-start")
    with timed("image import over SSH"):
        entrypoint = '["/bin/busybox", "sh", "-c", "trap \\"exit 0\\" TERM; /bin/busybox sleep 3600 & wait", "sh"]'
        tags = " ".join(f"{image}:{tag}" for image, _, tag in pinned_images(STACK))
        script = (
            f"sudo docker import -c 'ENTRYPOINT {entrypoint}' - busybox:test >/dev/null && "
            f"for t in {tags}; do sudo docker tag busybox:test $t; done"
        )
        result = lab.ssh(script, input=busybox_rootfs())
        assert result.returncode == 0, result.stdout + result.stderr
    with timed("homelab up (stack start)"):
        up = lab.must("up", "--yes")
    return Deployed(no_start, up)


@full_run
def test_deploy_installs_the_distributions_docker_from_the_local_repository(
    lab: Lab, deployed: Deployed, apt_server: aptrepo.AptRepoServer
) -> None:
    assert "web: changed Install Docker and compose" in deployed.no_start
    fetched = {url.rsplit("/", 1)[-1].split("_")[0] for _, url, status in apt_server.requests if status == 200}
    assert {"docker.io", "docker-compose", "containerd", "runc"} <= fetched
    result = lab.ssh("systemctl is-enabled docker && docker-compose version --short && id -nG")
    assert result.returncode == 0, result.stderr
    enabled, compose, groups = result.stdout.splitlines()
    assert enabled == "enabled" and compose.startswith("1.29") and "docker" in groups.split()


@full_run
def test_deploy_formats_and_mounts_the_data_disk(lab: Lab, deployed: Deployed) -> None:
    result = lab.ssh(f"findmnt -n -o SOURCE,FSTYPE,LABEL {DATA_DIR}; stat -c %U {DATA_DIR}; grep homelab /etc/fstab")
    assert result.returncode == 0, result.stdout + result.stderr
    mount, owner, fstab = result.stdout.splitlines()
    assert mount.split()[1:] == ["ext4", "homelab-data"]
    assert owner == "homelab" and "nofail" in fstab


@full_run
def test_up_starts_the_stack_from_the_local_image(lab: Lab, deployed: Deployed) -> None:
    assert "web: changed Compose up: traefik" in deployed.up
    result = lab.ssh("sudo docker ps --format '{{.Names}} {{.Image}} {{.State}}'")
    assert result.returncode == 0, result.stderr
    running = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    images = {f"{image}:{tag}" for image, _, tag in pinned_images(STACK)}
    assert {image for image, _ in running.values()} == images, running
    assert all(state == "running" for _, state in running.values()), running


@full_run
def test_up_again_changes_nothing(lab: Lab, deployed: Deployed) -> None:
    lab.fake.requests(clear=True)
    started = time.monotonic()
    out = lab.must("up", "--yes")
    TIMINGS["homelab up, nothing to do"] = time.monotonic() - started
    assert "Plan: 1 unchanged." in out
    assert "(no file or package would change)" in out, out
    assert [r for r in lab.fake.requests() if r[0] != "GET"] == []


# --------------------------------------------- stage 4: a replacement keeps the data disk (full run)


@pytest.fixture(scope="module")
def proof(lab: Lab, deployed: Deployed) -> str:
    """A file on the data disk, written over SSH and synced: the replacement must keep it."""
    text = f"written at {time.time()}\n"
    result = lab.ssh(f"printf %s '{text}' > {DATA_DIR}/proof.txt && sync")
    assert result.returncode == 0, result.stderr
    return text


def add_real_template_version(fake: FakeProxmox, base: str = "debian") -> str:
    """A newer version of template ``base``, as a later `homelab template build` leaves one: a linked clone of
    the newest version (a real disk, so its clones boot), named and described as the new version."""
    from homelab.templates.naming import new_version

    api = pve(fake)
    node = api.nodes("pve1")
    versions = sorted((vm["name"], vm["vmid"]) for vm in fake.vms() if vm["template"])
    old_name, old_vmid = versions[-1]
    old_version = old_name.rsplit("-", 1)[1]
    version = new_version(datetime.now(UTC), [old_version])
    new_vmid = max(vm["vmid"] for vm in fake.vms()) + 100
    name = f"{base}-{version}"
    _task(api, node.qemu(old_vmid).clone.post(newid=new_vmid, name=name, full=0))
    config = node.qemu(old_vmid).config.get()
    node.qemu(new_vmid).config.put(
        description=str(config.get("description", "")).replace(old_version, version), tags=config["tags"]
    )
    _task(api, node.qemu(new_vmid).template.post())
    return name


class Replaced:
    def __init__(self, old_vmid: int, old_volume: str, late: str, output: str) -> None:
        self.old_vmid = old_vmid
        self.old_volume = old_volume
        self.late = late
        self.output = output


@pytest.fixture(scope="module")
def replaced(lab: Lab, proof: str) -> Replaced:
    """A newer template version: `homelab up` replaces the VM, moving its data disk to the new one.

    Right before, a file is written and NOT synced, as a stack writes: it is still in the guest's page cache
    when the replacement begins (ext4 writes delayed data back after up to 30 s), so only a clean shutdown
    of the old VM gets it onto the disk (a hard stop, as homelab made before, loses it)."""
    old_vmid = lab.vmid()
    old_volume = _config(lab.fake, old_vmid)["scsi1"].split(",")[0]
    add_real_template_version(lab.fake)
    late = f"written just before the replacement, at {time.time()}\n"
    result = lab.ssh(f"printf %s '{late}' > {DATA_DIR}/late.txt")
    assert result.returncode == 0, result.stderr
    with timed("homelab up replacing the VM (data disk moved)"):
        out = lab.must("up", "--yes", "--no-deploy")
    return Replaced(old_vmid, old_volume, late, out)


@full_run
def test_a_template_upgrade_replaces_the_vm_and_keeps_the_data_disk(lab: Lab, replaced: Replaced, proof: str) -> None:
    new_vmid = lab.vmid()
    assert new_vmid != replaced.old_vmid
    assert replaced.old_vmid not in [vm["vmid"] for vm in lab.fake.vms()]
    assert f"the data disk moves from {replaced.old_vmid} to the new VM (kept, not copied)" in replaced.output
    volume = _config(lab.fake, new_vmid)["scsi1"]
    assert "serial=homelab-data" in volume
    assert volume.split(",")[0] != replaced.old_volume  # renamed to the new VM's vmid, as PVE's reassign does
    # The new VM's boot disk is new (no fstab line yet: the next deploy mounts the disk), so look read-only.
    result = lab.ssh(
        f"sudo mkdir -p /mnt/data && sudo mount -o ro {DATA_DEVICE} /mnt/data && cat /mnt/data/proof.txt && "
        "echo --- && cat /mnt/data/late.txt; sudo umount /mnt/data"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"{proof}---\n{replaced.late}"


# ------------------------------------------------------------------------------------------ last


def test_shutdown_stops_the_real_guest(lab: Lab, up_run: UpRun) -> None:
    """Last: PVE's shutdown goes through the agent; the QEMU process ends and the API says stopped."""
    from proxmoxer.core import ResourceException

    api = pve(lab.fake)
    vmid = lab.vmid()
    vm = api.nodes("pve1").qemu(vmid)
    with timed("shutdown"):
        assert _task(api, vm.status.shutdown.post(timeout=300)) == "OK"
    assert vm.status.current.get()["status"] == "stopped"
    with pytest.raises(ResourceException, match="is not running"):
        vm.agent.ping.post()
    qemu = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name vm{vmid} "], capture_output=True, text=True)
    assert qemu.stdout == "", "the guest's QEMU still runs"
