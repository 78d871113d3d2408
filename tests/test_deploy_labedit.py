"""`homelab stack add` edits lab.yml: comments, order and indentation kept; nothing written unless valid."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from homelab.deploy.labedit import add_stack
from homelab.errors import InputError, LabFileError

REPO = Path(__file__).resolve().parent.parent

# As `homelab init` writes it (PyYAML block style, lists flush with their key), with a user's comments.
INIT_STYLE = """\
# My lab. Comments like this one must survive `homelab stack add`.
name: test
proxmox:
  url: https://pve.test:8006
  node: pve1
  token_id: root@pam!homelab   # the secret is in HOMELAB_PROXMOX_TOKEN
network:
  subnet: 10.10.0.0/24
  gateway: 10.10.0.1
  build_ip: 10.10.0.250
  domain: lab.example
templates:
- name: debian-docker
vms:
- name: web        # the front VM
  ip: 10.10.0.10
  stacks:
  - traefik        # first, the others route through it
- name: db
  ip: 10.10.0.11
  # no stacks yet
stacks:
  traefik:
    version: v3.6.2
"""


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


def test_adds_to_a_block_list_keeping_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    result = add_stack(path, "portainer", "web")
    after = path.read_text()
    assert result.changed and result.vm == "web" and result.missing == ()
    assert changed_lines(INIT_STYLE, after) == ["+   - portainer"]
    assert after.index("  - traefik        # first") < after.index("  - portainer")
    assert [vm.stacks for vm in result.lab.vms] == [["traefik", "portainer"], []]


def test_adds_a_stacks_key_to_a_vm_without_one(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    result = add_stack(path, "homepage", "db")
    after = path.read_text()
    # homepage is reached through traefik, which db did not run: added with it, first, and said so
    assert result.missing == () and result.added_requirements == ("traefik",)
    assert changed_lines(INIT_STYLE, after) == ["+   stacks: [traefik, homepage]"]
    assert "  # no stacks yet" in after and "# My lab. Comments like this one" in after


def test_the_example_lab_changes_by_one_line(tmp_path: Path) -> None:
    example = (REPO / "inventories" / "example" / "lab.yml").read_text()
    text = example.replace("stacks: [traefik, portainer, media, homepage]", "stacks: [traefik, portainer]")
    path = tmp_path / "lab.yml"
    path.write_text(text)
    add_stack(path, "homepage")  # the only VM
    assert changed_lines(text, path.read_text()) == [
        "-     stacks: [traefik, portainer]",
        "+     stacks: [traefik, portainer, homepage]",
    ]


def test_the_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    path.chmod(0o600)
    add_stack(path, "portainer", "web")
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("stack", "vm", "error", "message"),
    [
        ("portaner", "web", InputError, "unknown stack 'portaner'; did you mean 'portainer'?"),
        ("portainer", None, InputError, "which VM? pass --vm, one of: web, db"),
        ("portainer", "mail", InputError, "no VM named 'mail'"),
    ],
)
def test_refusals_write_nothing(tmp_path: Path, stack: str, vm: str | None, error: type, message: str) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    with pytest.raises(error, match=message.replace("?", r"\?")):
        add_stack(path, stack, vm)
    assert path.read_text() == INIT_STYLE
    assert [p.name for p in tmp_path.iterdir()] == ["lab.yml"]  # no temp file left behind


def test_an_invalid_lab_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    broken = INIT_STYLE.replace("  ip: 10.10.0.11", "  ip: 10.99.0.11")
    path.write_text(broken)
    with pytest.raises(LabFileError, match=r"lab.yml:20: vms\[1\].ip: 10.99.0.11 is outside network.subnet"):
        add_stack(path, "portainer", "web")
    assert path.read_text() == broken


def test_adding_a_stack_the_vm_has_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    before = path.stat().st_mtime_ns
    result = add_stack(path, "traefik", "web")
    assert not result.changed and path.stat().st_mtime_ns == before


def test_an_edit_that_fails_validation_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from homelab.deploy import labedit
    from homelab.errors import Problem

    real = labedit.parse_lab
    seen: list[str] = []

    def strict(text: str, name: str = "lab.yml", folder: Path | None = None) -> object:
        seen.append(text)
        if len(seen) == 2:  # the edited text: pretend a rule rejects it
            raise LabFileError([Problem(name, 16, "vms[0].stacks", "rejected")])
        return real(text, name, folder)

    monkeypatch.setattr(labedit, "parse_lab", strict)
    path = tmp_path / "lab.yml"
    path.write_text(INIT_STYLE)
    with pytest.raises(LabFileError, match="rejected"):
        add_stack(path, "portainer", "web")
    assert "- portainer" in seen[1] and path.read_text() == INIT_STYLE
