"""Reading PVE's option strings (``virtio=BC:24:11:00:90:00,bridge=vmbr0``) for the hardware a clone inherits."""

from __future__ import annotations

from typing import Any

CLOUDINIT_SLOTS = (*(f"ide{n}" for n in range(4)), *(f"sata{n}" for n in range(6)), *(f"scsi{n}" for n in range(31)))


def options(value: Any) -> tuple[str, dict[str, str]]:
    """(the first item, the ``key=value`` items after it) of a PVE option string."""
    head, *rest = str(value).split(",")
    pairs = dict(item.split("=", 1) for item in rest if "=" in item)
    return head, pairs


def volume_storage(value: Any) -> str | None:
    """The storage of a drive (``local-lvm:vm-100-disk-0,size=8G`` -> ``local-lvm``)."""
    head, _ = options(value)
    return head.split(":", 1)[0] if ":" in head else None


def network(value: Any) -> dict[str, str]:
    """net0 as model, mac, bridge, firewall (``virtio=BC:..,bridge=vmbr0,firewall=1``)."""
    head, pairs = options(value)
    model, _, mac = head.partition("=")
    found = {"model": model}
    if mac:
        found["mac"] = mac
    found.update(pairs)
    return found


def cpu_type(value: Any) -> str | None:
    """The CPU type of a ``cpu`` value (``host`` or ``cputype=host,flags=+aes``)."""
    head, pairs = options(value)
    if "=" in head:
        key, _, type_ = head.partition("=")
        return type_ if key == "cputype" else pairs.get("cputype")
    return head or None


def cloudinit_drive(config: dict[str, Any]) -> tuple[str, str | None] | None:
    """(slot, storage) of the cloud-init drive, or None when the VM has none."""
    for slot in CLOUDINIT_SLOTS:
        value = config.get(slot)
        if value is not None and "cloudinit" in str(value):
            return slot, volume_storage(value)
    return None


def flag(pairs: dict[str, str], key: str) -> bool | None:
    """A 0/1 option as a bool; None when not set."""
    return None if key not in pairs else pairs[key] in ("1", "on", "true")
