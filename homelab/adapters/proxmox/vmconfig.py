"""The config keys homelab owns on a lab VM, as Proxmox stores them: the one place they are computed.

The VM planner compares them with the live config; `homelab export terraform` writes the same values as HCL,
so a VM homelab calls unchanged is one Terraform calls unchanged too.
"""

from __future__ import annotations

import urllib.parse

from homelab.adapters.proxmox.marks import describe_vm
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.lab.models import Lab, Vm


def desired_config(
    lab: Lab, vm: Vm, version: TemplateVersion, state: str = "ready", admin_key: str | None = None
) -> dict[str, str]:
    """The PVE config keys homelab owns for a VM, as PVE stores them (sshkeys decoded)."""
    net = lab.network
    prefix = net.subnet.split("/")[1]
    ipconfig = "ip=dhcp" if vm.ip == "dhcp" else f"ip={vm.ip}/{prefix},gw={net.gateway}"
    config = {
        "cores": str(vm.cores),
        "memory": str(vm.memory),
        "tags": ";".join(sorted({lab.tag, *vm.tags})),
        "ciuser": lab.access.user,
        "ipconfig0": ipconfig,
        "onboot": "1",
        "agent": "1",
        "description": describe_vm(lab.name, vm.name, version.template, version.version, state),
    }
    keys = [*lab.access.ssh_keys, *([admin_key] if admin_key else [])]
    if keys:
        config["sshkeys"] = "\n".join(keys)
    if net.dns:
        config["nameserver"] = " ".join(net.dns)
    if net.domain:
        config["searchdomain"] = net.domain
    if vm.gpu:
        # A resource mapping, which a token may use with Mapping.Use (a raw host= device is for root@pam only).
        # No pcie=1: that needs the q35 machine and homelab keeps PVE's default (i440fx), where qemu-server
        # refuses it at start; the GPU is then a plain PCI device, which /dev/dri and transcoding work with.
        config["hostpci0"] = f"mapping={vm.gpu}"
    return config


def encode_config(config: dict[str, str]) -> dict[str, str]:
    """The config as the API takes it: PVE wants sshkeys URL-encoded."""
    out = dict(config)
    if "sshkeys" in out:
        out["sshkeys"] = urllib.parse.quote(out["sshkeys"], safe="")
    return out


def with_mac_of(old_net: str, new_net: str) -> str | None:
    """``new_net`` (a netN value, ``virtio=BC:..,bridge=vmbr0``) with ``old_net``'s MAC address, or None when
    either has none or the MAC is already the same."""
    old_head, _, _ = old_net.partition(",")
    new_head, sep, rest = new_net.partition(",")
    _, has_old, old_mac = old_head.partition("=")
    model, has_new, new_mac = new_head.partition("=")
    if not (has_old and has_new) or old_mac.lower() == new_mac.lower():
        return None
    return f"{model}={old_mac}{sep}{rest}"
