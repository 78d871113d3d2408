"""`homelab demo`: the example lab, end to end, against the built-in fake Proxmox."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import yaml

from homelab import ui
from homelab.errors import InputError, OperationError
from homelab.paths import data_dir


@click.command()
@click.option("--vms", type=click.IntRange(1, 50), default=3, show_default=True, help="How many VMs the demo lab has.")
@click.option(
    "--time-scale",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="Real seconds per Proxmox second (0.01: a 60 s clone takes 0.6 s).",
)
@click.option(
    "--workdir", type=click.Path(file_okay=False), help="Where the demo lab and its state go (default: temp)."
)
def demo(vms: int, time_scale: float, workdir: str | None) -> None:
    """Run the example lab against the built-in fake Proxmox: validate, plan, apply, re-plan, status.

    Nothing on your network is touched: the fake listens on a loopback address over HTTPS.
    """
    from homelab.demo.launcher import start_fake_proxmox

    try:
        import fakepve  # noqa: F401
    except ImportError:
        raise InputError("the demo needs the built-in fake Proxmox: pip install 'homelab[demo]'") from None

    from homelab.adminkey import ensure_admin_key
    from homelab.lab.loader import parse_lab
    from homelab.provision.service import carry_out, make_plan, status

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="homelab-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["HOMELAB_STATE_DIR"] = str(root / "state")
    click.echo(f"Starting the fake Proxmox (workdir {root}) ...")
    fake = start_fake_proxmox(root / "fakepve", time_scale=time_scale, agent_delay=20)
    try:
        os.environ["HOMELAB_PROXMOX_TOKEN"] = fake.token_secret  # in this process only; never in the lab file
        data = yaml.safe_load((data_dir("inventories/example") / "lab.yml").read_text(encoding="utf-8"))
        data["name"] = "demo"
        data["proxmox"].update(url=fake.url, node="pve1", token_id=fake.token_id, ca_bundle=fake.cafile)
        base = data["vms"][0]
        data["vms"] = [base] + [
            {"name": f"node-{i:02d}", "cores": 2, "memory": 2048, "disk": "32G", "ip": f"192.168.10.{30 + i}"}
            for i in range(1, vms)
        ]
        lab_path = root / "lab.yml"
        lab_path.write_text(
            "# The demo lab: inventories/example/lab.yml pointed at the built-in fake Proxmox.\n"
            + yaml.safe_dump(data, sort_keys=False),
            encoding="utf-8",
        )
        lab = parse_lab(lab_path.read_text(encoding="utf-8"), str(lab_path))
        ensure_admin_key(lab)
        click.echo(f"{lab_path}: valid ({len(lab.vms)} VMs)\n")
        click.secho("$ homelab plan", bold=True)
        planned = make_plan(lab)
        ui.render_plan(planned.plan)
        click.secho("\n$ homelab apply --yes", bold=True)
        result = carry_out(planned, ui.LineReporter())
        ui.render_apply(result)
        if not result.ok:
            raise OperationError("the demo apply failed")
        click.secho("\n$ homelab plan   (again: nothing to do)", bold=True)
        again = make_plan(lab)
        ui.render_plan(again.plan)
        click.secho("\n$ homelab status", bold=True)
        for row in status(lab):
            click.echo(f"  {row.name:<12} vmid {row.vmid}  {row.state:<8} {row.address or '-':<15} v{row.version}")
        click.echo(f"\nThe demo lab file is {lab_path}; its state is in {root / 'state'}.")
    finally:
        fake.stop()
