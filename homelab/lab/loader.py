"""Load lab.yml: safe YAML, line numbers for every key, validation into models, cross-field checks.

Every problem becomes one line ``lab.yml:12: vms[1].memory: <what is wrong and what is expected>``.
A file that would cost far more to load than any lab (too big, nested too deep, too many aliases or an
alias "bomb") is refused the same way, before it costs time or memory.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from homelab.errors import InputError, LabFileError, LabNotFound, Problem
from homelab.lab.checks import Found, LabParts, check_parts, cross_check
from homelab.lab.models import DnsName, Lab, LabName, Network, Proxmox, Template, Vm

Loc = tuple[str | int, ...]
SECRET_KEYS = {"password", "token", "secret", "token_secret", "api_token", "token_value", "private_key"}

# Bounds far above any lab (a lab file is a few KB, nests five levels, uses a handful of aliases and holds a
# few hundred values) and low enough that reaching one takes well under a second and a few MB.
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_VALUES = 10_000  # scalars, lists and mappings, each alias counted as all the values of its anchor


def find_lab_path(option: str | os.PathLike[str] | None) -> Path:
    """The lab file: --lab, else $HOMELAB_LAB, else ./lab.yml."""
    if option:
        return Path(option)
    env = os.environ.get("HOMELAB_LAB")
    if env:
        return Path(env)
    return Path("lab.yml")


def load_lab(path: Path) -> Lab:
    """Read, parse and validate a lab file; raises LabFileError with every problem found."""
    name = str(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise LabNotFound(name) from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, not a lab file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    _refuse_oversize(raw, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LabFileError([Problem(name, line, "", "not UTF-8 text")]) from None
    return parse_lab(text, name)


def parse_lab(text: str, name: str = "lab.yml") -> Lab:
    """Validate lab text; ``name`` is the file name used in messages."""
    _refuse_oversize(text.encode("utf-8", "replace"), name)
    loader = _BoundedLoader(text)
    try:
        root = _compose(loader, name)
        problems = _duplicate_keys(root, name)
        if problems:
            raise LabFileError(problems)
        # Built from the nodes just composed: the text is parsed once. Construction merges `<<` keys into
        # these nodes, so the duplicate-key check (which must see the file as written) runs first.
        data = _construct(loader, root, name)
    finally:
        loader.dispose()
    try:
        lab = Lab.model_validate(data)
    except ValidationError as exc:
        # The checks still look at every part that is valid on its own: one run reports all it can.
        found = _from_pydantic(exc, root, name) + _pinned(check_parts(_valid_parts(data)), root, name)
        raise LabFileError(_sorted(found)) from None
    found = _pinned(cross_check(lab), root, name)
    if found:
        raise LabFileError(_sorted(found))
    return lab


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


def _pinned(found: list[Found], root: yaml.Node, name: str) -> list[Problem]:
    return [Problem(name, locate(root, loc), format_loc(loc), message) for loc, message in found]


def _valid_parts(data: Any) -> LabParts:
    """The parts of a lab file that validate on their own (the file as a whole does not)."""
    if not isinstance(data, dict):
        return LabParts()
    templates = _valid_items(Template.model_validate, data.get("templates"))
    stacks = data.get("stacks")
    stack_name = TypeAdapter(DnsName).validate_python
    return LabParts(
        name=_valid(TypeAdapter(LabName).validate_python, data.get("name")),
        proxmox=_valid(Proxmox.model_validate, data.get("proxmox")),
        network=_valid(Network.model_validate, data.get("network")),
        templates=templates,
        all_templates=isinstance(data.get("templates"), list) and 0 < len(templates) == len(data["templates"]),
        vms=_valid_items(Vm.model_validate, data.get("vms")),
        stacks=tuple(key for key in stacks if _valid(stack_name, key)) if isinstance(stacks, dict) else (),
    )


def _valid(validate: Callable[[Any], Any], value: Any) -> Any:
    """validate(value), or None when value is not valid."""
    try:
        return validate(value)
    except ValidationError:
        return None


def _valid_items(validate: Callable[[Any], Any], items: Any) -> tuple[tuple[int, Any], ...]:
    if not isinstance(items, list):
        return ()
    valid = ((index, _valid(validate, item)) for index, item in enumerate(items))
    return tuple((index, item) for index, item in valid if item is not None)


def _refuse_oversize(raw: bytes, name: str) -> None:
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


class _BoundedLoader(yaml.SafeLoader):
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


def _compose(loader: _BoundedLoader, name: str) -> yaml.MappingNode:
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


def _construct(loader: _BoundedLoader, root: yaml.Node, name: str) -> Any:
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


def _duplicate_keys(node: yaml.Node, name: str, loc: Loc = ()) -> list[Problem]:
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
            problems += _duplicate_keys(value, name, kloc)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, name, (*loc, index))
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


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's internal loc parts (validator names, '[key]')."""
    return tuple(p for p in loc if isinstance(p, int) or not any(c in p for c in "[](),"))


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return repr(value)


