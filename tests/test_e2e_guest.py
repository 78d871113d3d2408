"""Real Debian guests under QEMU: cloud-init, the guest agent, SSH host keys, apt without internet, and
`homelab up` against a fake Proxmox whose VMs are those guests.

The guests are TCG-emulated (KVM does not work here), so every boot costs minutes of CPU: the module boots
as few as it can. One stock guest (no agent, as Debian's cloud images ship) installs the agent from the
local apt repository; one VM made by `homelab up` from the agent image serves every test of the fake's
agent endpoints, power actions and SSH pinning.

Skips, with the reason, without root, QEMU, debootstrap or the Debian mirror (tests/harness/guest-deps.sh
installs the tools), or when HOMELAB_SKIP_REALVM is set; ``-m "not realvm"`` deselects the module. Images
and the apt repository are cached (tests/harness/guest_image.py, $HOMELAB_TEST_CACHE): the first run on a
machine builds them (minutes). Every QEMU runs inside the module's lab network namespace (``hlg-*``), which
the fixtures delete with whatever still runs in it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from homelab.demo.launcher import FakeProxmox
from tests.harness import aptrepo, guest_image, realpve, realvm
from tests.harness.guest_image import STOCK, GuestImage
from tests.harness.labs import write_lab
from tests.harness.nocloud import nocloud_seed

pytestmark = [pytest.mark.e2e, pytest.mark.realvm]

TIMINGS: dict[str, float] = {}
"""Seconds measured by the tests (printed at the end of the module, see ``timings``)."""


def _skip_reason() -> str | None:
    for reason in (guest_image.build_support(), realvm.guest_support(), aptrepo.repo_support()):
        if reason:
            return reason
    if os.environ.get("HOMELAB_SKIP_REALVM"):
        return f"HOMELAB_SKIP_REALVM is set: {os.environ['HOMELAB_SKIP_REALVM']}"
    return None


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    yield TIMINGS
    if TIMINGS:
        print("\nreal-guest timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def images(timings: dict[str, float]) -> dict[str, GuestImage]:
    """The stock image, built first if the cache lacks it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    # Only the stock variant (no agent): homelab's bake puts the agent in (the agent variant is for other uses).
    built = {STOCK: guest_image.ensure_image(STOCK)}
    timings["images"] = time.monotonic() - started
    return built


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
def client_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("client") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test@guest", "-f", str(key)], check=True)
    return key


