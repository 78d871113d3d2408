"""The Ansible inventory for a deploy, made from the hosts `homelab apply` recorded.

A stack's secret files are not in it (see :func:`secret_entries`).
Each host logs in as its recorded user with homelab's admin key (or the host's own key file), and SSH
checks the host key against a known_hosts file that holds exactly the pinned keys of this deploy's
hosts, with the strict options of :func:`homelab.adapters.ssh.ssh_args` (no global known_hosts, so
nothing else can vouch for a host).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from homelab.adapters.ssh import ssh_args
from homelab.deploy.containers import vm_containers
from homelab.deploy.render import RenderedFile, VmRender
from homelab.state.hosts import Host


def known_hosts_text(hosts: list[Host]) -> str:
    """A known_hosts file with the pinned key of every host (all must be pinned)."""
    return "".join(host.known_hosts_line() + "\n" for host in hosts)


def host_vars(
    host: Host,
    render: VmRender,
    key_file: Path,
    known_hosts: Path,
    *,
    lab: str,
    remove: Sequence[str] = (),
    data_disk: bool = False,
    purge: Sequence[str] = (),
    purge_kept: Sequence[str] = (),
) -> dict[str, Any]:
    """One host's inventory entry: how to reach it, what its stacks folder gets and which stacks leave it."""
    return {
        "ansible_host": host.address,
        "ansible_port": host.port,
        "ansible_user": host.user,
        "ansible_ssh_private_key_file": str(key_file),
        "ansible_ssh_common_args": ssh_args(known_hosts),
        "homelab_user": render.user,
        "homelab_lab": lab,
        "homelab_stacks": [stack.name for stack in render.stacks],
        "homelab_remove_stacks": list(remove),
        "homelab_data_disk": data_disk,
        "homelab_stack_dirs": list(render.dirs),
        "homelab_stack_files": file_entries(render.plain_files),
        "homelab_data_dirs": list(render.data_dirs),
        # what runs once the stacks are up: the preview's "Stacks to start" compares it with `docker ps`
        "homelab_containers": vm_containers(render),
        "homelab_state_dirs": list(render.state_dirs),
        "homelab_state_moves": list(render.state_moves),
        # removed stacks whose STATE_DIR goes too (--purge-data); every other one is kept
        "homelab_purge_state": {name: f"/home/{render.user}/data/stacks/{name}" for name in purge},
        # stacks removed before whose kept STATE_DIR goes now (`homelab stack remove --purge-data`)
        "homelab_purge_kept": {name: f"/home/{render.user}/data/stacks/{name}" for name in purge_kept},
    }


def file_entries(files: Sequence[RenderedFile]) -> list[dict[str, Any]]:
    """The homelab_files module's entries for ``files``."""
    return [
        # base64: Ansible templates inventory strings, and a compose file may hold {{ }} of its own
        {
            "path": f.path,
            "mode": f"{f.mode:04o}",
            "content_b64": base64.b64encode(f.content.encode()).decode(),
            "host_ids": f.host_ids,
        }
        for f in files
    ]


def secret_entries(render: VmRender) -> dict[str, Any]:
    """What the no_log "Stack secrets" task writes on one VM: its 0700 folders and 0600 files, and the seeds.

    Never part of the inventory (which lives beside ansible-runner's artifacts): homelab writes these to a
    private file of their own for the run's duration, which the play reads on this machine.
    """
    return {
        "dirs": list(render.private_dirs),
        "files": file_entries(render.secret_files),
        # apps' settings written before their first start, only where missing (homelab.deploy.firstvisit)
        "seeds": file_entries(render.seeds),
    }


def inventory(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The inventory document (YAML inventory plugin format; JSON is valid YAML)."""
    return {"all": {"hosts": entries}}
