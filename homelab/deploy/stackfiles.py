"""The files a stack gets besides compose.yml and .env: Traefik's configuration, Homepage's docker.yaml, the
media stack's compose overrides and /data tree, and each stack's secret files (pure: values are passed in).

Secrets go into ``<stack>/secrets/`` (0700) as one 0600 file each, which the containers read
(``--admin-password-file``, Traefik's ``usersfile``, lego's ``<NAME>_FILE``, gluetun's ``*_SECRETFILE``): never
into .env, the compose file or a container's environment (which `docker inspect` shows to anyone with the socket).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import yaml

from homelab.deploy.firstvisit import seeded_secrets
from homelab.lab.models import Lab, Vm
from homelab.stacks import DNS_PROVIDER_SECRETS, SecretSpec, for_lab

SECRET_MODE = 0o600
MASKED = "(secret: written by `homelab deploy`, shown by `homelab secrets show {stack}`)\n"
DASHBOARD_USER = "admin"
ACME_RESOLVER = "homelab"
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# the Docker API the socket proxy offers (tecnativa/docker-socket-proxy, traefik stack)
SOCKET_PROXY = "tcp://socket-proxy:2375"


@dataclass(frozen=True)
class SecretFile:
    """A secret file of a stack: ``name`` under its secrets/ folder, the content (or None: masked)."""

    name: str
    content: str | None


def secret_specs(lab: Lab, stack: str) -> tuple[SecretSpec, ...]:
    """The secrets ``stack`` needs in this lab: those it declares and uses here, and the DNS provider's token."""
    specs = list(for_lab(lab)[stack].secrets)
    if stack == "media" and not media_vpn(lab):
        specs = [s for s in specs if s.name != "WIREGUARD_PRIVATE_KEY"]
    acme = lab.https.acme
    if stack == "traefik" and lab.https.ca == "acme" and acme is not None and acme.challenge == "dns":
        for name in DNS_PROVIDER_SECRETS.get(acme.dns_provider, ()):
            specs.append(SecretSpec(name, f"{acme.dns_provider} API credentials for DNS-01"))
    return tuple(specs)


def wanted_secrets(lab: Lab) -> dict[str, tuple[SecretSpec, ...]]:
    """The secrets of every stack some VM runs."""
    known = for_lab(lab)
    used = dict.fromkeys(name for vm in lab.vms for name in vm.stacks if name in known)
    return {name: specs for name in used if (specs := secret_specs(lab, name))}


def media_vpn(lab: Lab) -> bool:
    settings = lab.stacks.get("media")
    return bool(settings and settings.env.get("VPN_SERVICE_PROVIDER"))


def data_root(lab: Lab, vm: Vm) -> str:
    """The media stack's /data tree on the VM: stacks.media.env.DATA_ROOT, else a folder on the VM's data disk
    (mounted at /home/<user>/data), else /data."""
    settings = lab.stacks.get("media")
    if settings and settings.env.get("DATA_ROOT"):
        return settings.env["DATA_ROOT"]
    return f"/home/{lab.access.user}/data/media" if lab.data_disk_for(vm) else "/data"


def data_dirs(lab: Lab, vm: Vm) -> tuple[str, ...]:
    """The /data tree, parents first: torrents and media, each with tv and movies."""
    root = data_root(lab, vm).rstrip("/")
    return (root, *(f"{root}/{top}{sub}" for top in ("torrents", "media") for sub in ("", "/tv", "/movies")))


_DATA_MOUNT = re.compile(r"\$\{DATA_ROOT[^}]*\}(/[A-Za-z0-9_./-]*)?:")


def data_root_mounts(compose_texts: Iterable[str]) -> tuple[str, ...]:
    """The folders below DATA_ROOT a stack's compose files mount ("" for the root itself), in order."""
    found = (m.group(1) or "" for text in compose_texts for m in _DATA_MOUNT.finditer(text))
    return tuple(dict.fromkeys(sub.rstrip("/") for sub in found))


def shared_data_dirs(lab: Lab, vm: Vm, mounts: Iterable[str]) -> tuple[str, ...]:
    """The folders of the /data tree another stack mounts (media/music, ...), parents first, made owned by the
    user before its containers start (dockerd would make a missing one root's)."""
    root = data_root(lab, vm).rstrip("/")
    found: dict[str, None] = {root: None}
    for sub in mounts:
        parts = [p for p in sub.split("/") if p]
        for depth in range(1, len(parts) + 1):
            found[root + "/" + "/".join(parts[:depth])] = None
    return tuple(found)


def media_compose_files(lab: Lab, vm: Vm) -> str:
    """COMPOSE_FILE for the media stack: the base, the download client (plain or behind gluetun), the GPU."""
    files = ["compose.yml", "compose.vpn.yml" if media_vpn(lab) else "compose.qbittorrent.yml"]
    if vm.gpu:
        files.append("compose.gpu.yml")
    return ":".join(files)


