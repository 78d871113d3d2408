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

# The fake Proxmox's `local` storage as a PVE 9 node has it with imports enabled (cloud images land there).
DEMO_STORAGES = {
    "local": {"type": "dir", "active": 1, "content": "iso,vztmpl,backup,import", "files": [], "path": "/var/lib/vz"}
}
# The fake does not download anything, so no checksum is checked; a real lab names the image's own.
DEMO_IMAGE = {
    "url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
    "checksum": "sha512:" + "0" * 128,
}


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
    "--workdir", type=click.Path(file_okay=False), help="Where the demo lab and its state go (default: a temp folder)."
)
def demo(vms: int, time_scale: float, workdir: str | None) -> None:
    """Run `homelab up` for the example lab against the built-in fake Proxmox, then plan again and show status.

    The stacks are not deployed: the fake's VMs are API objects, not machines one can SSH into.

    Nothing on your network is touched: the fake listens on a loopback address over HTTPS, and the demo lab
    has no config repo, so no git host is contacted.
    """
    from homelab.demo.launcher import start_fake_proxmox

    try:
        import fakepve  # noqa: F401
    except ImportError:
        raise InputError("the demo needs the built-in fake Proxmox: pip install 'homelab[demo]'") from None

    from homelab.lab.loader import parse_lab
    from homelab.pipeline import up
    from homelab.provision.service import make_plan, status
    from homelab.proxmox.api import connect

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="homelab-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["HOMELAB_STATE_DIR"] = str(root / "state")
    click.echo(f"Starting the fake Proxmox (workdir {root}) ...")
    fake = start_fake_proxmox(
        root / "fakepve", guests=[], storages=DEMO_STORAGES, time_scale=time_scale, agent_delay=20, start_secs=5
    )
    try:
        os.environ["HOMELAB_PROXMOX_TOKEN"] = fake.token_secret  # in this process only; never in the lab file
        data = yaml.safe_load((data_dir("inventories/example") / "lab.yml").read_text(encoding="utf-8"))
        data["name"] = "demo"
        data["proxmox"].update(
            url=fake.url, node="pve1", storage="local-lvm", token_id=fake.token_id, ca_bundle=fake.cafile
        )
        data["templates"][0]["image"] = DEMO_IMAGE
        data.pop("repo", None)
        base = data["vms"][0]
        data["vms"] = [base] + [
            {"name": f"node-{i:02d}", "cores": 2, "memory": 2048, "disk": "32G", "ip": f"192.168.10.{30 + i}"}
            for i in range(1, vms)
        ]
        lab_path = root / "lab.yml"
        lab_path.write_text(
            "# The demo lab: inventories/example/lab.yml pointed at the built-in fake Proxmox (no config repo).\n"
            + yaml.safe_dump(data, sort_keys=False),
            encoding="utf-8",
        )
        lab = parse_lab(lab_path.read_text(encoding="utf-8"), str(lab_path))
        click.echo(f"{lab_path}: valid ({len(lab.vms)} VMs)")
        click.secho("\n$ homelab up --yes", bold=True)
        api = connect(lab)
        # The fake's VMs are not machines: stage 4 (Ansible over SSH) has nothing to reach, so it is skipped.
        up(
            api,
            lab,
            click.echo,
            lambda question: None,
            ui.LineReporter(),
            deploy=False,
            skip_reason="the fake's VMs are API objects, not machines to SSH into",
        )
        click.secho("\n$ homelab plan   (again: nothing to do)", bold=True)
        again = make_plan(lab, api=api)
        ui.render_plan(again.plan)
        if again.plan.changes:
            raise OperationError("the second plan still has changes: apply is not idempotent")
        click.secho("\n$ homelab status", bold=True)
        for row in status(lab, api):
            click.echo(f"  {row.name:<12} vmid {row.vmid}  {row.state:<8} {row.address or '-':<15} v{row.version}")
        click.echo(f"\nThe demo lab file is {lab_path}; its state is in {root / 'state'}.")
    finally:
        fake.stop()
