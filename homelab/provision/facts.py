"""Live facts about the cluster, gathered once, read-only, before planning."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.cluster import ClusterFacts, gather_cluster
from homelab.adapters.proxmox.datadisks import kept_disks
from homelab.adapters.proxmox.labvms import LiveVm, boot_disk, read_lab_vms
from homelab.adapters.proxmox.placement import read_release, shared_templates
from homelab.adapters.proxmox.versions import TemplateVersion, usable_version
from homelab.interrupts import deferring_interrupts
from homelab.lab.models import Lab
from homelab.state.adminkey import read_admin_public

# LiveVm and boot_disk live in adapters.proxmox.labvms
__all__ = ["Facts", "LiveVm", "boot_disk", "gather", "kept_data"]


@dataclass(frozen=True, kw_only=True)
class Facts(ClusterFacts):
    """Everything the VM planner needs to know: the cluster's facts, plus the configs of the VMs that may be
    this lab's and the template versions its VMs may be cloned from."""

    managed: tuple[LiveVm, ...]
    # VMs named like a lab VM but not marked as this lab's: never touched.
    unmanaged_namesakes: tuple[LiveVm, ...]
    # per lab template, the versions VMs may be cloned from (usable_version), oldest first
    templates: dict[str, tuple[TemplateVersion, ...]]
    # homelab's own login key (a local fact): cloud-init puts it on every VM beside access.ssh_keys.
    admin_key: str | None = None
    # the PVE release (major, minor) from /version; None: unknown (version-gated settings are left out)
    release: tuple[int, int] | None = None
    # vmids of the template versions wholly on shared storage (read only for versions a VM on another node
    # needs): those clone straight to another node; the others are cloned on their node, then migrated.
    shared_templates: frozenset[int] = frozenset()


def gather(
    api: PveApi, lab: Lab, cluster: ClusterFacts | None = None, check: Callable[[], None] | None = None
) -> Facts:
    """The cluster's facts (or those just gathered, ``cluster``), then the configs of the VMs that may be this
    lab's, in parallel.

    The release (and ``check``, a read-only check of the caller's that raises to stop) go out beside the cluster's
    guests in a pool of ``settings.api_readers`` threads; the config reads right after, ``api_readers`` at once
    (PveApi.get_many), so a lab of N VMs takes about 2 + N / api_readers round trips, whatever the latency."""
    with (
        ThreadPoolExecutor(lab.settings.api_readers, thread_name_prefix="homelab-read") as pool,
        deferring_interrupts(api.cancel),  # inside: the pool's shutdown waits only after the handler is back
    ):
        listed = pool.submit(gather_cluster, api) if cluster is None else None
        checked = pool.submit(check) if check is not None else None
        release = pool.submit(read_release, api)
        if checked is not None:
            checked.result()
        cluster = listed.result() if listed is not None else cluster
        assert cluster is not None
        pve_release = release.result()  # out beside the guest list: the config reads alone stay within the bound
        templates = {
            t.name: tuple(v for v in cluster.versions_of(t.name) if usable_version(v, lab, t.version))
            for t in lab.templates
        }
        managed, namesakes = read_lab_vms(api, lab, cluster.guests, pool)
    elsewhere = {
        version
        for vm in lab.vms
        for version in templates[lab.template_for(vm).name]
        if version.node != (vm.node or lab.proxmox.node)
    }
    return Facts(
        guests=cluster.guests,
        used_vmids=cluster.used_vmids,
        managed=managed,
        unmanaged_namesakes=namesakes,
        templates=templates,
        admin_key=read_admin_public(lab),
        release=pve_release,
        shared_templates=shared_templates(api, sorted(elsewhere, key=lambda v: v.vmid)),
    )


def kept_data(facts: Facts) -> dict[str, tuple[int, str, str]]:
    """Lab VM name -> (keeper vmid, unusedN key, node): the data disks the lab's keepers hold."""
    kept: dict[str, tuple[int, str, str]] = {}
    for live in facts.managed:
        if live.is_keeper:
            for key, name in kept_disks(live.config).items():
                kept.setdefault(name, (live.vmid, key, live.node))
    return kept
