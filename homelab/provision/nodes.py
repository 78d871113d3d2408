"""Before planning: every node the lab names exists in the cluster and is online (else one line per node,
naming the lab file's key), instead of the server's error halfway through apply."""

from __future__ import annotations

from pathlib import Path

from homelab.adapters.proxmox.api import PveApi
from homelab.errors import LabFileError, Problem
from homelab.lab.models import Lab
from homelab.lab.yamlread import BoundedLoader, Loc, compose, format_loc, locate


class NodeProblems(LabFileError):
    """Nodes the lab names that the cluster lacks or that are not online. Exit code 2."""

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


def check_nodes(api: PveApi, lab: Lab) -> None:
    """Raise NodeProblems when a node named by proxmox.node or a VM's node is missing or not online."""
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
    if found:
        raise NodeProblems(found)
