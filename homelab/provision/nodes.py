"""Before planning: every node the lab names exists in the cluster and is online, and every GPU (a PCI resource
mapping, vms[].gpu) exists with a device on its VM's node; else one line per problem naming the lab file's key,
instead of the server's error halfway through apply (or a VM that does not start)."""

from __future__ import annotations

from pathlib import Path

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import LabFileError, Problem
from homelab.lab.models import Lab
from homelab.lab.yamlread import BoundedLoader, Loc, compose, format_loc, locate


class NodeProblems(LabFileError):
    """Nodes the lab names that the cluster lacks or that are not online, GPU mappings it lacks. Exit code 2."""

    def __init__(self, found: list[tuple[Loc, str]], file: str = "lab.yml", lines: dict[Loc, int] | None = None):
        self.found = found
        super().__init__([Problem(file, (lines or {}).get(loc), format_loc(loc), msg) for loc, msg in found])

    def pinned(self, path: Path) -> NodeProblems:
        """The same problems, each with the line of its key in the lab file ``path``."""
        try:
            loader = BoundedLoader(path.read_text(encoding="utf-8"))
            try:
                root = compose(loader, str(path))
            finally:
                loader.dispose()
        except Exception:  # the file changed since it was loaded: the key path alone still says where
            return NodeProblems(self.found, str(path))
        return NodeProblems(self.found, str(path), {loc: locate(root, loc) for loc, _ in self.found})


def check_nodes(api: PveApi, lab: Lab, gpus: bool = False) -> None:
    """Raise NodeProblems when a node named by proxmox.node or a VM's node is missing or not online, and (``gpus``:
    for commands that create or configure VMs) when a VM's GPU mapping is missing."""
    named: list[tuple[Loc, str]] = [(("proxmox", "node"), lab.proxmox.node)]
    named += [(("vms", i, "node"), vm.node) for i, vm in enumerate(lab.vms) if vm.node]
    status = {str(n.get("node")): str(n.get("status", "unknown")) for n in api.get("/nodes") or []}
    found: list[tuple[Loc, str]] = []
    for loc, node in named:
        if node not in status:
            found.append(
                (loc, f"node {node!r} is not in the cluster (its nodes: {', '.join(sorted(status)) or 'none'})")
            )
        elif status[node] != "online":
            found.append((loc, f"node {node!r} is {status[node]}, not online: bring it up or move its VMs"))
    if gpus:
        found += missing_mappings(api, lab)
    if found:
        raise NodeProblems(found)


def missing_mappings(api: PveApi, lab: Lab) -> list[tuple[Loc, str]]:
    """The VMs whose GPU mapping is not one the token sees, or has no device on the VM's node.

    PVE lists only the mappings the caller holds Mapping.Use, .Audit or .Modify on: one it may not use is
    missing to it too, and the message says both."""
    gpus = [(i, vm) for i, vm in enumerate(lab.vms) if vm.gpu]
    if not gpus:
        return []
    mappings = {str(m.get("id")): m for m in api.get("/cluster/mapping/pci") or []}
    found: list[tuple[Loc, str]] = []
    for i, vm in gpus:
        node = vm.node or lab.proxmox.node
        mapping = mappings.get(str(vm.gpu))
        if mapping is None:
            seen = ", ".join(sorted(mappings)) or "none"
            found.append(
                (
                    ("vms", i, "gpu"),
                    f"PCI resource mapping {vm.gpu!r} is not in the cluster, or the token lacks Mapping.Use on "
                    f"/mapping/pci/{vm.gpu} (mappings it may use: {seen}); add it under Datacenter > Resource "
                    "Mappings",
                )
            )
        elif not any(_entry(e).get("node") == node for e in mapping.get("map") or []):
            found.append((("vms", i, "gpu"), f"PCI resource mapping {vm.gpu!r} has no device on node {node!r}"))
    return found


def _entry(text: object) -> dict[str, str]:
    """``node=pve1,path=0000:01:00.0,id=8086:56a0`` as a dict."""
    return dict(part.split("=", 1) for part in str(text).split(",") if "=" in part)
