"""The layout's rules, checked on the source.

    lab, errors, paths, state                  the model and what homelab keeps on this machine
    adapters/                                  one module per outside system; knows no stage
    provision, templates, deploy, repokeys,    the stages: lab + adapters + state, never each other
    export, preflight
    pipeline                                   where the stages meet
    cli, ui, wizard, demo                      the edges

Only homelab/adapters talks to subprocess, proxmoxer, paramiko and ansible_runner; a stage imports no other
stage, nor the CLI or the pipeline; state and the adapters import no stage, and state imports no adapter.
Lazy imports inside functions count too. No cycle among the imports run at load time; no module grows past
MAX_LINES.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import homelab

ROOT = Path(homelab.__file__).parent
STAGES = ("provision", "templates", "deploy", "repokeys", "export", "preflight")
MAX_LINES = 420


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(load_time_only: bool = False) -> dict[str, set[str]]:
    """Each module's imports; ``load_time_only``: only those at module level (not in functions, not under
    ``if TYPE_CHECKING:``), which are the ones that can make a cycle."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        names: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body if load_time_only else ast.walk(tree):
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


def test_the_rules_see_every_package_they_name() -> None:
    packages = {module.split(".")[1] for module in IMPORTS if module.count(".")}
    assert {*STAGES, "adapters", "state", "lab"} <= packages


def test_no_import_cycle_at_load_time() -> None:
    graph = {m: {n for n in names if n in IMPORTS and n != m} for m, names in _imports(load_time_only=True).items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if module.startswith(dep + "."):  # a package's own __init__ runs first anyway
                continue
            if dep in path:
                pytest.fail(f"import cycle: {' -> '.join([*path[path.index(dep) :], dep])}")
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])


def test_modules_stay_small() -> None:
    big = {
        _module(p): n
        for p in sorted(ROOT.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert big == {}, f"modules over {MAX_LINES} lines: split them along a seam"
