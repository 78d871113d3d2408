"""ACME against a local stand-in for Let's Encrypt: Debian's ``pebble`` (Let's Encrypt's test CA) and its
``pebble-challtestsrv`` (a DNS server whose TXT and A records the test sets), on a free loopback address.

Traefik's image cannot be pulled here, so the test drives what homelab controls: the static configuration it
renders for ``https.ca: acme`` with ``https.acme.server`` set to pebble's directory. The parameters are read
back from that rendered traefik.yml (the resolver websecure uses, its caServer, email, challenge and the
certificate's domains) and handed to ``lego``, the ACME library Traefik itself is built on, packaged by Debian:
it must obtain a certificate from pebble with them, for ``<domain>`` and ``*.<domain>`` over DNS-01 and for
a host name over HTTP-01. Two stand-ins, stated: lego's ``exec`` DNS provider writes the TXT records into
pebble-challtestsrv (the lab's cloudflare API cannot be reached offline), and HTTP-01 is served on pebble's
test port 5002 rather than port 80, the entry point ``web`` of the rendered file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from homelab.demo.launcher import free_loopback
from homelab.deploy.render import render_lab
from homelab.lab.loader import parse_lab
from tests.test_stack_files import one_vm

pytestmark = pytest.mark.integration

TOOLS = ("pebble", "pebble-challtestsrv", "lego")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
DOMAIN = "lab.example.com"
HTTP_PORT = 5002  # pebble's HTTP-01 port (Let's Encrypt uses 80: Traefik's entry point web)

pytest.importorskip("fakepve", reason="the test CA's certificate is made with fakepve.certs (the test extra)")
if MISSING:
    pytest.skip(
        f"{', '.join(MISSING)} not installed (Debian packages pebble and lego: the local ACME stand-in)",
        allow_module_level=True,
    )

# lego's exec provider calls this with `present|cleanup <fqdn> <value>`: it sets the TXT record in challtestsrv.
EXEC_SCRIPT = """import json, sys, urllib.request
action, fqdn, value = sys.argv[1:4]
body = {"host": fqdn, "value": value} if action == "present" else {"host": fqdn}
path = "/set-txt" if action == "present" else "/clear-txt"
request = urllib.request.Request("{management}" + path, data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(request, timeout=10).read()
"""


@dataclass(frozen=True)
class Pebble:
    """A running pebble and challtestsrv: pebble's ACME directory, its CA file, the DNS server lego asks."""

    directory: str
    ca_file: Path
    dns: str
    management: str
    workdir: Path


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.args} did not listen on {host}:{port}: {log.read_text()[-2000:]}")


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    from fakepve.certs import make_cert

    host = free_loopback(14000)
    cert, key, _ = make_cert(str(tmp_path), hosts=(host,))
    config = {
        "pebble": {
            "listenAddress": f"{host}:14000",
            "managementListenAddress": f"{host}:15000",
            "certificate": cert,
            "privateKey": key,
            "httpPort": HTTP_PORT,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    started: list[subprocess.Popen[bytes]] = []
    try:
        logs = tmp_path / "challtestsrv.log", tmp_path / "pebble.log"
        dns = subprocess.Popen(
            [
                *("pebble-challtestsrv", "-defaultIPv4", host, "-defaultIPv6", "", "-dns01", f"{host}:8053"),
                *("-management", f"{host}:8055", "-http01", "", "-https01", "", "-tlsalpn01", ""),
            ],
            stdout=logs[0].open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append(dns)
        wait_for_port(host, 8055, dns, logs[0])
        # no sleep before validations, no nonces rejected at random: the test is about the parameters
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        ca = subprocess.Popen(
            ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"{host}:8053"],
            stdout=logs[1].open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        started.append(ca)
        wait_for_port(host, 14000, ca, logs[1])
        yield Pebble(f"https://{host}:14000/dir", Path(cert), f"{host}:8053", f"http://{host}:8055", tmp_path)
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)


def rendered(challenge: str, server: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The traefik stack's static configuration and .env as homelab renders them for an ACME lab."""
    acme = {"email": "admin@lab.example.com", "challenge": challenge, "server": server}
    lab = parse_lab(yaml.safe_dump(one_vm(https={"ca": "acme", "acme": acme})))
    files = {f.path: f.content for f in render_lab(lab)["all"].files}
    env = dict(line.split("=", 1) for line in files["traefik/.env"].splitlines() if "=" in line)
    return yaml.safe_load(files["traefik/traefik.yml"]), {k: v.strip("'") for k, v in env.items()}


def resolver_of(static: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """websecure's tls settings and the ACME resolver they name."""
    tls = static["entryPoints"]["websecure"]["http"]["tls"]
    return tls, static["certificatesResolvers"][tls["certResolver"]]["acme"]


def lego(pebble: Pebble, resolver: dict[str, Any], domains: list[str], extra: list[str], env: dict[str, str]) -> Any:
    """lego run with the rendered resolver's CA and account e-mail, for ``domains``."""
    argv = ["lego", "--accept-tos", "--server", resolver["caServer"], "--email", resolver["email"]]
    argv += [*(f"--domains={d}" for d in domains), "--path", str(pebble.workdir / "lego"), *extra, "run"]
    return subprocess.run(
        argv,
        env={**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.ca_file), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def certificate_names(path: Path) -> tuple[set[str], str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName)), cert.issuer.rfc4514_string()


def test_dns01_gets_the_wildcard_certificate_homelabs_traefik_config_asks_for(pebble: Pebble) -> None:
    static, _ = rendered("dns", pebble.directory)
    tls, resolver = resolver_of(static)
    assert resolver["caServer"] == pebble.directory  # https.acme.server, not Let's Encrypt
    assert resolver["dnsChallenge"] == {"provider": "cloudflare"} and "httpChallenge" not in resolver
    assert tls["domains"] == [{"main": DOMAIN, "sans": [f"*.{DOMAIN}"]}]
    script = pebble.workdir / "set-txt.py"
    script.write_text(EXEC_SCRIPT.replace("{management}", pebble.management))
    hook = pebble.workdir / "exec.sh"
    hook.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    hook.chmod(0o755)
    domains = [name for entry in tls["domains"] for name in (entry["main"], *entry["sans"])]
    done = lego(
        pebble,
        resolver,
        domains,
        ["--dns", "exec", "--dns.resolvers", pebble.dns, "--dns.disable-cp"],
        {
            "EXEC_PATH": str(hook),
            "EXEC_PROPAGATION_TIMEOUT": "30",
            "EXEC_POLLING_INTERVAL": "1",
            "EXEC_SEQUENCE_INTERVAL": "1",
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names, issuer = certificate_names(pebble.workdir / "lego" / "certificates" / f"{DOMAIN}.crt")
    assert names == {DOMAIN, f"*.{DOMAIN}"} and "Pebble" in issuer


def test_http01_gets_a_certificate_for_a_routers_host_with_the_http_resolver(pebble: Pebble) -> None:
    static, env = rendered("http", pebble.directory)
    tls, resolver = resolver_of(static)
    assert resolver["caServer"] == pebble.directory and "dnsChallenge" not in resolver
    assert resolver["httpChallenge"] == {"entryPoint": "web"} and static["entryPoints"]["web"]["address"] == ":80"
    assert "domains" not in tls  # one certificate per router, for its Host rule
    host = env["TRAEFIK_HOST"]  # the dashboard router's Host(`${TRAEFIK_HOST}`)
    assert host == f"traefik.{DOMAIN}"
    address = pebble.directory.split("//")[1].split(":")[0]  # challtestsrv answers every A query with it
    done = lego(pebble, resolver, [host], ["--http", "--http.port", f"{address}:{HTTP_PORT}"], {})
    assert done.returncode == 0, done.stderr[-3000:]
    names, issuer = certificate_names(pebble.workdir / "lego" / "certificates" / f"{host}.crt")
    assert names == {host} and "Pebble" in issuer