@functools.lru_cache(maxsize=16)
def htpasswd_line(user: str, password: str) -> str:
    """``user:<bcrypt hash>`` for Traefik's basicauth usersfile.

    The salt is derived from the password, so the same password gives the same line and a deploy that
    changes nothing writes nothing (the password is random and long; the salt only has to be unique).
    Remembered: bcrypt takes tens of milliseconds on purpose, and every VM with traefik asks for the same line.
    """
    import bcrypt

    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.sha256(b"homelab-htpasswd\0" + password.encode()).digest()
    salt = "".join(alphabet[b % 64] for b in digest[:21]) + alphabet[(digest[21] % 4) * 16]
    hashed = bcrypt.hashpw(password.encode(), f"$2b$10${salt}".encode()).decode()
    return f"{user}:{hashed}\n"


LOCAL_TLS_CERT, LOCAL_TLS_KEY = "LOCAL_TLS_CERT", "LOCAL_TLS_KEY"  # traefik's values with https.ca local


def secret_files(lab: Lab, stack: str, values: Mapping[str, str] | None) -> list[SecretFile]:
    """The files of ``stack``'s secrets/ folder; ``values`` None renders them masked.

    Traefik's values also hold the local CA's wildcard certificate and key (LOCAL_TLS_CERT, LOCAL_TLS_KEY).
    """
    found: list[SecretFile] = []
    seeded = seeded_secrets(for_lab(lab)[stack])  # these go into the apps' seeded files only
    for spec in secret_specs(lab, stack):
        if spec.name in seeded:
            continue
        if stack == "traefik" and spec.name == "TRAEFIK_DASHBOARD_PASSWORD":
            password = values.get(spec.name) if values is not None else None
            found.append(
                SecretFile("dashboard.htpasswd", htpasswd_line(DASHBOARD_USER, password) if password else None)
            )
            continue
        found.append(SecretFile(spec.name, values.get(spec.name) if values is not None else None))
    if stack == "traefik" and lab.https.ca == "local":
        found.append(SecretFile("local-tls.crt", values.get(LOCAL_TLS_CERT) if values is not None else None))
        found.append(SecretFile("local-tls.key", values.get(LOCAL_TLS_KEY) if values is not None else None))
    return found


def traefik_static(lab: Lab, domain: str) -> str:
    """Traefik's static configuration (traefik.yml): HTTPS on :443, :80 redirecting to it, the certificates."""
    websecure: dict[str, object] = {"address": ":443", "http": {"tls": {}}}
    config: dict[str, object] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO"},
        "api": {"dashboard": True},
        "entryPoints": {
            "web": {
                "address": ":80",
                "http": {"redirections": {"entryPoint": {"to": "websecure", "scheme": "https", "permanent": True}}},
            },
            "websecure": websecure,
        },
        "providers": {
            "docker": {"endpoint": SOCKET_PROXY, "exposedByDefault": False, "network": "homelab"},
            "file": {"directory": "/etc/traefik/dynamic", "watch": True},
        },
    }
    acme = lab.https.acme
    if lab.https.ca == "acme" and acme is not None:
        tls: dict[str, object] = {"certResolver": ACME_RESOLVER}
        resolver: dict[str, object] = {
            "email": acme.email,
            "storage": "/acme/acme.json",
            "caServer": acme.server or LETS_ENCRYPT,
        }
        if acme.challenge == "dns":
            tls["domains"] = [{"main": domain, "sans": [f"*.{domain}"]}]
            resolver["dnsChallenge"] = {"provider": acme.dns_provider}
        else:
            resolver["httpChallenge"] = {"entryPoint": "web"}
        websecure["http"] = {"tls": tls}
        config["certificatesResolvers"] = {ACME_RESOLVER: {"acme": resolver}}
    return "# Written by `homelab deploy` from the lab file (https); changes made here are overwritten.\n" + (
        yaml.safe_dump(config, sort_keys=False)
    )


def traefik_dynamic(lab: Lab) -> str:
    """dynamic/tls.yml: modern TLS only, and with a local CA its wildcard certificate as the default one."""
    config: dict[str, object] = {"tls": {"options": {"default": {"minVersion": "VersionTLS12", "sniStrict": False}}}}
    if lab.https.ca == "local":
        config["tls"]["stores"] = {  # type: ignore[index]
            "default": {
                "defaultCertificate": {"certFile": "/secrets/local-tls.crt", "keyFile": "/secrets/local-tls.key"}
            }
        }
    return "# Written by `homelab deploy`; changes made here are overwritten.\n" + yaml.safe_dump(
        config, sort_keys=False
    )


def traefik_env(lab: Lab) -> str:
    """traefik.env: where lego finds the DNS provider's credentials (file paths, never the values)."""
    lines = ["# Written by `homelab deploy`: the DNS provider's credentials are files in secrets/ (0600)."]
    for spec in secret_specs(lab, "traefik"):
        if spec.name != "TRAEFIK_DASHBOARD_PASSWORD":
            lines.append(f"{spec.name}_FILE=/secrets/{spec.name}")
    return "\n".join(lines) + "\n"


def homepage_docker(lab: Lab) -> str:
    """Homepage's docker.yaml: the VM's Docker through the traefik stack's read-only socket proxy."""
    host = SOCKET_PROXY.removeprefix("tcp://")
    name, port = host.split(":")
    body = yaml.safe_dump({"homelab": {"host": name, "port": int(port)}}, sort_keys=False)
    return f"# Written by `homelab deploy`: the read-only Docker API of the traefik stack's socket proxy.\n{body}"


def fingerprint(text: str) -> str:
    """A short, stable fingerprint of a secret (to say which one is in use, never the value)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:5]).decode().lower()
