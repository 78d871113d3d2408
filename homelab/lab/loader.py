"""Load lab.yml: safe YAML, line numbers for every key, validation into models, cross-field checks.

Every problem becomes one line ``lab.yml:12: vms[1].memory: <what is wrong and what is expected>``.
A file that would cost far more to load than any lab (too big, nested too deep, too many aliases or an
alias "bomb") is refused the same way, before it costs time or memory.
"""

from __future__ import annotations

import dataclasses
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
from homelab.lab.yamlread import (
    MAX_BYTES,
    BoundedLoader,
    Loc,
    compose,
    construct,
    duplicate_keys,
    format_loc,
    locate,
    refuse_oversize,
)

SECRET_KEYS = {"password", "token", "secret", "token_secret", "api_token", "token_value", "private_key"}


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
    refuse_oversize(raw, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LabFileError([Problem(name, line, "", "not UTF-8 text")]) from None
    return parse_lab(text, name, path.absolute().parent)


def parse_lab(text: str, name: str = "lab.yml", folder: Path | None = None) -> Lab:
    """Validate lab text; ``name`` is the file name used in messages, ``folder`` the lab's folder (where its
    own stacks are: <folder>/stacks/<name>/)."""
    refuse_oversize(text.encode("utf-8", "replace"), name)
    loader = BoundedLoader(text)
    try:
        root = compose(loader, name)
        problems = duplicate_keys(root, name)
        if problems:
            raise LabFileError(problems)
        # Built from the nodes just composed: the text is parsed once. Construction merges `<<` keys into
        # these nodes, so the duplicate-key check (which must see the file as written) runs first.
        data = construct(loader, root, name)
    finally:
        loader.dispose()
    try:
        lab = Lab.model_validate(data)
    except ValidationError as exc:
        # The checks still look at every part that is valid on its own: one run reports all it can.
        parts = dataclasses.replace(_valid_parts(data), folder=folder)
        found = _from_pydantic(exc, root, name) + _pinned(check_parts(parts), root, name)
        raise LabFileError(_sorted(found)) from None
    lab._folder = folder
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
        import difflib  # only for an unknown key

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
