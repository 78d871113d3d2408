"""`homelab stack new NAME`: a user stack's folder beside the lab file, in the stack format, ready to edit.

The scaffold passes the catalog's checks as written (tests/test_catalog.py): a pinned image, state under
STATE_DIR, an HTTPS router with its web UI entry, restart policy, TZ.
"""

from __future__ import annotations

import re
from pathlib import Path

from homelab.errors import InputError
from homelab.stacks import catalogue, read_stack, user_root

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

STACK_YML = """\
# A stack of your own (stack format v2; see the built-in stacks for more). `homelab stack show {name}` reads it.
description: {name}, a stack of my own (say in one line what it is for)
category: Productivity
requires: [traefik]
version_var: {var}_VERSION
state: [data]               # folders under ${{STATE_DIR}} (/home/<user>/data/stacks/{name}), kept on removal
ui:
  - name: {title}
    host_var: {var}_HOST
    subdomain: {name}
    icon: mdi-application     # a dashboard-icons or Material Design icon name Homepage knows
    description: {title}
    port: 80                  # the container port Traefik routes to (as in the label)
secrets: []                 # e.g. - {{name: ADMIN_PASSWORD, generate: password}} -> /secrets/ADMIN_PASSWORD
settings: []                # e.g. - {{name: {var}_LANGUAGE, default: en, description: ...}}
"""

COMPOSE_YML = """\
# Copied into /home/<user>/stacks/{name} by `homelab deploy` with a .env (STATE_DIR, {var}_HOST, TZ, ...).
services:
  {name}:
    image: "traefik/whoami:${{{var}_VERSION:-v1.11.0}}"
    restart: unless-stopped
    environment:
      TZ: "${{TZ:-Etc/UTC}}"
    volumes:
      - "${{STATE_DIR:-./state}}/data:/data"
    networks: [homelab]
    labels:
      traefik.enable: "true"
      traefik.http.routers.{name}.rule: "Host(`${{{var}_HOST:-{name}.home.arpa}}`)"
      traefik.http.routers.{name}.entrypoints: websecure
      traefik.http.routers.{name}.tls: "true"
      traefik.http.services.{name}.loadbalancer.server.port: "80"
networks:
  homelab:
    external: true
"""


def new_stack(lab_folder: Path, name: str) -> Path:
    """Write ``<lab_folder>/stacks/<name>/`` (stack.yml, compose.yml); refuses a folder that exists."""
    if not _NAME.match(name):
        raise InputError(f"{name!r}: a stack name is a DNS label (a-z, 0-9, '-'), e.g. my-app")
    folder = lab_folder / "stacks" / name
    if folder.exists():
        raise InputError(f"{folder} exists already: edit it, or choose another name")
    var = name.upper().replace("-", "_")
    title = name.replace("-", " ").title()
    folder.mkdir(parents=True)
    (folder / "stack.yml").write_text(STACK_YML.format(name=name, var=var, title=title), encoding="utf-8")
    (folder / "compose.yml").write_text(COMPOSE_YML.format(name=name, var=var), encoding="utf-8")
    read_stack(folder)  # what was written reads back as a stack
    if user_root(lab_folder) is not None:
        catalogue.cache_clear()  # the lab's catalogue now has it
    return folder
