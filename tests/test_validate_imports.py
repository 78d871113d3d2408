"""`homelab validate` loads what validating needs and nothing else: no Proxmox client, SSH, Ansible, rich output
or the stages (they cost start-up time and validate never uses them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from homelab.lab.loader import parse_lab
from homelab.lab.models import Access, Backup, Docker, Https, Settings, Timeouts

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example" / "lab.yml"
NOT_NEEDED = (
    "requests",
    "urllib3",
    "proxmoxer",
    "paramiko",
    "ansible_runner",
    "ruamel",
    "rich",
    "jinja2",
    "difflib",
    "importlib.metadata",  # pydantic's search for plugins (the command line loads none)
    "homelab.adapters",
    "homelab.provision",
    "homelab.templates",
    "homelab.deploy",
    "homelab.repokeys",
    "homelab.export",
    "homelab.state",
    "homelab.ui",
    "homelab.pipeline",
)


def loaded_by(*argv: str) -> tuple[str, list[str]]:
    code = (
        "import json, sys; from homelab.cli import main\n"
        f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
        "print('MODULES', json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    out, _, modules = proc.stdout.rpartition("MODULES ")
    return out, json.loads(modules)


def test_validate_imports_only_what_validation_needs() -> None:
    out, modules = loaded_by("--lab", str(EXAMPLE), "validate")
    assert "valid: lab 'example'" in out
    assert "pydantic" in modules and "homelab.lab.loader" in modules  # it did validate
    heavy = [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_NEEDED)]
    assert heavy == []


def test_validate_of_a_bad_file_still_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "lab.yml"
    bad.write_text(EXAMPLE.read_text().replace("concurrency: 4", "concurency: 4"))
    proc = subprocess.run(
        [sys.executable, "-m", "homelab", "--lab", str(bad), "validate"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 2
    assert "settings.concurency" in proc.stderr and "concurrency" in proc.stderr  # the close match (difflib)


def test_pydantic_finds_no_plugins_under_the_command_line() -> None:
    code = "import homelab.cli\nfrom pydantic.plugin._loader import get_plugins\nprint(list(get_plugins()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert proc.stdout.strip() == "[]"


SECTIONS: dict[str, type[BaseModel]] = {
    "access": Access,
    "settings": Settings,
    "backup": Backup,
    "https": Https,
    "docker": Docker,
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_section_left_out_is_its_defaults(section: str) -> None:
    """A section the file leaves out (made without validation, so no validator is built for it) equals the
    validated empty section, and is as frozen."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data.pop(section, None)
    if section != "settings":
        data["settings"] = {"api_readers": 8}  # settings' own timeouts left out
    lab = parse_lab(yaml.safe_dump(data))
    value = getattr(lab, section)
    assert value == SECTIONS[section]() == SECTIONS[section].model_validate({})
    assert value.model_dump() == SECTIONS[section]().model_dump() and value.model_fields_set == set()
    assert lab.settings.timeouts == Timeouts()
    with pytest.raises(ValidationError, match="frozen"):
        setattr(value, next(iter(SECTIONS[section].model_fields)), None)
