"""`homelab stack add`: add a stack to a VM in lab.yml, keeping the file's comments, order and indentation.

The file is edited through ruamel.yaml's round trip. The edited text is validated as a whole lab before
anything is written, and written atomically: an edit that would make the file invalid writes nothing.
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homelab.errors import InputError, LabNotFound
from homelab.lab.loader import parse_lab
from homelab.lab.models import Lab
from homelab.stacks import catalogue
from homelab.state.files import write_atomic

# (mapping indent, sequence indent, dash offset): the styles of `homelab init` (PyYAML) and the example.
_STYLES = ((2, 2, 0), (2, 4, 2), (4, 4, 2), (4, 6, 4), (4, 4, 0))


@dataclass(frozen=True)
class StackAdded:
    """The outcome of `stack add`: the lab as now written (or unchanged), and what it means."""

    lab: Lab
    vm: str
    stack: str
    changed: bool
    missing: tuple[str, ...] = ()  # stacks this one needs that the VM does not run


def _yaml(style: tuple[int, int, int]) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold long lines (ssh keys, URLs)
    mapping, sequence, offset = style
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _dump(yaml: Any, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _load_in_its_style(text: str) -> tuple[Any, Any]:
    """The document and a dumper set to the indentation that reproduces the file best (exactly, usually)."""
    from ruamel.yaml.error import YAMLError

    best: tuple[int, Any, Any] | None = None
    for style in _STYLES:
        yaml = _yaml(style)
        try:
            data = yaml.load(text)
        except YAMLError as exc:
            raise InputError(f"the lab file is not valid YAML: {exc}") from None
        again = _dump(yaml, data)
        if again == text:
            return yaml, data
        distance = sum(1 for line in difflib.ndiff(text.splitlines(), again.splitlines()) if line[:1] in "+-")
        if best is None or distance < best[0]:
            best = (distance, yaml, data)
    assert best is not None
    return best[1], best[2]


def add_stack_text(text: str, stack: str, vm_name: str | None, name: str = "lab.yml") -> tuple[str, StackAdded]:
    """The lab text with ``stack`` added to a VM, validated; raises InputError/LabFileError when it cannot be."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    known = catalogue()
    if stack not in known:
        close = difflib.get_close_matches(stack, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
        raise InputError(f"unknown stack {stack!r}{hint}")
    lab = parse_lab(text, name)  # the file must be valid before we touch it
    yaml, data = _load_in_its_style(text)
    vms = data.get("vms") if isinstance(data, CommentedMap) else None
    vms = vms if isinstance(vms, CommentedSeq) else CommentedSeq()
    names = [str(vm.get("name")) for vm in vms if isinstance(vm, CommentedMap)]
    if not names:
        raise InputError(f"{name}: the lab has no VMs to add {stack} to")
    if vm_name is None:
        if len(names) > 1:
            raise InputError(f"which VM? pass --vm, one of: {', '.join(names)}")
        vm_name = names[0]
    if vm_name not in names:
        raise InputError(f"no VM named {vm_name!r} in {name} (VMs: {', '.join(names)})")
    entry = vms[names.index(vm_name)]
    current = entry.get("stacks")
    vm = next(v for v in lab.vms if v.name == vm_name)
    if stack in vm.stacks:
        return text, StackAdded(lab, vm_name, stack, changed=False)
    if isinstance(current, CommentedSeq):
        current.append(stack)
    else:
        added = CommentedSeq([stack])
        added.fa.set_flow_style()
        entry["stacks"] = added
    new_text = _dump(yaml, data)
    new_lab = parse_lab(new_text, name)
    now = next(v for v in new_lab.vms if v.name == vm_name)
    missing = tuple(req for req in known[stack].requires if req not in now.stacks)
    return new_text, StackAdded(new_lab, vm_name, stack, changed=True, missing=missing)


def add_stack(path: Path, stack: str, vm_name: str | None = None) -> StackAdded:
    """Add ``stack`` to a VM in the lab file at ``path``; nothing is written unless the result is valid."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise LabNotFound(str(path)) from None
    new_text, result = add_stack_text(text, stack, vm_name, str(path))
    if result.changed:
        write_atomic(path, new_text, mode)
    return result
