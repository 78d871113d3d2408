"""SSH test hosts made to look like a lab's VMs after `homelab apply` and cloud-init: the lab user with the
admin key, and hosts.json with their pinned host keys."""

from __future__ import annotations

from homelab.adapters.sshkeys import ensure_admin_key
from homelab.lab.models import Lab
from homelab.state.hosts import Host, save_hosts
from tests.harness.hosts import SshHost

USER = "homelab"


def add_lab_user(host: SshHost) -> None:
    """The lab user as cloud-init leaves it: /home/homelab, no password, yet not locked for SSH."""
    host.exec(["useradd", "-m", "-d", f"/home/{USER}", "-s", "/bin/sh", USER])
    host.exec(["usermod", "-p", "*", USER])


def authorize(host: SshHost, public_key: str) -> None:
    """Let ``public_key`` log in as the lab user (a host made with per_user_keys=True)."""
    script = f"mkdir -p /etc/ssh/authorized_keys && cat > /etc/ssh/authorized_keys/{USER}"
    host.exec(["sh", "-c", script], input=public_key)


def provision(lab: Lab, vms: dict[str, SshHost]) -> None:
    """What apply and cloud-init leave behind: the lab user with the admin key, hosts.json with pinned keys."""
    admin_pub = ensure_admin_key(lab)
    for vm in vms.values():
        add_lab_user(vm)
        authorize(vm, admin_pub)
    save_hosts(lab, [Host(name, vm.address, USER, host_key=vm.host_key_pub) for name, vm in vms.items()])