def _unwrap(annotation: Any) -> type[BaseModel] | None:
    """The model class inside list[M], dict[K, M], M | None, Annotated[M, ...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap(arg)
        if found:
            return found
    return None


def _resolve(loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that owns the last key of loc, and that key's FieldInfo."""
    model: type[BaseModel] | None = Lab
    info: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None, None
        info = model.model_fields.get(part)
        if info is None:
            # A dict key (stack name): the value model is the dict's value type.
            return model, None
        inner = _unwrap(info.annotation)
        if inner is None or part == loc[-1]:
            if part == loc[-1]:
                return model, info
            return None, info
        model = inner
    return model, info


def _owner(loc: Loc) -> type[BaseModel] | None:
    """The model class at loc (loc names a mapping)."""
    model: type[BaseModel] | None = Lab
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(part)
        if info is None:
            # dict[str, Model] keyed by user names (stacks): keep the dict's value model
            continue
        model = _unwrap(info.annotation)
    return model


def _expected(info: FieldInfo | None) -> str:
    if info is None:
        return ""
    if info.description:
        return info.description
    for meta in info.metadata:
        desc = getattr(meta, "description", None)
        if desc:
            return str(desc)
    inner = typing.get_args(info.annotation)
    for arg in inner:
        for meta in getattr(arg, "__metadata__", ()):
            desc = getattr(meta, "description", None)
            if desc:
                return str(desc)
    return ""


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    _, info = _resolve(loc)
    expected = _expected(info)
    hint = f" ({expected})" if expected else ""
    if kind == "missing":
        return f"required key is missing{hint}"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        owner = _owner(loc[:-1])
        known = list(owner.model_fields) if owner else []
        if key.lower() in SECRET_KEYS:
            return (
                "secrets never go in the lab file: set HOMELAB_PROXMOX_TOKEN (or HOMELAB_PROXMOX_PASSWORD) "
                "or put it in the secrets file ~/.config/homelab/secrets.yml (mode 0600)"
            )
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        suggestion = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
        return f"unknown key{suggestion}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, found {_found(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, found {_found(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, found {_found(value)}{hint}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, found {_found(value)}"
    if kind in ("string_type",):
        return f"must be text, found {_found(value)}{hint}"
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] == "token_id":
            # Never echo this value: people paste the whole "id=secret" line Proxmox shows.
            if "=" in str(value):
                return (
                    "looks like it includes the token's secret: keep only user@realm!name here and put the "
                    "secret in HOMELAB_PROXMOX_TOKEN or the secrets file"
                )
            return f"is not valid: expected {expected}"
        return f"{value!r} is not valid: expected {expected or ctx.get('pattern')}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{value!r} is too small: must be at least {ctx.get('ge', ctx.get('gt'))}{hint}"
    if kind in ("less_than_equal", "less_than"):
        return f"{value!r} is too large: must be at most {ctx.get('le', ctx.get('lt'))}{hint}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected')}"
    if kind in ("too_short", "too_long"):
        return (
            f"must have {'at least' if kind == 'too_short' else 'at most'} "
            f"{ctx.get('min_length', ctx.get('max_length'))} item(s){hint}"
        )
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"]).replace("Input should be", "must be").replace("Value error, ", "")
    return f"{msg}{hint}"


def _from_pydantic(exc: ValidationError, root: yaml.Node, name: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = _clean_loc(err["loc"])
        message = _message(err, loc)
        problem = Problem(name, locate(root, loc), format_loc(loc), message)
        if str(problem) not in seen:
            seen.add(str(problem))
            problems.append(problem)
    return problems
