"""Small value types of the lab file, each with one clear error message."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

from pydantic import BaseModel, BeforeValidator, PlainSerializer, WithJsonSchema

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])$")
_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: Any) -> int:
    """A disk size as bytes: ``32G``, ``512M``, ``1T`` or a bare integer of GiB."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 32G (a number followed by K, M, G or T)")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be a positive size like 32G")
        return value * _UNITS["G"]
    if isinstance(value, str):
        match = _SIZE.match(value.strip())
        if match:
            size = int(float(match.group(1)) * _UNITS[match.group(2)])
            if size <= 0:
                raise ValueError("must be a positive size like 32G")
            return size
        raise ValueError(f"{value!r} is not a size: write a number followed by K, M, G or T with no space, e.g. 32G")
    raise ValueError("must be a size like 32G (a number followed by K, M, G or T)")


def drive_size(drive: str) -> int | None:
    """The ``size=`` of a PVE drive string (``local-lvm:vm-100-disk-0,size=32G``) in bytes, or None."""
    match = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)(?:,|$)", drive)
    if not match:
        return None
    return int(float(match.group(1)) * (_UNITS[match.group(2)] if match.group(2) else 1))


def format_size(size: int) -> str:
    """Bytes as the shortest exact PVE size string (``32G``, ``1536M``)."""
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def _size_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?[KMGT]$"},
                {"type": "integer", "minimum": 1, "description": "GiB"},
            ],
            "description": description,
        }
    )


SIZE = "A size such as 32G, 512M or 1T (or an integer number of GiB)."
Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str), _size_schema(SIZE)]
# The same type for optional fields (``OptionalSize | None``). Its schema must differ from Size's: pydantic 2.10
# reuses the JSON schema of equal annotated types and writes a field's default into it, so a Size | None field
# would show the default of some other Size field.
OptionalSize = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str),
    _size_schema(SIZE + " Leave it out for none."),
]


def parse_ip(value: Any) -> str:
    """``dhcp`` or an IPv4 address, normalised."""
    if value == "dhcp":
        return "dhcp"
    if isinstance(value, str):
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            pass
        if "/" in value:
            raise ValueError(f"{value!r}: write the address without a prefix (the prefix comes from network.subnet)")
    raise ValueError(f"{value!r} is not an IPv4 address or 'dhcp'")


VmAddress = Annotated[
    str,
    BeforeValidator(parse_ip),
    WithJsonSchema(
        {
            "anyOf": [{"const": "dhcp"}, {"type": "string", "format": "ipv4"}],
            "description": "A static IPv4 address inside network.subnet, or dhcp.",
        }
    ),
]


def parse_address(value: Any) -> str:
    """A plain IPv4 address."""
    if isinstance(value, str):
        try:
            return str(ipaddress.IPv4Address(value.strip()))
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not an IPv4 address")


IPv4 = Annotated[str, BeforeValidator(parse_address), WithJsonSchema({"type": "string", "format": "ipv4"})]


def parse_subnet(value: Any) -> str:
    """An IPv4 network in CIDR form such as 192.168.1.0/24."""
    if isinstance(value, str) and "/" in value:
        try:
            return str(ipaddress.IPv4Network(value.strip(), strict=True))
        except ValueError as exc:
            if "host bits set" in str(exc):
                net = ipaddress.IPv4Network(value.strip(), strict=False)
                raise ValueError(f"{value!r} has host bits set; did you mean {net}?") from None
    raise ValueError(f"{value!r} is not a subnet in CIDR form such as 192.168.1.0/24")


Subnet = Annotated[
    str,
    BeforeValidator(parse_subnet),
    WithJsonSchema({"type": "string", "pattern": r"^\d+\.\d+\.\d+\.\d+/\d+$"}),
]


M = TypeVar("M", bound=BaseModel)


def defaults(model: type[M]) -> Callable[[], M]:
    """The default_factory of a section the lab file may leave out: ``model`` with every key at its default, made
    without validation (pydantic never validates defaults), so leaving a section out builds no validator for it."""
    return lambda: cast(M, model.model_construct())


# The default_factory of an empty list or mapping: Python functions, not ``list`` and ``dict``. pydantic reads the
# signature of every factory, and a builtin's is parsed from text with the tokenizer, whose patterns then compile
# (a few ms of every `homelab validate`).
def empty_list() -> list[Any]:
    return []


def empty_dict() -> dict[Any, Any]:
    return {}
