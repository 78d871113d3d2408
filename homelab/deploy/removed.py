"""Stacks a VM no longer lists: which of the folders on it homelab may take away (pure).

Every stack folder homelab writes holds a marker file, ``.homelab-stack``, naming the lab and the stack.
The preview reads the markers under the VM's stacks folder (the homelab_files module reports them); a
folder is homelab's to remove only when its marker names this lab and the folder's own stack, and the VM
no longer lists that stack. Anything else there (a folder made by hand, one another lab made, a copy of
a stack's folder under another name) is left alone.

The stack's state (STATE_DIR, /home/<user>/data/stacks/<name>) is not in its folder and stays: a stack
added again finds its data. Only ``purge`` (`homelab stack remove --purge-data`) deletes it too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

MARKER = ".homelab-stack"


def marker_text(lab: str, stack: str) -> str:
    """What a stack's marker file says: who made the folder, and what happens to it."""
    return (
        f"# Written by `homelab deploy`: this folder is stack {stack} of lab {lab}. When the lab file no longer\n"
        "# lists the stack on this VM, the deploy runs `docker compose down` here and deletes the folder (its\n"
        "# data in STATE_DIR is kept unless --purge-data);\n"
        "# delete this file to keep the folder out of homelab's hands.\n"
        f"lab={lab}\n"
        f"stack={stack}\n"
    )


def read_marker(text: str) -> tuple[str, str] | None:
    """(lab, stack) from a marker file's text; None when it does not name both."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    lab, stack = values.get("lab"), values.get("stack")
    return (lab, stack) if lab and stack else None


@dataclass(frozen=True)
class RemoveStack:
    """Take a stack off a VM: `docker compose down` in its folder (when stacks are run), then delete the folder.

    ``keep`` (--keep-removed): leave the folder and its containers, and say so. ``purge`` (--purge-data):
    delete its state folder ``state`` as well (otherwise kept).
    """

    vm: str
    stack: str
    compose_down: bool = True
    keep: bool = False
    purge: bool = False
    state: str = ""

    def describe(self) -> str:
        if self.keep:
            return f"= {self.vm}: stack {self.stack} kept (no longer in the lab file; --keep-removed)"
        how = "compose down, folder removed" if self.compose_down else "folder removed; no compose down: --no-start"
        where = self.state or "its state folder"
        if self.purge:
            return (
                f"- {self.vm}: stack {self.stack} ({how}) AND ALL ITS DATA IS DELETED FOR GOOD: {where} "
                "(--purge-data; no undo)"
            )
        return f"- {self.vm}: stack {self.stack} ({how}); its data is kept in {where}"


def removed_stacks(
    vm: str,
    lab: str,
    listed: Collection[str],
    markers: Mapping[str, str],
    *,
    compose_down: bool = True,
    keep: bool = False,
    purge: Collection[str] = (),
    state_root: str = "",
) -> list[RemoveStack]:
    """The stacks to take off ``vm``: folders whose marker names ``lab`` and their own stack, not in ``listed``.

    ``markers`` maps each folder under the VM's stacks folder that holds a marker file to the file's text;
    ``purge``: the stacks whose state goes too; ``state_root``: the folder holding every stack's state.
    """
    found = []
    for folder in sorted(markers):
        owner = read_marker(markers[folder])
        if owner == (lab, folder) and folder not in listed:
            state = f"{state_root}/{folder}" if state_root else ""
            gone = folder in purge and not keep
            found.append(RemoveStack(vm, folder, compose_down=compose_down, keep=keep, purge=gone, state=state))
    return found
