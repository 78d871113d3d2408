"""Reading a lab file's YAML: safe, bounded, with the node tree kept for line numbers.

A file that would cost far more to load than any lab (too big, nested too deep, too many aliases or an
alias "bomb") is refused with one line at the first excess, before it costs time or memory. The data is
constructed from the same nodes, so the text is parsed once.
"""

from __future__ import annotations

import typing
from typing import Any

import yaml

from homelab.errors import LabFileError, Problem

Loc = tuple[str | int, ...]

# Bounds far above any lab (a lab file is a few KB, nests five levels, uses a handful of aliases and holds a
# few hundred values) and low enough that reaching one takes well under a second and a few MB.
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_VALUES = 10_000  # scalars, lists and mappings, each alias counted as all the values of its anchor


def refuse_oversize(raw: bytes, name: str) -> None:
    if len(raw) > MAX_BYTES:
        line = raw[:MAX_BYTES].count(b"\n") + 1
        raise LabFileError(
            [Problem(name, line, "", f"the file goes on past {MAX_BYTES // 1024**2} MiB here: a lab file is a few KB")]
        )


class _Refused(Exception):
    """The YAML is well-formed but far beyond any lab file; where, and why."""

    def __init__(self, line: int | None, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.loc = loc
        self.message = message


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep: a lab file needs fewer than 10"


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops, at the first excess, at nesting deeper than MAX_DEPTH, more than
    MAX_ALIASES aliases, or a document of more than MAX_VALUES values.

    An alias shares its anchor's node, so composing a "billion laughs" is cheap: what walks the result
    (construction, validation, the duplicate-key check) pays for every copy. So the values are counted
    while composing, each alias as everything its anchor expands to, and the count stops the file there.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.values = 0
        self.aliases = 0
        self.depth = 0
        self.loc: list[str | int] = []
        self.expands_to: dict[int, int] = {}  # id(anchored node) -> values it stands for, once complete

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        # index: a list item's position, a mapping value's key node, None for a key (reported at its mapping)
        step = index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        if step is not None:
            self.loc.append(step)
        try:
            if isinstance(event, yaml.AliasEvent):
                self._alias(event)
                return super().compose_node(parent, index)
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self._refuse(event, _too_deep())
            before = self.values
            self._count(event, 1)
            node = super().compose_node(parent, index)
            self.depth -= 1
            if event.anchor is not None:
                self.expands_to[id(node)] = self.values - before
            return node
        finally:
            if step is not None:
                self.loc.pop()

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Also refused while scanning: the scanner reads up to 1024 characters past each "[" or "{" (it may
        # start a key), so a long run of them is slow before the composer sees the first.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(self.get_mark().line + 1, tuple(self.loc), _too_deep())
        super().fetch_flow_collection_start(TokenClass)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:  # PyYAML lets datetime's and int's errors through (2024-13-45, !!int x)
            kind = node.tag.rsplit(":", 1)[-1]
            value = repr(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
            problem = f"{value} is not a valid {kind}: {exc}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    def _alias(self, event: yaml.AliasEvent) -> None:
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            self._refuse(event, f"more than {MAX_ALIASES} aliases (*name): a lab file needs a few")
        target = self.anchors.get(event.anchor) if event.anchor is not None else None
        if target is None:
            return  # an undefined alias: PyYAML's own error says so
        size = self.expands_to.get(id(target))
        if size is None:
            self._refuse(event, f"alias *{event.anchor} is inside its own anchor &{event.anchor}: a loop")
        else:
            self._count(event, size)

    def _count(self, event: yaml.Event, values: int) -> None:
        self.values += values
        if self.values > MAX_VALUES:
            how = "aliases expand the file to" if self.aliases else "the file has"
            self._refuse(event, f"{how} more than {MAX_VALUES} values: a lab file has a few hundred")

    def _refuse(self, event: yaml.Event, message: str) -> typing.NoReturn:
        mark = event.start_mark
        raise _Refused(mark.line + 1 if mark else None, tuple(self.loc), message)


def compose(loader: BoundedLoader, name: str) -> yaml.MappingNode:
    try:
        root = loader.get_single_node()
    except _Refused as exc:
        # A path as deep as the nesting it reports would fill the screen; its start says where.
        path = format_loc(exc.loc[:8]) + ("..." if len(exc.loc) > 8 else "")
        raise LabFileError([Problem(name, exc.line, path, exc.message)]) from None
    except yaml.YAMLError as exc:
        raise _not_yaml(exc, name) from None
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == "" and root.tag.endswith("null")):
        raise LabFileError(
            [Problem(name, 1, "", "the file is empty: a lab needs name, proxmox, network and templates")]
        )
    if not isinstance(root, yaml.MappingNode):
        raise LabFileError(
            [
                Problem(
                    name,
                    root.start_mark.line + 1,
                    "",
                    f"the file must be a mapping of keys (name, proxmox, network, ...), found {_node_kind(root)}",
                )
            ]
        )
    return root


def construct(loader: BoundedLoader, root: yaml.Node, name: str) -> Any:
    try:
        return loader.construct_document(root)
    except yaml.YAMLError as exc:  # an unknown or unsafe tag (!foo, !!python/...), a date that does not exist
        raise _not_yaml(exc, name) from None


def _not_yaml(exc: yaml.YAMLError, name: str) -> LabFileError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "cannot be parsed"
        return LabFileError([Problem(name, line, "", f"not valid YAML: {what}")])
    return LabFileError([Problem(name, None, "", f"not valid YAML: {exc}")])


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return f"the text {node.value!r}"


def duplicate_keys(node: yaml.Node, name: str, loc: Loc = ()) -> list[Problem]:
    """PyYAML keeps the last of two equal keys silently; a lab file with one is a mistake."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            kloc = (*loc, key.value)
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    problems.append(
                        Problem(name, line, format_loc(kloc), f"duplicate key (first at line {seen[key.value]})")
                    )
                else:
                    seen[key.value] = line
            problems += duplicate_keys(value, name, kloc)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += duplicate_keys(item, name, (*loc, index))
    return problems


def locate(root: yaml.Node, loc: Loc) -> int:
    """The line of the deepest node along loc (a missing key points at its parent)."""
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            # The last match is the value in effect: after construction a mapping with `<<` holds the merged
            # keys first, then its own (duplicates written in the file are refused before this is used).
            for key, value in reversed(node.value):
                if key.value == str(part):
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_loc(loc: Loc) -> str:
    """('vms', 1, 'memory') -> vms[1].memory"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
