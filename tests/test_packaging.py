"""A non-editable install (the wheel) carries stacks/, templates/ and the example lab, and finds them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def test_wheel_install_finds_its_data(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        pytest.skip("hatchling is not installed for a no-isolation build")
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("homelab_pve-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import homelab, homelab.paths as p, homelab.stacks as s;"
        "print(homelab.__file__); print(p.data_dir('stacks')); print(p.data_dir('templates'));"
        "print(sorted(s.catalogue()))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target))
    assert lines[1] == str(target / "homelab" / "_data" / "stacks")
    assert lines[2] == str(target / "homelab" / "_data" / "templates")
    assert lines[3] == str(sorted(meta.parent.name for meta in (REPO / "stacks").glob("*/stack.yml")))
    shipped = target / "homelab" / "_data" / "stacks" / "monitoring"  # files a stack mounts beside its compose
    assert (shipped / "prometheus.yml").is_file()
    assert (shipped / "grafana" / "provisioning" / "datasources" / "prometheus.yml").is_file()
    assert "traefik" in lines[3] and "vaultwarden" in lines[3]  # every stack of the source tree, not only some
    example = target / "homelab" / "_data" / "inventories" / "example" / "lab.yml"
    check = subprocess.run(
        [sys.executable, "-m", "homelab", "--lab", str(example), "validate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert check.returncode == 0, check.stderr
