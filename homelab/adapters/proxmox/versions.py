"""Template versions, found among the guests by name, and the one resolver of the version a VM is cloned from.

A version of template ``base`` is a Proxmox template named ``base-<YYYYMMDDHHMM>`` (its UTC build time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from homelab.adapters.proxmox.guests import Guest
from homelab.adapters.proxmox.marks import TEMPLATE_TAG
from homelab.errors import OperationError
from homelab.lab.models import Lab, Template

VERSION_FORMAT = "%Y%m%d%H%M"
_VERSION = re.compile(r"^\d{12}$")


class TemplateMissing(OperationError):
    """No version of a template (or not the pinned one) exists on Proxmox.

    The message says what to do; ``reason`` is the short form a plan shows beside the VM that needs it.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class TemplateVersion:
    """One built version of a template: the Proxmox template ``<template>-<version>``."""

    vmid: int
    node: str
    name: str
    version: str
    template: str = ""
    tags: tuple[str, ...] = ()

    @property
    def built_by_homelab(self) -> bool:
        """True if homelab tagged it as one of its template versions."""
        return TEMPLATE_TAG in self.tags


def version_name(template: str, version: str) -> str:
    """The Proxmox VM name of a version: ``base-202601010930``."""
    return f"{template}-{version}"


def parse_version_name(template: str, vm_name: str) -> str | None:
    """The version in a VM name of this template, or None if the name is not one of its versions."""
    prefix = f"{template}-"
    if not vm_name.startswith(prefix):
        return None
    version = vm_name[len(prefix) :]
    if not _VERSION.match(version):
        return None
    try:
        datetime.strptime(version, VERSION_FORMAT)
    except ValueError:
        return None
    return version


def find_versions(guests: Iterable[Guest], template: str) -> list[TemplateVersion]:
    """The versions of a template among the guests, oldest first: templates named ``<template>-<YYYYMMDDHHMM>``."""
    found = []
    for guest in guests:
        if not guest.template or guest.kind != "qemu":
            continue
        version = parse_version_name(template, guest.name)
        if version is not None:
            found.append(TemplateVersion(guest.vmid, guest.node, guest.name, version, template, guest.tags))
    return sorted(found, key=lambda v: (v.version, v.vmid))


def pick_version(versions: Sequence[TemplateVersion], template: Template) -> TemplateVersion:
    """The version new VMs of a template are cloned from: the pinned one if the lab pins one, else the newest
    of ``versions`` (oldest first). Raises TemplateMissing when there is none."""
    name = template.name
    if template.version:
        for candidate in versions:
            if candidate.version == template.version:
                return candidate
        have = ", ".join(v.version for v in versions) or "none"
        raise TemplateMissing(
            f"template {name!r}: the lab pins version {template.version}, which is not on Proxmox "
            f"(versions there: {have}); run `homelab template build {name}` or change the pin",
            reason=f"pinned version {version_name(name, template.version)} is not on Proxmox",
        )
    if not versions:
        raise TemplateMissing(
            f"template {name!r} has no version on Proxmox (no template named "
            f"{name}-YYYYMMDDHHMM): run `homelab template build {name}`",
            reason=f"no version of template {name!r} on Proxmox (run `homelab template build`)",
        )
    return versions[-1]


def usable_version(version: TemplateVersion, lab: Lab, pinned: str | None) -> bool:
    """A version VMs may be cloned from: built by homelab (tagged homelab-template) for this lab or for no lab
    in particular, never another lab's build; an explicitly pinned version is the user's choice."""
    if pinned and version.version == pinned:
        return True
    if TEMPLATE_TAG not in version.tags:
        return False
    other_labs = [t for t in version.tags if t.startswith("homelab-") and t not in (TEMPLATE_TAG, lab.tag)]
    return not other_labs
