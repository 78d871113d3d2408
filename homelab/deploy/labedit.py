"""`homelab stack add | remove`: a stack onto or off a VM in lab.yml, keeping the file's comments, order and
indentation.

The file is edited through ruamel.yaml's round trip. The edited text is validated as a whole lab before
anything is written, and written atomically: an edit that would make the file invalid writes nothing.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homelab.errors import InputError, LabNotFound
from homelab.lab.loader import parse_lab
from homelab.lab.models import Lab
from homelab.stacks import StackInfo, catalogue, is_secret_name
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
    missing: tuple[str, ...] = ()  # stacks this one needs that the VM does not run (none: they were added)
    added_requirements: tuple[str, ...] = ()  # stacks added with it because it needs them
    settings: tuple[str, ...] = ()  # stacks.<name>.env keys set


@dataclass(frozen=True)
class StackRemoved:
    """The outcome of `stack remove`: the lab as now written."""

    lab: Lab
    vm: str
    stack: str
    needed_by: tuple[str, ...] = ()  # stacks still on the VM that need the removed one


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


def _unknown(stack: str, known: Mapping[str, object]) -> InputError:
    close = difflib.get_close_matches(stack, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
    return InputError(f"unknown stack {stack!r}{hint}")


def _vm_entry(data: Any, vm_name: str | None, name: str, what: str) -> tuple[str, Any]:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    vms = data.get("vms") if isinstance(data, CommentedMap) else None
    vms = vms if isinstance(vms, CommentedSeq) else CommentedSeq()
    names = [str(vm.get("name")) for vm in vms if isinstance(vm, CommentedMap)]
    if not names:
        raise InputError(f"{name}: the lab has no VMs to {what}")
    if vm_name is None:
        if len(names) > 1:
            raise InputError(f"which VM? pass --vm, one of: {', '.join(names)}")
        vm_name = names[0]
    if vm_name not in names:
        close = difflib.get_close_matches(vm_name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"no VM named {vm_name!r} in {name} (VMs: {', '.join(names)}){hint}")
    return vm_name, vms[names.index(vm_name)]


def _append_key(entry: Any, key: str, value: Any) -> None:
    """Add ``key`` at the end of a mapping, before the comment lines that followed its last key (they belong
    to what comes next in the file); an end-of-line comment stays on its line."""
    keys = list(entry.keys())
    entry[key] = value
    if not keys or keys[-1] not in entry.ca.items:
        return
    slots = entry.ca.items[keys[-1]]
    token = slots[2] if len(slots) > 2 else None
    if token is None:
        return
    from ruamel.yaml.tokens import CommentToken

    text: str = token.value
    eol, newline, rest = ("", "", text) if text.startswith("\n") else text.partition("\n")
    if not rest.strip():
        return
    slots[2] = CommentToken(eol + newline, token.start_mark, None) if eol else None
    entry.ca.items[key] = [None, None, CommentToken(("\n" if eol else "") + rest, token.start_mark, None), None]


def _with_requirements(stack: str, known: Mapping[str, StackInfo], running: list[str]) -> list[str]:
    """``stack`` and the stacks it needs (recursively) that are not in ``running``, requirements first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or name in running or name not in known:
            return
        for needed in known[name].requires:
            visit(needed)
        order.append(name)

    visit(stack)
    return order


def _set_env(data: Any, stack: str, values: Mapping[str, str]) -> None:
    from ruamel.yaml.comments import CommentedMap

    stacks = data.get("stacks")
    if not isinstance(stacks, CommentedMap):
        stacks = data["stacks"] = CommentedMap()
    entry = stacks.get(stack)
    if not isinstance(entry, CommentedMap):
        entry = stacks[stack] = CommentedMap()
    env = entry.get("env")
    if not isinstance(env, CommentedMap):
        env = entry["env"] = CommentedMap()
    for key, value in values.items():
        env[key] = value


