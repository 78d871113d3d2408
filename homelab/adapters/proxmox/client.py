"""The proxmoxer adapter: the only module that imports proxmoxer."""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import warnings
from collections.abc import Sequence
from http.client import responses
from typing import Any
from urllib.parse import urlencode, urlparse

import requests
import urllib3
from proxmoxer import ProxmoxAPI
from proxmoxer.core import AuthenticationError, ResourceException
from requests.utils import requote_uri

from homelab.adapters.proxmox.api import DEFAULT_PORT, NOT_ANSWERED
from homelab.adapters.proxmox.manyreads import read_many
from homelab.errors import ConnectionLost, InputError, ProxmoxError
from homelab.lab.models import Lab
from homelab.masking import mask
from homelab.state.secrets import ProxmoxAuth

log = logging.getLogger(__name__)

# PVE answers these with a 5xx when a retry a little later will likely succeed.
TRANSIENT = re.compile(
    r"can't lock file|got timeout|QEMU guest agent is not running|temporarily unavailable|"
    r"connection (reset|refused|aborted)|no quorum|timed out|VM is locked",
    re.IGNORECASE,
)


POOL_SIZE = 64  # connections kept open: one per parallel VM chain (the executor's thread cap)


class ProxmoxerTransport:
    """Sends API calls through proxmoxer over HTTPS; maps its failures to ProxmoxError."""

    def __init__(self, api: Any, where: str, reads: _Reads | None = None):
        self._api = api
        self._where = where
        self._reads = reads

    @classmethod
    def from_lab(cls, lab: Lab, auth: ProxmoxAuth, timeout: float = 30.0) -> ProxmoxerTransport:
        px = lab.proxmox
        # one kept-alive connection per thread that may call at once: the readers, or the VM workers
        connections = max(lab.settings.api_readers, lab.settings.concurrency)
        return cls.connect(px.url, auth, px.verify_tls, px.ca_bundle, timeout, connections)

    @classmethod
    def connect(
        cls,
        address: str,
        auth: ProxmoxAuth,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        timeout: float = 30.0,
        connections: int = 10,
    ) -> ProxmoxerTransport:
        """A transport for one API address (https://host:port), keeping up to ``connections`` connections open
        (more threads than that still work, but each extra one pays a new TLS handshake per call)."""
        url = urlparse(address)
        try:
            port = url.port or DEFAULT_PORT
        except ValueError:
            raise InputError(f"{address}: the port must be 1 to 65535") from None
        if not url.hostname or url.scheme != "https":
            raise InputError(f"{address}: not an https://host:port address")
        # requests' own CA bundle variables, read once here (see trust_env below)
        verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        if ca_bundle:
            verify = os.path.expanduser(ca_bundle)
        if not verify_tls:
            warnings.warn(
                f"TLS verification is off for {address}: anyone on the path can read the API token",
                stacklevel=2,
            )
            verify = False
        kwargs: dict[str, Any] = dict(host=url.hostname, port=port, verify_ssl=verify, timeout=timeout)
        if auth.token_id:
            user, token = auth.token_id.split("!", 1)
            kwargs.update(user=user, token_name=token, token_value=auth.token_secret)
        else:
            kwargs.update(user=auth.user, password=auth.password)
        try:
            api = ProxmoxAPI(**kwargs)
            session = getattr(api, "_store", {}).get("session")  # proxmoxer 2.x keeps its Session there
            if isinstance(session, requests.Session):
                session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=connections))
                # The environment's proxy settings, resolved once: requests would otherwise read and parse the
                # whole environment on every call (about a fifth of a call's time against a nearby Proxmox).
                session.proxies.update(requests.utils.get_environ_proxies(f"https://{url.hostname}:{port}"))
                session.trust_env = False
        except AuthenticationError as exc:
            raise ProxmoxError(mask(f"{address}: login refused: {exc}"), status=401) from None
        except requests.exceptions.SSLError as exc:
            raise ProxmoxError(
                f"{address}: TLS certificate not trusted ({_tls_reason(exc)}); set proxmox.ca_bundle"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ProxmoxError(f"{address}: cannot connect: {_short(exc)}", transient=True) from None
        _keep_connections(api)
        reads = _Reads.for_token(api, url.hostname, port, verify, timeout, connections) if auth.token_id else None
        return cls(api, address, reads)

    def request_many(self, paths: Sequence[str], connections: int) -> list[Any]:
        """GETs of ``paths`` at once over up to ``connections`` connections, from this thread (API tokens only;
        otherwise, and for any read this leaves NOT_ANSWERED, PveApi reads one call each)."""
        if self._reads is None:
            return [NOT_ANSWERED] * len(paths)
        log.debug("GET %d paths at once, %d connections", len(paths), connections)
        return self._reads.get_many(paths, connections)

    def request(self, method: str, path: str, params: dict[str, Any]) -> Any:
        log.debug("%s %s %s", method, path, sorted(params))  # parameter names only: values may be secrets
        try:
            if method == "GET" and self._reads is not None:
                return self._reads.get(path, params)
            return getattr(self._api(path.lstrip("/")), method.lower())(**params)
        except ResourceException as exc:
            message = str(exc.content or exc.status_message)
            if exc.errors:
                message += " - " + "; ".join(f"{k}: {v}" for k, v in dict(exc.errors).items())
            # Retry what a later attempt can fix: locks, agents still booting, proxies and gateways.
            # A plain 500 ("already exists", "clone failed") is PVE's final answer.
            transient = exc.status_code in (502, 503, 504, 595, 596) or (
                exc.status_code >= 500 and bool(TRANSIENT.search(message))
            )
            raise ProxmoxError(
                mask(f"{method} {path}: {exc.status_code} {message}"), status=exc.status_code, transient=transient
            ) from None
        except (requests.exceptions.SSLError, urllib3.exceptions.SSLError) as exc:
            raise ProxmoxError(
                f"{self._where}: TLS certificate not trusted ({_tls_reason(exc)}); set proxmox.ca_bundle to the CA "
                "that signed it (on Proxmox: /etc/pve/pve-root-ca.pem)"
            ) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, *_READ_LOST) as exc:
            raise ConnectionLost(
                f"cannot reach {self._where} ({_connection_reason(exc)}) for {method} {path}"
            ) from None
        except AuthenticationError as exc:
            raise ProxmoxError(mask(f"{self._where}: login refused: {exc}"), status=401) from None


