"""What the export reads from Proxmox, once and read-only: the lab's VMs as they run, and the template versions
the VMs not made yet would be cloned from (their configs give the hardware a clone inherits)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.cluster import ClusterFacts, gather_cluster
from homelab.adapters.proxmox.labvms import LiveVm, read_lab_vms
from homelab.adapters.proxmox.versions import TemplateMissing, TemplateVersion, pick_version, usable_version
from homelab.lab.models import Lab, Template
from homelab.state.adminkey import read_admin_public


@dataclass(frozen=True, kw_only=True)
class ExportFacts(ClusterFacts):
    """The cluster, the VMs marked as the lab's, and the configs of the template versions new VMs would use."""

    managed: tuple[LiveVm, ...] = ()
    # VMs named like a lab VM but not marked as this lab's: never the lab's, so never imported
    namesakes: tuple[LiveVm, ...] = ()
    # vmid -> config of a template version a VM not made yet would be cloned from
    template_configs: dict[int, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    # homelab's own login key: cloud-init puts it on every VM beside access.ssh_keys, so the export does too.
    admin_key: str | None = None

    def version_for(self, lab: Lab, template: Template) -> TemplateVersion | str:
        """The version a new VM of ``template`` is cloned from (as `homelab apply` picks it), or why there is none."""
        versions = [v for v in self.versions_of(template.name) if usable_version(v, lab, template.version)]
        try:
            return pick_version(versions, template)
        except TemplateMissing as missing:
            return missing.reason


def gather_export(api: PveApi, lab: Lab) -> ExportFacts:
    """The cluster's guests, the configs of the VMs that may be the lab's, and of the template versions the
    lab's missing VMs would be cloned from."""
    cluster = gather_cluster(api)
    managed, namesakes = read_lab_vms(api, lab, cluster.guests)
    facts = ExportFacts(guests=cluster.guests, managed=managed, namesakes=namesakes, admin_key=read_admin_public(lab))
    running = {(vm.meta or {}).get("vm") or vm.name for vm in managed}
    wanted = {
        version.vmid: version
        for vm in lab.vms
        if vm.name not in running
        and isinstance(version := facts.version_for(lab, lab.template_for(vm)), TemplateVersion)
    }
    configs = {vmid: api.get(f"/nodes/{v.node}/qemu/{vmid}/config") or {} for vmid, v in sorted(wanted.items())}
    return replace(facts, template_configs=configs)
