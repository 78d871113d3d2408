"""Many GETs at once from one thread (manyreads.py, PveApi.get_many): the same answers as one call each, every
read once, and what it cannot read (errors, a refused certificate, no server, answers it does not take) is read
the ordinary way, with the ordinary errors."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homelab.adapters.proxmox.api import NOT_ANSWERED, PveApi, RetryPolicy
from homelab.adapters.proxmox.client import ProxmoxerTransport
from homelab.adapters.proxmox.manyreads import read_many
from homelab.demo.launcher import FakeProxmox
from homelab.errors import ConnectionLost, ProxmoxError
from homelab.state.secrets import ProxmoxAuth
from tests.harness.fixtures_pve import refused_transport

CONFIGS = [f"/nodes/pve1/qemu/{vmid}/config" for vmid in (9000, 100, 101, 9000)]


def api_of(transport: ProxmoxerTransport) -> PveApi:
    return PveApi(transport, RetryPolicy(attempts=2, sleep=lambda _: None, connection_grace=0))


def transport_of(fake: FakeProxmox, cafile: str | None = None) -> ProxmoxerTransport:
    auth = ProxmoxAuth(token_id=fake.token_id, token_secret=fake.token_secret)
    return ProxmoxerTransport.connect(fake.url, auth, True, cafile)


@pytest.mark.fake_pve(
    guests=[{"vmid": 9000, "name": "tpl", "template": True}, {"vmid": 100, "name": "a"}, {"vmid": 101, "name": "b"}]
)
def test_the_answers_are_those_of_one_call_each_and_each_path_is_read_once(fake_pve: FakeProxmox) -> None:
    api = api_of(transport_of(fake_pve, fake_pve.cafile))
    one_each = [api.get(path) for path in CONFIGS]
    fake_pve.requests(clear=True)
    assert api.get_many(CONFIGS, readers=2) == one_each
    assert sorted(fake_pve.requests()) == sorted(("GET", f"/api2/json{path}") for path in CONFIGS)


@pytest.mark.fake_pve(guests=[{"vmid": 100, "name": "a"}])
def test_an_error_answer_is_read_again_and_raised_as_by_get(fake_pve: FakeProxmox) -> None:
    transport = transport_of(fake_pve, fake_pve.cafile)
    paths = ["/nodes/pve1/qemu/100/config", "/nodes/pve1/qemu/4242/config"]  # no such VM: PVE's 500
    answers = transport.request_many(paths, 4)
    assert answers[0]["name"] == "a" and answers[1] is NOT_ANSWERED
    api = api_of(transport)
    with pytest.raises(ProxmoxError) as one:
        api.get(paths[1])
    with pytest.raises(ProxmoxError) as many:
        api.get_many(paths, readers=4)
    assert (str(many.value), many.value.status) == (str(one.value), one.value.status)


def test_a_certificate_from_another_ca_is_refused(fake_pve: FakeProxmox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    transport = transport_of(fake_pve)  # the system's CAs, which never signed the fake's
    assert transport.request_many(["/version"] * 3, 3) == [NOT_ANSWERED] * 3
    with pytest.raises(ProxmoxError, match="TLS certificate not trusted"):
        api_of(transport).get_many(["/version"] * 3, readers=3)


def test_no_server_is_a_lost_connection() -> None:
    transport = refused_transport()
    assert transport.request_many(["/version", "/version"], 2) == [NOT_ANSWERED] * 2
    with pytest.raises(ConnectionLost, match="connection refused"):
        api_of(transport).get_many(["/version", "/version"], readers=2)


class _Server(BaseHTTPRequestHandler):
    """Answers GET /n with {"data": n}: "close" closes the connection after each answer (as pveproxy does after
    its keep-alive count), "chunked" sends a body without a Content-Length."""

    protocol_version = "HTTP/1.1"
    mode = "close"
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = json.dumps({"data": int(self.path.strip("/"))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            return
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serving(tmp_path: Path, bind: str) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """_Server over HTTPS on ``bind``, its certificate (self-signed, for localhost and 127.0.0.1) in the file
    it yields beside the server."""
    from fakepve.certs import make_cert

    cafile, keyfile, _ = make_cert(str(tmp_path), hosts=("127.0.0.1",))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cafile, keyfile)
    httpd = ThreadingHTTPServer((bind, 0), _Server)
    httpd.socket = serving.wrap_socket(httpd.socket, server_side=True)
    _Server.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, cafile
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, ssl.SSLContext]]:
    with _serving(tmp_path, "127.0.0.1") as (httpd, cafile):
        yield httpd, ssl.create_default_context(cafile=cafile)


@pytest.mark.integration  # a real HTTPS server, its certificate made by fakepve (not in the unit extra)
def test_a_certificate_for_another_host_name_is_refused_by_both_ways_of_reading(tmp_path: Path) -> None:
    # the certificate's CA is trusted, but it names 127.0.0.1 and the server is reached as 127.0.0.2
    with _serving(tmp_path, "127.0.0.2") as (httpd, cafile):
        auth = ProxmoxAuth(token_id="root@pam!t", token_secret="s3cret")
        transport = ProxmoxerTransport.connect(f"https://127.0.0.2:{httpd.server_address[1]}", auth, True, cafile)
        assert transport.request_many(["/1", "/2"], 2) == [NOT_ANSWERED] * 2
        with pytest.raises(ProxmoxError, match="TLS certificate not trusted"):
            transport.request("GET", "/1", {})
        with pytest.raises(ProxmoxError, match="TLS certificate not trusted"):
            api_of(transport).get_many(["/1", "/2"], readers=2)
        assert _Server.seen == []  # no request went out over an unverified connection


@pytest.mark.integration  # a real HTTPS server, its certificate made by fakepve (not in the unit extra)
@pytest.mark.parametrize(("mode", "answered"), [("close", True), ("chunked", False)])
def test_closed_connections_are_reopened_and_unknown_answers_left(
    server: tuple[ThreadingHTTPServer, ssl.SSLContext], mode: str, answered: bool
) -> None:
    httpd, context = server
    _Server.mode = mode
    targets = [f"/{n}" for n in range(12)]
    host, port = httpd.server_address[:2]
    answers = read_many((str(host), int(port)), context, f"Host: {host}:{port}\r\n", targets, 3, 10.0)
    assert answers == (list(range(12)) if answered else [NOT_ANSWERED] * 12)
    # each read once when answered; unanswered ones stop their connection (the caller reads them itself)
    assert sorted(_Server.seen) == sorted(targets) if answered else len(_Server.seen) <= 3
