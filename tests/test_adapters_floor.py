"""The import rules of the adapters floor.

Only homelab/adapters talks to subprocess, proxmoxer, paramiko and ansible_runner; a stage (provision,
templates, deploy, repokeys) imports no other stage, nor the CLI or the pipeline; state and the adapters
import no stage, and state imports no adapter. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import homelab

ROOT = Path(homelab.__file__).parent
STAGES = ("provision", "templates", "deploy", "repokeys")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[_module(path)] = names
    return found


IMPORTS = _imports()


def _importers(prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        module: sorted(n for n in names if n.startswith(prefixes))
        for module, names in IMPORTS.items()
        if any(n == p or n.startswith(p + ".") for n in names for p in prefixes)
    }


@pytest.mark.parametrize("library", ["subprocess", "proxmoxer", "paramiko", "ansible_runner"])
def test_only_the_adapters_import_the_outside_systems(library: str) -> None:
    outside = [m for m in _importers((library,)) if not m.startswith("homelab.adapters")]
    assert outside == [], f"{library} imported outside homelab/adapters: {outside}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage_nor_the_cli(stage: str) -> None:
    others = (*(f"homelab.{s}" for s in STAGES if s != stage), "homelab.cli", "homelab.pipeline")
    wrong = {
        module: [n for n in names if n.startswith(others)]
        for module, names in IMPORTS.items()
        if module.startswith(f"homelab.{stage}")
    }
    assert {m: n for m, n in wrong.items() if n} == {}


def test_state_and_the_adapters_know_no_stage() -> None:
    upper = (*(f"homelab.{s}" for s in STAGES), "homelab.cli", "homelab.pipeline", "homelab.ui")
    wrong = {
        module: [n for n in names if n.startswith(upper)]
        for module, names in IMPORTS.items()
        if module.startswith(("homelab.state", "homelab.adapters"))
    }
    assert {m: n for m, n in wrong.items() if n} == {}
    state_uses = [
        m for m, names in IMPORTS.items() if m.startswith("homelab.state") and any("adapters" in n for n in names)
    ]
    assert state_uses == [], "state/ sits below the adapters"
