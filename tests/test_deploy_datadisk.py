"""The deploy's datadisk role on an SSH test host: a blank data disk is formatted once, mounted by label at
/home/<user>/data (fstab, nofail) and handed to the login user; a disk that holds a file system is never
formatted again, so what the stacks wrote there survives redeploys (and, with the disk, replacements).

A loop device stands in for the VM's data disk (serial homelab-data on a real VM); it is given to the role
as ``homelab_data_device``. Test hosts have no sudo, so the login user here is a second name for uid 0 (with a
plain /bin/sh, not the machine's root shell setup) and the role runs without become.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from homelab.adapters.sshkeys import ensure_admin_key
from homelab.deploy.plan import DeployOptions
from homelab.deploy.service import deploy_stacks
from homelab.state.hosts import Host, save_hosts
from tests.harness.fixtures_hosts import HostFactory
from tests.harness.labs import make_lab

pytestmark = pytest.mark.integration


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("losetup and mkfs.ext4 are needed to stand in for a data disk (util-linux, e2fsprogs)")
    image = tmp_path / "data.img"
    with image.open("wb") as f:
        f.truncate(64 * 1024**2)
    made = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_the_data_disk_is_formatted_once_mounted_and_kept(
    tmp_path: Path, ssh_hosts: HostFactory, loop_device: str
) -> None:
    lab = make_lab(vms=[{"name": "media", "ip": "10.10.0.20", "data_disk": "1G", "stacks": ["homepage"]}])
    (vm,) = ssh_hosts(1)
    vm.exec(["useradd", "-o", "-u", "0", "-g", "0", "-m", "-d", "/home/homelab", "-s", "/bin/sh", "homelab"])
    vm.exec(["usermod", "-p", "*", "homelab"])  # no password, yet not locked for SSH
    with open(vm.authorized_keys, "a", encoding="utf-8") as keys:
        keys.write(ensure_admin_key(lab) + "\n")
    save_hosts(lab, [Host("media", vm.address, "homelab", host_key=vm.host_key_pub)])
    options = DeployOptions(
        install_packages=False,
        start_stacks=False,
        extra_vars={"homelab_data_device": loop_device, "homelab_data_become": False},
    )
    lines: list[str] = []
    first = deploy_stacks(lab, lines.append, lambda question: None, options)
    assert first.ok, "\n".join(lines)
    # the preview: one module run says what the data disk tasks will do
    assert f"  + media: {loop_device} (blank data disk: formatted, ext4)" in lines, lines
    assert "  ~ media: /home/homelab/data (the data disk mounted here)" in lines, lines
    assert any(line.startswith("      +LABEL=homelab-data /home/homelab/data ext4") for line in lines), lines
    assert any("media: changed Format the blank data disk (never" in line for line in lines), lines
    mounted = vm.exec(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/home/homelab/data"]).stdout.split()
    assert mounted == [loop_device, "ext4"]
    owner = vm.exec(["stat", "-c", "%u", "/home/homelab/data"]).stdout.strip()
    assert owner == vm.exec(["id", "-u", "homelab"]).stdout.strip()
    assert vm.exec(["mountpoint", "-q", "/home/homelab/data"], check=False).returncode == 0
    fstab = vm.exec(["cat", "/etc/fstab"]).stdout
    assert "LABEL=homelab-data /home/homelab/data ext4 defaults,nofail 0 2" in fstab

    vm.exec(["sh", "-c", "echo kept > /home/homelab/data/library.db"])
    vm.exec(["umount", "/home/homelab/data"])  # as after a reboot into a new VM: fstab mounts it again
    lines.clear()
    again = deploy_stacks(lab, lines.append, lambda question: None, options)
    assert again.ok, "\n".join(lines)
    assert "  ~ media: /home/homelab/data (the data disk mounted here)" in lines, lines
    assert not any("formatted" in line or "/etc/fstab" in line for line in lines), lines
    assert any("media: changed Mount it now" in line for line in lines), lines
    assert not any("Format the blank data disk" in line for line in lines), lines
    assert vm.exec(["cat", "/home/homelab/data/library.db"]).stdout == "kept\n"
    assert vm.exec(["cat", "/etc/fstab"]).stdout.count("LABEL=homelab-data") == 1

    lines.clear()  # mounted, in fstab, the user's: the preview finds nothing to do, so nothing runs
    third = deploy_stacks(lab, lines.append, lambda question: None, options)
    assert third.ok, "\n".join(lines)
    assert any("Nothing to change" in line for line in lines), lines
    assert not any("Mount it now" in line for line in lines), lines
