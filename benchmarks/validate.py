"""Benchmark: `homelab validate` (and `homelab --help`) against a bare `python -c "import click"`.

    python benchmarks/validate.py [--runs 3] [--repeat 5] [--lab inventories/example/lab.yml]

Beside the two commands it times a floor: click, yaml and pydantic imported and one one-field model validating
one parsed document, the least any pydantic-based `validate` costs. Each command is a fresh interpreter, as a
user runs it. Bytecode is written once first (a warm-up of each command), as an installed package has it. A run
times every command ``--repeat`` times, interleaved, and takes each one's median; its ratio is that median over
the median of `import click`. Prints each run, then the median ratio and its spread over the runs, for the wall
time and for the CPU time (user + system) of the commands: on a
busy machine the CPU time is the steadier measure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOALS = {"validate": 3.0, "--help": 1.5}
# What any pydantic-based `validate` costs at least: the CLI library, the YAML parser, pydantic, one model that
# validates one parsed document. Printed beside the goal, which it alone may already miss.
FLOOR = (
    "import click, yaml, pydantic\n"
    "class M(pydantic.BaseModel):\n    a: int = 1\n"
    "M.model_validate(yaml.load('a: 2', Loader=yaml.CSafeLoader))"
)


def commands(lab: Path) -> dict[str, list[str]]:
    """label -> argv, the baseline first."""
    return {
        "import click": [sys.executable, "-c", "import click"],
        "validate": [sys.executable, "-m", "homelab", "--lab", str(lab), "validate"],
        "--help": [sys.executable, "-m", "homelab", "--help"],
        "floor": [sys.executable, "-c", FLOOR],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--repeat", type=int, default=5, help="invocations of each command per run (default 5)")
    parser.add_argument("--lab", type=Path, default=REPO / "inventories" / "example" / "lab.yml")
    args = parser.parse_args(argv)

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode: so does this one
    env.pop("HOMELAB_LAB", None)
    cmds = commands(args.lab.resolve())
    for cmd in cmds.values():
        timed(cmd, env)
    labels = [label for label in cmds if label != "import click"]
    ratios: dict[tuple[str, str], list[float]] = {(label, kind): [] for label in labels for kind in ("wall", "CPU")}
    for run in range(1, args.runs + 1):
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in cmds}
        for _ in range(args.repeat):
            for label, cmd in cmds.items():
                times[label].append(timed(cmd, env))
        parts = []
        for i, kind in enumerate(("wall", "CPU")):
            base = statistics.median(t[i] for t in times["import click"])
            parts.append(f"{kind}: import click {base * 1000:.0f} ms")
            for label in labels:
                median = statistics.median(t[i] for t in times[label])
                ratios[label, kind].append(median / base)
                parts.append(f"{label} {median * 1000:.0f} ms = {median / base:.2f}x")
        print(f"run {run}: " + ", ".join(parts), flush=True)
    ok = True
    for (label, kind), values in ratios.items():
        median = statistics.median(values)
        goal = GOALS.get(label)
        spread = f"spread {min(values):.2f}-{max(values):.2f}x over {len(values)} runs"
        if goal is None:
            print(
                f"{label} (click + yaml + pydantic, one model) / import click ({kind}): median {median:.2f}x ({spread})"
            )
            continue
        ok = ok and (kind == "CPU" or median <= goal)
        print(
            f"homelab {label} / import click ({kind}): median {median:.2f}x "
            f"({spread}; goal <= {goal:g}x{'' if median <= goal else ', NOT MET'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
