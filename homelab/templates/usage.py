"""`homelab template list` and `homelab template prune`: the versions on Proxmox and who uses them.

Prune is planned (pure) from the facts, shown, confirmed, then carried out. It never deletes a version a
VM was cloned from (by homelab's description line or as a linked clone), the pinned version, one of the
newest ``keep``, or a version another lab (or no lab) built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from homelab.adapters.proxmox.api import PveApi
from homelab.adapters.proxmox.cluster import gather_cluster
from homelab.adapters.proxmox.marks import lab_tag
from homelab.adapters.proxmox.versions import TemplateMissing, TemplateVersion, pick_version
from homelab.adapters.proxmox.vms import delete_vm
from homelab.errors import InputError
from homelab.lab.models import Lab, Template
from homelab.templates.facts import VersionDetails, lab_template, version_details

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TemplateListing:
    """One template of the lab: its versions on Proxmox (oldest first) and the one new VMs get."""

    template: str
    versions: tuple[VersionDetails, ...]
    selected: TemplateVersion | None
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (for --json)."""
        return {
            "template": self.template,
            "selected": self.selected.version if self.selected else None,
            "problem": self.problem,
            "versions": [
                {
                    "version": d.version.version,
                    "vmid": d.version.vmid,
                    "node": d.version.node,
                    "name": d.version.name,
                    "tags": list(d.version.tags),
                    "record": d.record,
                    "used_by": [{"vmid": u.vmid, "name": u.name, "node": u.node, "how": u.how} for u in d.used_by],
                }
                for d in self.versions
            ],
        }


def _selected(versions: list[TemplateVersion], template: Template) -> tuple[TemplateVersion | None, str | None]:
    try:
        return pick_version(versions, template), None
    except TemplateMissing as exc:
        return None, str(exc)


def list_templates(api: PveApi, lab: Lab, names: Iterable[str] = ()) -> list[TemplateListing]:
    """Each lab template (or those named) with its versions and the VMs that use each."""
    models = [lab_template(lab, n) for n in names] or list(lab.templates)
    cluster = gather_cluster(api)
    listings = []
    for model in models:
        versions = cluster.versions_of(model.name)
        selected, problem = _selected(versions, model)
        listings.append(
            TemplateListing(model.name, tuple(version_details(api, cluster.guests, versions)), selected, problem)
        )
    return listings


@dataclass(frozen=True)
class KeepVersion:
    """A version prune leaves alone, and why."""

    version: TemplateVersion
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return f"keep   {self.version.name} (VM {self.version.vmid}): {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class DeleteVersion:
    """Delete a version no VM uses."""

    version: TemplateVersion

    def describe(self) -> str:
        return f"delete {self.version.name} (VM {self.version.vmid} on {self.version.node}): no VM uses it"


@dataclass(frozen=True)
class PrunePlan:
    """What prune does to one template's versions."""

    template: str
    keep: tuple[KeepVersion, ...]
    delete: tuple[DeleteVersion, ...]

    def describe(self) -> list[str]:
        """The plan as lines for people, newest first."""
        rows: list[KeepVersion | DeleteVersion] = [*self.keep, *self.delete]
        rows.sort(key=lambda a: a.version.version, reverse=True)
        head = f"template {self.template}: {len(self.delete)} to delete, {len(self.keep)} to keep"
        return [head, *(f"  {row.describe()}" for row in rows)]


def plan_prune(lab: Lab, template: Template, details: Iterable[VersionDetails], keep: int) -> PrunePlan:
    """Decide which versions to delete. Pure.

    Kept: the newest ``keep``, the pinned version, every version a VM uses, and versions not tagged as this
    lab's (another lab's, or not built by homelab).
    """
    if keep < 1:
        raise InputError("--keep must be 1 or more: the newest version is what new VMs are cloned from")
    ordered = sorted(details, key=lambda d: (d.version.version, d.version.vmid), reverse=True)
    keeps: list[KeepVersion] = []
    deletes: list[DeleteVersion] = []
    for rank, detail in enumerate(ordered):
        version = detail.version
        reasons = []
        if rank < keep:
            reasons.append("newest" if rank == 0 else f"one of the newest {keep}")
        if template.version and version.version == template.version:
            reasons.append("pinned by the lab file")
        if detail.used_by:
            names = ", ".join(
                f"{u.name} ({u.vmid}{', linked clone' if u.how != 'cloned' else ''})" for u in detail.used_by
            )
            reasons.append(f"used by {names}")
        if lab_tag(lab.name) not in version.tags:
            reasons.append(f"not tagged {lab_tag(lab.name)} (another lab's, or not built by homelab)")
        if reasons:
            keeps.append(KeepVersion(version, tuple(reasons)))
        else:
            deletes.append(DeleteVersion(version))
    return PrunePlan(template.name, tuple(keeps), tuple(deletes))


def gather_prune(api: PveApi, lab: Lab, names: Iterable[str], keep: int) -> list[PrunePlan]:
    """Read the versions and their users, then plan prune for each template (or those named)."""
    models = [lab_template(lab, n) for n in names] or list(lab.templates)
    cluster = gather_cluster(api)
    plans = []
    for model in models:
        details = version_details(api, cluster.guests, cluster.versions_of(model.name))
        plans.append(plan_prune(lab, model, details, keep))
    return plans


def prune(api: PveApi, lab: Lab, plans: Iterable[PrunePlan], progress: Progress) -> list[TemplateVersion]:
    """Delete the versions the plans say to delete; returns them."""
    deleted = []
    for plan in plans:
        for action in plan.delete:
            version = action.version
            progress(action.describe())
            # Re-checked right before: the version's record must still name this lab, template and version.
            delete_vm(
                api,
                version.node,
                version.vmid,
                lab.name,
                timeout=lab.settings.timeouts.task,
                name=version.name,
                mark={"template": plan.template, "version": version.version},
            )
            deleted.append(version)
    return deleted
