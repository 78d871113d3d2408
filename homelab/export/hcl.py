"""A small HCL writer: blocks, attributes and comments, laid out as `terraform fmt` lays them out.

Only what the export needs: strings, numbers, booleans, lists and flat objects of those, and expressions
written as they are (``Expr("var.proxmox_endpoint")``). Strings are escaped for HCL, including its template
sequences ``${`` and ``%{``, so a value from the lab is never read as an expression.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

INDENT = "  "
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Expr:
    """An HCL expression written as it is: a reference (``var.x``) or a call."""

    text: str


Value: TypeAlias = str | int | bool | Expr | Sequence["Value"] | Mapping[str, "Value"]


@dataclass(frozen=True)
class Attribute:
    """``name = value``."""

    name: str
    value: Value


@dataclass(frozen=True)
class Comment:
    """A ``#`` line (one per line of ``text``)."""

    text: str


@dataclass(frozen=True)
class Blank:
    """An empty line between groups."""


@dataclass
class Block:
    """``type "label" ... { body }``."""

    type: str
    labels: tuple[str, ...] = ()
    body: list[Attribute | Block | Comment | Blank] = field(default_factory=list)

    def set(self, name: str, value: Value | None) -> Block:
        """Add an attribute unless ``value`` is None; returns self to chain."""
        if value is not None:
            self.body.append(Attribute(name, value))
        return self

    def add(self, *items: Attribute | Block | Comment | Blank) -> Block:
        """Add blocks, comments or blank lines; returns self to chain."""
        self.body.extend(items)
        return self


def quote(text: str) -> str:
    """``text`` as an HCL quoted string."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    out = out.replace("\t", "\\t").replace("${", "$${").replace("%{", "%%{")
    return f'"{out}"'


def _scalar(value: Value) -> str:
    if isinstance(value, Expr):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"not an HCL scalar: {value!r}")


def _value_lines(value: Value, indent: str) -> list[str]:
    """The value as lines: a list of scalars on one line when short, else one item a line."""
    if isinstance(value, (str, int, bool, Expr)):
        return [_scalar(value)]
    if isinstance(value, Mapping):
        width = max((len(key) for key in value), default=0)
        inner = [f"{indent}{INDENT}{key.ljust(width)} = {_scalar(item)}" for key, item in value.items()]
        return ["{", *inner, f"{indent}}}"]
    items = [_scalar(v) for v in value]
    one_line = "[" + ", ".join(items) + "]"
    if len(one_line) <= 80:
        return [one_line]
    return ["[", *(f"{indent}{INDENT}{item}," for item in items), f"{indent}]"]


def render_body(body: Sequence[Attribute | Block | Comment | Blank], indent: str = "") -> list[str]:
    """The lines of a body; consecutive one-line attributes have their ``=`` aligned, as `terraform fmt` does."""
    lines: list[str] = []
    group: list[tuple[str, str]] = []

    def flush() -> None:
        width = max((len(name) for name, _ in group), default=0)
        lines.extend(f"{indent}{name.ljust(width)} = {value}" for name, value in group)
        group.clear()

    for item in body:
        if isinstance(item, Attribute):
            value = _value_lines(item.value, indent)
            if len(value) == 1:
                group.append((item.name, value[0]))
                continue
            flush()
            lines.append(f"{indent}{item.name} = {value[0]}")
            lines.extend(value[1:])
            continue
        flush()
        if isinstance(item, Comment):
            lines.extend(f"{indent}# {line}".rstrip() for line in item.text.splitlines())
        elif isinstance(item, Blank):
            lines.append("")
        else:
            lines.extend(render_block(item, indent))
    flush()
    return lines


def render_block(block: Block, indent: str = "") -> list[str]:
    """A block's lines (an empty block stays on one line, as `terraform fmt` leaves it)."""
    head = " ".join([block.type, *(quote(label) for label in block.labels)])
    if not block.body:
        return [f"{indent}{head} {{}}"]
    return [f"{indent}{head} {{", *render_body(block.body, indent + INDENT), f"{indent}}}"]


def render_file(items: Sequence[Block | Comment], header: str | None = None) -> str:
    """A whole file: top-level blocks separated by one blank line, ending in a newline."""
    chunks: list[str] = []
    if header:
        chunks.append("\n".join(f"# {line}".rstrip() for line in header.splitlines()))
    for item in items:
        chunks.append("\n".join(render_body([item])))
    return "\n\n".join(chunks) + "\n"


def identifier(name: str) -> str:
    """A Terraform identifier for a lab name: VM names are DNS labels, which may start with a digit."""
    return name if IDENTIFIER.match(name) else f"vm_{name}"
