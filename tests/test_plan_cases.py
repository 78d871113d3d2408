"""Plan tests as data: each tests/plans/*.yml is a lab (patch), live facts, and the expected actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.adapters.proxmox.marks import describe_vm, parse_mark
from homelab.adapters.proxmox.versions import TemplateVersion
from homelab.adapters.proxmox.vmconfig import desired_config, encode_config
from homelab.lab.loader import parse_lab
from homelab.lab.models import Lab
from homelab.lab.types import format_size, parse_size
from homelab.provision.facts import Facts, LiveVm
from homelab.provision.plan import PlanOptions, plan

CASES = sorted(p for p in (Path(__file__).parent / "plans").glob("*.yml") if not p.name.startswith("_"))


def load_lab(patch: dict[str, Any] | None) -> Lab:
    base = yaml.safe_load((Path(__file__).parent / "plans" / "_lab.yml").read_text())
    base.update(patch or {})
    return parse_lab(yaml.safe_dump(base), "plan-case")


def live_vm(lab: Lab, spec: dict[str, Any], versions: dict[str, TemplateVersion]) -> LiveVm:
    version = versions[spec["version"]]
    lab_vm = next((v for v in lab.vms if v.name == spec["vm"]), None)
    state = spec.get("state", "ready")
    disk = parse_size(spec["disk"]) if "disk" in spec else (lab_vm.disk if lab_vm else 8 * 1024**3)
    if spec.get("bare") or lab_vm is None:
        config: dict[str, Any] = {"tags": lab.tag} if lab_vm is None else {}
        config["description"] = describe_vm(lab.name, spec["vm"], version.template, version.version, state)
    else:
        config = encode_config(desired_config(lab, lab_vm, version, state))
    config.update({"name": spec["vm"], "scsi0": f"local-lvm:vm-{spec['vmid']}-disk-0,size={format_size(disk)}"})
    config.update(spec.get("config", {}))
    return LiveVm(
        vmid=spec["vmid"],
        name=spec["vm"],
        node=spec.get("node", "pve1"),
        status=spec.get("status", "running"),
        tags=tuple(str(config.get("tags", "")).split(";")) if config.get("tags") else (),
        config=config,
        meta=parse_mark(config.get("description")),
    )


def build_facts(lab: Lab, spec: dict[str, Any]) -> Facts:
    templates = {
        name: tuple(TemplateVersion(vmid, node, f"{name}-{v}", v, name) for v, vmid, node in rows)
        for name, rows in spec.get("templates", {}).items()
    }
    versions = {t.version: t for rows in templates.values() for t in rows}
    managed = tuple(live_vm(lab, m, versions) for m in spec.get("managed", []))
    used = frozenset([*spec.get("used", []), *(m.vmid for m in managed)])
    namesakes = tuple(
        LiveVm(vmid=n["vmid"], name=n["name"], node="pve1", status="running", tags=())
        for n in spec.get("namesakes", [])
    )
    used = used | {n.vmid for n in namesakes}
    return Facts(managed=managed, unmanaged_namesakes=namesakes, templates=templates, used_vmids=used)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    lab = load_lab(case.get("lab"))
    facts = build_facts(lab, case["facts"])
    result = plan(lab, facts, PlanOptions(**case.get("options", {})))
    got = [(a.kind, a.vm) for a in result.actions]
    assert got == [(kind, vm) for kind, vm, _ in case["expect"]], [a.describe() for a in result.actions]
    for action, (_, _, fields) in zip(result.actions, case["expect"], strict=True):
        for key, want in fields.items():
            if key == "keys":
                assert sorted(c.key for c in action.changes) == sorted(want)  # type: ignore[attr-defined]
            else:
                assert getattr(action, key) == want, (key, action)
        assert action.describe()


def test_plan_is_pure_and_repeatable() -> None:
    lab = load_lab(None)
    facts = build_facts(lab, {"templates": {"debian": [["202601010000", 9000, "pve1"]]}})
    assert plan(lab, facts) == plan(lab, facts)


def test_plan_as_json_has_every_action() -> None:
    lab = load_lab(None)
    facts = build_facts(lab, {"templates": {"debian": [["202601010000", 9000, "pve1"]]}})
    data = plan(lab, facts).as_dict()
    assert data["changes"] == 2
    assert [a["action"] for a in data["actions"]] == ["create", "create"]
    assert data["actions"][0]["config"]["ipconfig0"] == "ip=10.10.0.10/24,gw=10.10.0.1"
