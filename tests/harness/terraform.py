"""Checks on Terraform files without the provider: `terraform fmt -check`, HCL2 parsing (python-hcl2), and every
resource, block and attribute against a snapshot of the pinned provider's schema (tests/data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

SCHEMA = Path(__file__).resolve().parent.parent / "data" / "bpg_proxmox_schema.json"
META = {"lifecycle", "depends_on", "count", "for_each", "provider"}  # Terraform's own, not the provider's


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


def terraform() -> str:
    """The terraform binary, or a skip saying it is missing."""
    found = shutil.which("terraform")
    if found is None:
        pytest.skip("the terraform binary is not on PATH")
    return found


def terraform_env(**extra: str) -> dict[str, str]:
    """The environment terraform runs with: no checkpoint call home, a CLI config that need not exist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PROXMOX_VE_"))}
    env.update(CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE=os.devnull, **extra)
    return env


def fmt_check(directory: Path) -> subprocess.CompletedProcess[str]:
    """`terraform fmt -check -diff -recursive` on a folder (offline: fmt loads no provider)."""
    return subprocess.run(
        [terraform(), "fmt", "-check", "-diff", "-recursive", str(directory)],
        capture_output=True,
        text=True,
        env=terraform_env(),
        timeout=60,
    )


def parse(directory: Path) -> dict[str, dict[str, Any]]:
    """Each .tf file of a folder, parsed as HCL2."""
    hcl2 = pytest.importorskip("hcl2", reason="HCL parsing needs python-hcl2 (the unit extra)")
    return {path.name: hcl2.loads(path.read_text()) for path in sorted(directory.glob("*.tf"))}


def blocks(parsed: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The bodies of every top-level block of a kind across parsed files (``resource``, ``import``, ...)."""
    return [body for tree in parsed.values() for body in tree.get(kind, [])]


def resources(parsed: dict[str, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(type, name) -> body of every resource block."""
    found = {}
    for entry in blocks(parsed, "resource"):
        for rtype, named in entry.items():
            for name, body in named.items():
                found[(unquote(rtype), unquote(name))] = body
    return found


def unquote(value: Any) -> Any:
    """A parsed HCL string literal as its text (python-hcl2 keeps the quotes); other values as they are."""
    if isinstance(value, str) and value.startswith('"') and value.endswith('"'):
        return json.loads(value.replace("$${", "${").replace("%%{", "%{"))
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def hcl_type(value: Any) -> str | None:
    """The type of a literal as the schema names it; None for an expression (not checkable without the provider)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string" if value.startswith('"') else None
    if isinstance(value, list):
        inner = {hcl_type(v) for v in value}
        if not value:
            return "list(*)"
        return f"list({inner.pop()})" if len(inner) == 1 and None not in inner else None
    return None


def is_block(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__") for v in value)


def body_problems(body: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    """What in a body the schema does not know, or knows with another type; required attributes missing."""
    problems = []
    for key, value in body.items():
        if key.startswith("__") or key in META:  # python-hcl2 notes (__is_block__, __comments__)
            continue
        if is_block(value):
            if key not in schema["blocks"]:
                problems.append(f"{where}: block {key!r} is not in the provider's schema")
                continue
            for n, inner in enumerate(value):
                problems += body_problems(inner, schema["blocks"][key], f"{where}.{key}[{n}]")
            continue
        want = schema["attributes"].get(key)
        if want is None:
            problems.append(f"{where}: attribute {key!r} is not in the provider's schema")
        elif key in schema.get("computed", []):
            problems.append(f"{where}: attribute {key!r} is computed (read-only)")
        else:
            have = hcl_type(value)
            if have is not None and have != want and not (have == "list(*)" and want.startswith("list(")):
                problems.append(f"{where}: attribute {key!r} is {have}, the provider wants {want}")
    problems += [
        f"{where}: required attribute {key!r} missing" for key in schema.get("required", []) if key not in body
    ]
    return problems


def schema_problems(parsed: dict[str, dict[str, Any]], schema: dict[str, Any]) -> list[str]:
    """Every resource, block and attribute written, checked against the snapshot; references too."""
    problems = []
    known = schema["resources"]
    for (rtype, name), body in resources(parsed).items():
        if rtype not in known:
            problems.append(f"resource type {rtype!r} is not in the provider's schema")
            continue
        problems += body_problems(body, known[rtype], f"{rtype}.{name}")
        for lifecycle in body.get("lifecycle", []):
            for ref in lifecycle.get("ignore_changes", []):
                if ref not in known[rtype]["attributes"] and ref not in known[rtype]["blocks"]:
                    problems.append(f"{rtype}.{name}: ignore_changes names {ref!r}, not in the provider's schema")
    for entry in blocks(parsed, "provider"):
        for pname, body in entry.items():
            if unquote(pname) == "proxmox":
                problems += body_problems(body, schema["provider_config"], "provider.proxmox")
    text = json.dumps(parsed)
    for rtype, attribute in re.findall(r"\b(proxmox_\w+)\.\w+\.(\w+)", text):
        spec = known.get(rtype)
        if spec is None or (attribute not in spec["attributes"] and attribute not in spec["blocks"]):
            problems.append(f"reference to {rtype}.<name>.{attribute}: not in the provider's schema")
    return problems


def plugin_dir(source: str, version: str) -> Path | None:
    """A provider plugin folder (``<host>/<namespace>/<type>/<version>/<os_arch>/``) holding ``source`` at
    ``version``: $HOMELAB_TF_PLUGIN_DIR, $TF_PLUGIN_CACHE_DIR, or the usual folders under ~/.terraform.d."""
    namespace, kind = source.split("/")
    home = Path.home() / ".terraform.d"
    roots = [os.environ.get("HOMELAB_TF_PLUGIN_DIR"), os.environ.get("TF_PLUGIN_CACHE_DIR")]
    for root in [*(Path(r) for r in roots if r), home / "plugins", home / "plugin-cache"]:
        if any(root.glob(f"*/{namespace}/{kind}/{version}/*/terraform-provider-{kind}*")):
            return root
    return None