def ssh(
    address: str, key: Path, host_key: str, command: str, *, user: str = "homelab", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` over SSH, trusting exactly ``host_key`` (StrictHostKeyChecking yes)."""
    known = key.parent / f"known_hosts-{address}"
    known.write_text(f"{address} {' '.join(host_key.split()[:2])}\n")
    argv = [
        "ssh",
        "-F",
        "none",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=20",
        f"{user}@{address}",
        command,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------------------------- stock guest


class StockGuest:
    """The stock-image guest booted at the start of the module (it boots while `homelab up` runs)."""

    def __init__(self, guest: realvm.Guest, address: str) -> None:
        self.guest = guest
        self.address = address


@pytest.fixture(scope="module")
def stock_guest(
    tmp_path_factory: pytest.TempPathFactory,
    images: dict[str, GuestImage],
    lab_net: realvm.LabNetwork,
    apt_server: aptrepo.AptRepoServer,
    client_key: Path,
) -> Iterator[StockGuest]:
    """A guest of the stock image (no agent), with the agent's port, a PVE-style seed, the client key."""
    mac = realvm.random_mac()
    address = lab_net.address(1)
    conf = {
        "name": "stock",
        "ciuser": "homelab",
        "sshkeys": client_key.with_suffix(".pub").read_text().strip(),
        "net0": f"virtio={mac.upper()},bridge=vmbr0",
        "ipconfig0": f"ip={address}/{lab_net.prefix},gw={lab_net.gateway}",
    }
    workdir = tmp_path_factory.mktemp("stock")
    guest = realvm.boot_guest(images[STOCK], lab_net, workdir, nocloud_seed(conf, 100), name="stock", mac=mac)
    try:
        yield StockGuest(guest, address)
    finally:
        guest.destroy()


# ---------------------------------------------------------------- `homelab up` on the real-VM fake


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


def homelab(lab: Path, *args: str) -> tuple[int, str, str]:
    from homelab.cli import cli

    result = CliRunner().invoke(cli, ["--lab", str(lab), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


class UpRun:
    """What the module's one `homelab up` left: the lab, its state folder, its VM's address."""

    def __init__(self, lab: Path, state: Path, address: str, output: str, seconds: float) -> None:
        self.lab = lab
        self.state = state
        self.address = address
        self.output = output
        self.seconds = seconds

    def host(self) -> dict[str, Any]:
        hosts = json.loads((self.state / "guest" / "hosts.json").read_text())["hosts"]
        assert [h["name"] for h in hosts] == ["web"]
        return dict(hosts[0])

    @property
    def admin_key(self) -> Path:
        return self.state / "guest" / "ssh" / "id_ed25519"


@pytest.fixture(scope="module")
def up_run(
    tmp_path_factory: pytest.TempPathFactory,
    images: dict[str, GuestImage],
    lab_net: realvm.LabNetwork,
    real_pve: FakeProxmox,
    client_key: Path,
    timings: dict[str, float],
    stock_guest: StockGuest,  # started first: it boots while `homelab up` runs
) -> Iterator[UpRun]:
    """`homelab up --yes --no-deploy` for a one-VM lab whose cloud image is the stock image (no guest agent, as
    Debian's and Ubuntu's ship): the issue's own scenario. homelab's bake boots it at build_ip, installs
    qemu-guest-agent from the harness's apt repository, cleans cloud-init and makes the template; the VM cloned
    from it is learned through its real agent once cloud-init finished."""
    root = tmp_path_factory.mktemp("lab")
    state, config = root / "state", root / "config"
    stock = images[STOCK]
    address = lab_net.address(2)
    data = {
        "name": "guest",
        "proxmox": {"url": real_pve.url, "node": "pve1", "token_id": real_pve.token_id, "ca_bundle": real_pve.cafile},
        "network": {
            "subnet": str(lab_net.subnet),
            "gateway": lab_net.gateway,
            "dns": [lab_net.gateway],
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
        "vms": [{"name": "web", "ip": address, "disk": "4G", "memory": 1024, "cores": 1}],
    }
    lab = write_lab(root / "lab.yml", data)
    env = {"HOMELAB_STATE_DIR": str(state), "HOMELAB_CONFIG_DIR": str(config), "HOMELAB_PROXMOX_TOKEN": ""}
    env["HOMELAB_PROXMOX_TOKEN"] = real_pve.token_secret
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = time.monotonic()
        code, out, err = homelab(lab, "up", "--yes", "--no-deploy")
        seconds = time.monotonic() - started
        assert code == 0, out + err + real_pve.log.read_text()[-3000:]
        timings["homelab up --no-deploy"] = seconds
        yield UpRun(lab, state, address, out, seconds)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def up_env(up_run: UpRun, real_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> UpRun:
    """The module's lab environment again for a test (the autouse fixture isolates each test)."""
    monkeypatch.setenv("HOMELAB_STATE_DIR", str(up_run.state))
    monkeypatch.setenv("HOMELAB_CONFIG_DIR", str(up_run.state.parent / "config"))
    monkeypatch.setenv("HOMELAB_PROXMOX_TOKEN", real_pve.token_secret)
    return up_run


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


def test_up_pins_the_host_key_the_real_agent_read(up_env: UpRun, client_key: Path) -> None:
    host = up_env.host()
    assert host["address"] == up_env.address
    assert host["host_key"].startswith("ssh-ed25519 ")
    # The agent starts after cloud-init's network stage wrote the host keys, but sshd comes later still:
    # `homelab up` may finish while port 22 is closed (what its deploy stage has to wait for).
    TIMINGS["sshd after up returned"] = wait_for_port(up_env.address)
    # SSH with homelab's own admin key, trusting only the pinned key: the guest really has that key.
    result = ssh(up_env.address, up_env.admin_key, host["host_key"], "cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == host["host_key"].split()[:2]
    # ... and the lab's access key works too (cloud-init got both through PVE's sshkeys)
    assert ssh(up_env.address, client_key, host["host_key"], "true").returncode == 0


def test_up_again_changes_nothing(up_env: UpRun, real_pve: FakeProxmox) -> None:
    real_pve.requests(clear=True)
    code, out, err = homelab(up_env.lab, "up", "--yes", "--no-deploy")
    assert code == 0, out + err
    assert "Plan: 1 unchanged." in out
    assert [r for r in real_pve.requests() if r[0] != "GET"] == []


def test_fake_agent_endpoints_are_answered_by_the_guest(up_env: UpRun, real_pve: FakeProxmox) -> None:
    api = pve(real_pve)
    vm = api.nodes("pve1").qemu(vmid_of(real_pve, "web"))
    interfaces = vm.agent("network-get-interfaces").get()["result"]
    addresses = {a["ip-address"] for i in interfaces for a in i.get("ip-addresses", [])}
    assert up_env.address in addresses
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


def test_a_cloud_init_change_re_pins_the_new_host_key(
    up_env: UpRun, real_pve: FakeProxmox, tmp_path: Path, timings: dict[str, float]
) -> None:
    """A new SSH key changes PVE's user-data, so the instance id: the reboot makes cloud-init regenerate the
    host keys, and homelab must pin the new one (an old pin would make every later SSH refuse the VM)."""
    old = up_env.host()["host_key"]
    new_key = tmp_path / "id_new"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "new@guest", "-f", str(new_key)], check=True)
    data = yaml.safe_load(up_env.lab.read_text())
    data["access"]["ssh_keys"].append(new_key.with_suffix(".pub").read_text().strip())
    write_lab(up_env.lab, data)

    started = time.monotonic()
    code, out, err = homelab(up_env.lab, "up", "--yes", "--no-deploy")
    timings["homelab up with a reboot"] = time.monotonic() - started
    assert code == 0, out + err
    wait_for_port(up_env.address)
    seen = _guest_host_key(real_pve, up_env)
    assert seen.split()[:2] != old.split()[:2], "cloud-init kept the old host keys for a new instance"
    pinned = up_env.host()["host_key"]
    assert pinned is not None, "homelab forgot the host key"
    assert pinned.split()[:2] != old.split()[:2], "homelab kept the old pin after the reboot"
    assert pinned.split()[:2] == seen.split()[:2], f"homelab pinned {pinned}, the VM has {seen}"
    assert ssh(up_env.address, new_key, pinned, "true").returncode == 0
    refused = ssh(up_env.address, new_key, old, "true")
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr


def _guest_host_key(fake: FakeProxmox, run: UpRun, timeout: float = 600) -> str:
    """The VM's ed25519 host key through the fake's agent endpoint, once the agent answers."""
    from proxmoxer.core import ResourceException

    vm = pve(fake).nodes("pve1").qemu(vmid_of(fake, "web"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(vm.agent("file-read").get(file="/etc/ssh/ssh_host_ed25519_key.pub")["content"]).strip()
        except ResourceException:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


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


def _task(api: Any, upid: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.nodes("pve1").tasks(upid).status.get()
        if status["status"] == "stopped":
            return str(status["exitstatus"])
        time.sleep(0.2)
    raise TimeoutError(upid)


def test_stock_guest_installs_the_agent_from_the_local_repository(
    stock_guest: StockGuest,
    apt_server: aptrepo.AptRepoServer,
    client_key: Path,
    timings: dict[str, float],
) -> None:
    """A stock cloud image has no agent; apt installs it from the test network; started, the agent answers."""
    guest, address = stock_guest.guest, stock_guest.address
    client = guest.agent_client()
    # No agent: learn the host key the way a person would, from the console (cloud-init prints it).
    host_key = _console_host_key(guest, timeout=900)
    timings["stock boot to host key on console"] = time.monotonic() - guest.started_at
    result = ssh(address, client_key, host_key, "cloud-init status --wait >/dev/null; cloud-init status")
    assert result.returncode == 0, result.stdout + result.stderr + guest.log_tail()
    assert "status: done" in result.stdout
    timings["stock boot to cloud-init done"] = time.monotonic() - guest.started_at
    # cloud-init's package_upgrade (PVE writes it) already went through the local repository
    assert any("/Release" in url and status == 200 for _, url, status in apt_server.requests)
    assert not client.ping(timeout=3), "a stock cloud image has no guest agent"

    started = time.monotonic()
    result = ssh(
        address,
        client_key,
        host_key,
        "sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-guest-agent",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    timings["agent install over SSH"] = time.monotonic() - started
    assert any(url.endswith(".deb") and "qemu-guest-agent" in url for _, url, _ in apt_server.requests)

    # Debian's package does not start it: the unit is static and deb-systemd-invoke starts only enabled units
    # (udev starts it at boot). Whoever installs it must start it (or reboot) before the agent answers.
    state = ssh(address, client_key, host_key, "systemctl is-active qemu-guest-agent")
    assert state.stdout.strip() == "inactive" and not client.ping(timeout=3)
    started_agent = ssh(address, client_key, host_key, "sudo systemctl start qemu-guest-agent")
    assert started_agent.returncode == 0, started_agent.stderr
    client.wait(timeout=120, alive=guest.running)
    assert client.file_read("/etc/ssh/ssh_host_ed25519_key.pub").decode().split()[:2] == host_key.split()[:2]
    # The harness's own checks through the agent: this boot's cloud-init ran for this seed's instance id.
    assert guest.cloud_init_finished()
    addresses = {a["ip-address"] for i in client.network_get_interfaces() for a in i.get("ip-addresses", [])}
    assert address in addresses


def _console_host_key(guest: realvm.Guest, timeout: float) -> str:
    """The ed25519 host key cloud-init prints between its SSH HOST KEY KEYS markers on the console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = guest.console_log.read_text(errors="replace") if guest.console_log.exists() else ""
        if "-----END SSH HOST KEY KEYS-----" in text:
            block = text.split("-----BEGIN SSH HOST KEY KEYS-----")[-1]
            for line in block.splitlines():
                if line.startswith("ssh-ed25519 "):
                    return line.strip()
        if not guest.running():
            break
        time.sleep(2)
    raise AssertionError(f"no host key on the console:\n{guest.log_tail()}")


def test_shutdown_stops_the_real_guest(up_env: UpRun, real_pve: FakeProxmox) -> None:
    """Last: PVE's shutdown goes through the agent; the QEMU process ends and the API says stopped."""
    from proxmoxer.core import ResourceException

    api = pve(real_pve)
    vm = api.nodes("pve1").qemu(vmid_of(real_pve, "web"))
    started = time.monotonic()
    assert _task(api, vm.status.shutdown.post(timeout=300)) == "OK"
    assert vm.status.current.get()["status"] == "stopped"
    with pytest.raises(ResourceException, match="is not running"):
        vm.agent.ping.post()
    vmid = vmid_of(real_pve, "web")
    qemu = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name vm{vmid} "], capture_output=True, text=True)
    assert qemu.stdout == "", "the guest's QEMU still runs"
    TIMINGS["shutdown"] = time.monotonic() - started