def add_stack_text(
    text: str,
    stack: str,
    vm_name: str | None,
    name: str = "lab.yml",
    *,
    folder: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> tuple[str, StackAdded]:
    """The lab text with ``stack`` (and the stacks it needs) added to a VM and ``settings`` set in
    stacks.<stack>.env, validated; raises InputError/LabFileError when it cannot be."""
    from ruamel.yaml.comments import CommentedSeq

    known = catalogue(folder)
    if stack not in known:
        raise _unknown(stack, known)
    settings = dict(settings or {})
    for key in settings:
        if is_secret_name(stack, key, known):
            raise InputError(f"--set {key}: a secret does not belong in the lab file (`homelab secrets path`)")
    lab = parse_lab(text, name, folder)  # the file must be valid before we touch it
    current = lab.stacks.get(stack)
    have = {**(current.env if current else {}), **settings}
    missing_settings = [s for s in known[stack].required_settings if not have.get(s.name)]
    if missing_settings:
        first = missing_settings[0]
        raise InputError(
            f"stack {stack} needs the setting {first.name} ({first.description or 'no default'}): "
            f"pass --set {first.name}=..."
        )
    yaml, data = _load_in_its_style(text)
    vm_name, entry = _vm_entry(data, vm_name, name, f"add {stack} to")
    vm = next(v for v in lab.vms if v.name == vm_name)
    changed_settings = {k: v for k, v in settings.items() if (current.env if current else {}).get(k) != v}
    if stack in vm.stacks and not changed_settings:
        return text, StackAdded(lab, vm_name, stack, changed=False)
    adding = _with_requirements(stack, known, list(vm.stacks))
    stacks = entry.get("stacks")
    if adding and isinstance(stacks, CommentedSeq):
        stacks.extend(adding)
    elif adding:
        added = CommentedSeq(adding)
        added.fa.set_flow_style()
        _append_key(entry, "stacks", added)
    if changed_settings:
        _set_env(data, stack, changed_settings)
    new_text = _dump(yaml, data)
    new_lab = parse_lab(new_text, name, folder)
    now = next(v for v in new_lab.vms if v.name == vm_name)
    missing = tuple(req for req in known[stack].requires if req not in now.stacks)
    requirements = tuple(a for a in adding if a != stack)
    return new_text, StackAdded(new_lab, vm_name, stack, True, missing, requirements, tuple(sorted(changed_settings)))


def remove_stack_text(
    text: str, stack: str, vm_name: str, name: str = "lab.yml", *, folder: Path | None = None
) -> tuple[str, StackRemoved]:
    """The lab text with ``stack`` taken off VM ``vm_name``, validated; InputError when the VM does not run it."""
    from ruamel.yaml.comments import CommentedSeq

    lab = parse_lab(text, name, folder)
    yaml, data = _load_in_its_style(text)
    vm_name, entry = _vm_entry(data, vm_name, name, f"remove {stack} from")
    vm = next(v for v in lab.vms if v.name == vm_name)
    stacks = entry.get("stacks")
    if stack not in vm.stacks or not isinstance(stacks, CommentedSeq):
        close = difflib.get_close_matches(stack, vm.stacks, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (it runs: {', '.join(vm.stacks) or 'no stacks'})"
        raise InputError(f"{vm_name} does not run stack {stack!r}{hint}")
    index = [str(item) for item in stacks].index(stack)
    del stacks[index]
    new_text = _dump(yaml, data)
    new_lab = parse_lab(new_text, name, folder)
    known = catalogue(folder)
    needed_by = tuple(s for s in vm.stacks if s != stack and s in known and stack in known[s].requires)
    return new_text, StackRemoved(new_lab, vm_name, stack, needed_by)


def _read(path: Path) -> tuple[str, int]:
    try:
        return path.read_text(encoding="utf-8"), path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise LabNotFound(str(path)) from None


def add_stack(
    path: Path, stack: str, vm_name: str | None = None, settings: Mapping[str, str] | None = None
) -> StackAdded:
    """Add ``stack`` to a VM in the lab file at ``path``; nothing is written unless the result is valid."""
    text, mode = _read(path)
    new_text, result = add_stack_text(text, stack, vm_name, str(path), folder=path.absolute().parent, settings=settings)
    if result.changed:
        write_atomic(path, new_text, mode)
    return result


def removal_text(path: Path, stack: str, vm_name: str) -> tuple[str, str, StackRemoved]:
    """(old text, new text, outcome) of taking ``stack`` off ``vm_name`` in the lab file; writes nothing."""
    text, _ = _read(path)
    new_text, result = remove_stack_text(text, stack, vm_name, str(path), folder=path.absolute().parent)
    return text, new_text, result


def write_lab_text(path: Path, text: str) -> None:
    """Write the lab file atomically, keeping its mode (an interrupted write leaves the old file)."""
    _, mode = _read(path)
    write_atomic(path, text, mode)