# What a read through urllib3 raises when the connection fails (requests wraps the same as ConnectionError).
_READ_LOST = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_SEND, _ADAPTER = requests.Session.send, requests.adapters.HTTPAdapter  # requests as installed, not patched


class _Reads:
    """GETs with an API token straight through urllib3: the same request proxmoxer and requests send (URL,
    query, token header, TLS verification, kept-alive connections), at about half the client CPU per call,
    which is most of a many-VM plan's time. Writes, uploads and ticket logins stay with proxmoxer."""

    def __init__(
        self, pool: urllib3.HTTPSConnectionPool, base: str, headers: dict[str, str], context: ssl.SSLContext
    ) -> None:
        self._pool = pool
        self._base = base
        self._headers = headers
        self._context = context

    @classmethod
    def for_token(
        cls, api: Any, host: str, port: int, verify: bool | str, timeout: float, connections: int
    ) -> _Reads | None:
        """Reads for ``api`` (a token-authenticated ProxmoxAPI); None if it goes through a proxy or its session
        is not the one this module set up (then every call goes through proxmoxer)."""
        store = getattr(api, "_store", {})
        session, auth = store.get("session"), getattr(store.get("session"), "auth", None)
        if not isinstance(session, requests.Session) or session.proxies or auth is None:
            return None
        if type(session).send is not _SEND or type(session.get_adapter(f"https://{host}:{port}/")) is not _ADAPTER:
            return None  # something else sends this session's requests (a test's mock): leave them to it
        probe = requests.Request("GET", "https://x/").prepare()
        headers = {k: v for k, v in auth(probe).headers.items() if k == "Authorization"}
        headers.update({"Accept": str(session.headers.get("accept", "application/json")), "Connection": "keep-alive"})
        if "Authorization" not in headers:
            return None
        # One trust for both ways of reading: the pool's single reads and the many-at-once reads (manyreads.py)
        context = _trust(verify)
        pool = urllib3.HTTPSConnectionPool(
            host,
            port,
            maxsize=max(connections, POOL_SIZE),
            block=False,
            timeout=timeout,
            retries=False,
            ssl_context=context,
            cert_reqs=context.verify_mode,
        )
        return cls(pool, "/api2/json/", headers, context)

    def _url(self, path: str, params: dict[str, Any] | None = None) -> str:
        url = self._base + path.lstrip("/")
        if params:
            url += "?" + urlencode(params, doseq=True)
        return str(requote_uri(url))

    def get_many(self, paths: Sequence[str], connections: int) -> list[Any]:
        """For each path, the data of its answer or NOT_ANSWERED (see manyreads)."""
        host, port = self._pool.host, self._pool.port or DEFAULT_PORT
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": netloc, **self._headers}.items())
        timeout = self._pool.timeout.read_timeout if isinstance(self._pool.timeout, urllib3.Timeout) else None
        return read_many((host, port), self._context, head, [self._url(p) for p in paths], connections, timeout or 30.0)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        url = self._url(path, params)
        response = self._pool.urlopen("GET", url, headers=self._headers, preload_content=True)
        body = response.data
        if response.status >= 400:  # as proxmoxer reports it: PVE's message is the HTTP reason
            try:
                errors = json.loads(body).get("errors")
            except (UnicodeDecodeError, ValueError, AttributeError):
                errors = {"errors": body}
            status = response.status
            raise ResourceException(status, responses.get(status, ""), response.reason, errors=errors)
        try:
            return json.loads(body.decode("utf-8"))["data"]
        except (UnicodeDecodeError, ValueError):
            return {"errors": body}


def _keep_connections(api: Any) -> None:
    """Keep a connection per parallel chain: requests keeps 10 per host, so with more threads every further call
    paid a new TLS handshake (proxmoxer keeps its one session in ``_store``; without it, nothing changes)."""
    session = getattr(api, "_store", {}).get("session")
    if isinstance(session, requests.Session):
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        session.mount("https://", adapter)


def _trust(verify: bool | str) -> ssl.SSLContext:
    """What requests trusts for ``verify``: its CA bundle (True), a bundle file or directory, or nothing (False,
    where the certificate and its host name go unchecked)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context
    bundle = requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else str(verify)
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _short(exc: Exception) -> str:
    text = mask(str(exc))
    return text if len(text) < 200 else text[:200] + "..."


def _tls_reason(exc: Exception) -> str:
    text = str(exc)
    for reason in (
        "certificate verify failed: self-signed certificate",
        "certificate verify failed",
        "hostname mismatch",
        "certificate has expired",
    ):
        if reason in text:
            return reason
    return _short(exc)


def _connection_reason(exc: Exception) -> str:
    """The part of a requests connection error a person can act on."""
    text = str(exc)
    for needle, reason in (
        ("Connection refused", "connection refused: is the address and port right?"),
        ("Name or service not known", "host name not found"),
        ("Temporary failure in name resolution", "host name not found"),
        ("No route to host", "no route to host"),
        ("timed out", "timed out"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return _short(exc)
