"""The values of the lab's stack secrets for one deploy, and the private file Ansible reads them from.

Values come from :mod:`homelab.state.stacksecrets` (environment, secrets file, or generated and kept) and,
for a lab with a local CA, the wildcard certificate of :mod:`homelab.deploy.localca`. For the run they are
written to a 0600 file in a 0700 folder of the lab's state (outside the deploy's workdir, which holds the
inventory and ansible-runner's artifacts), read by the play's no_log task, and removed when the run ends.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from homelab.deploy.inventory import secret_entries
from homelab.deploy.localca import local_tls
from homelab.deploy.plan import Deployment
from homelab.deploy.render import domain
from homelab.deploy.stackfiles import LOCAL_TLS_CERT, LOCAL_TLS_KEY, wanted_secrets
from homelab.lab.models import Lab
from homelab.paths import state_dir
from homelab.state.files import write_secret
from homelab.state.stacksecrets import resolve


def stack_secret_values(lab: Lab, *, keep: bool = True) -> dict[str, dict[str, str]]:
    """Every secret of the stacks the lab runs, per stack; generated ones are kept when ``keep``."""
    resolved = resolve(lab, wanted_secrets(lab), keep=keep)
    values = {stack: {name: s.value for name, s in found.items()} for stack, found in resolved.items()}
    if lab.https.ca == "local" and any("traefik" in vm.stacks for vm in lab.vms):
        tls = local_tls(lab, domain(lab), keep=keep)
        values.setdefault("traefik", {}).update({LOCAL_TLS_CERT: tls.cert, LOCAL_TLS_KEY: tls.key})
    return values


@contextmanager
def staged_secrets(deployment: Deployment) -> Iterator[Path | None]:
    """The private file with each ready VM's secret folders and files (None when no VM has any)."""
    entries = {
        t.name: secret_entries(t.render)
        for t in deployment.ready
        if t.render.secret_files or t.render.private_dirs or t.render.seeds
    }
    if not entries:
        yield None
        return
    base = state_dir(deployment.lab.name)
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".deploy-secrets-", dir=base))  # 0700
    try:
        path = folder / "secrets.json"
        write_secret(path, json.dumps(entries).encode("utf-8"))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
