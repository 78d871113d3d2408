"""Many GETs at once from one thread: a few kept-alive HTTPS connections, one request in flight on each, driven by
a selector.

A plan reads one config per VM. Through a pool of threads, each read cost the client about as much CPU as the
server spends answering it (most of it thread hand-offs and the HTTP stack), which on a small machine was most
of a many-VM plan's time. Here a read costs a request line, a header parse and the JSON decode.

Only the plain case is handled: a 2xx answer with a Content-Length. Anything else (an error status, a chunked
or unreadable body, a connection that fails, the deadline) leaves that read NOT_ANSWERED, and the caller reads
it the ordinary way, which reports errors and retries exactly as every other call does.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from homelab.adapters.proxmox.api import NOT_ANSWERED

_HEAD_MAX = 64 * 1024  # an answer's status line and headers; PVE's are a few hundred bytes


class _Conn:
    """One connection: its socket, what it still has to send, what it has read, and the read it carries."""

    __slots__ = ("buf", "index", "out", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | ssl.SSLSocket = sock
        self.state = "connect"
        self.out = b""
        self.buf = b""
        self.index = -1


def read_many(
    address: tuple[str, int],
    context: ssl.SSLContext,
    head: str,
    targets: Sequence[str],
    connections: int,
    timeout: float,
) -> list[Any]:
    """For each target (path and query), the ``data`` of its 2xx answer or NOT_ANSWERED. ``head``: the request
    headers after the request line (Host, Authorization, Accept), each ending in CRLF."""
    host, port = address
    answers: list[Any] = [NOT_ANSWERED] * len(targets)
    todo = list(range(len(targets) - 1, -1, -1))  # popped from the end: first target first
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return answers
    family, _, _, _, sockaddr = infos[0]

    def open_one() -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex(sockaddr)
        conn = _Conn(sock)
        selector.register(sock, selectors.EVENT_WRITE, conn)

    def close(conn: _Conn) -> None:
        if conn.state != "closed":
            conn.state = "closed"
            selector.unregister(conn.sock)
            conn.sock.close()

    def next_read(conn: _Conn) -> None:
        if not todo:
            close(conn)
            return
        conn.index = todo.pop()
        conn.out = f"GET {targets[conn.index]} HTTP/1.1\r\n{head}\r\n".encode()
        conn.buf = b""
        conn.state = "send"
        send(conn)

    def handshake(conn: _Conn) -> None:
        try:
            conn.sock.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        next_read(conn)

    def send(conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            sent = 0
        conn.out = conn.out[sent:]
        if conn.out:
            selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            conn.state = "receive"
            selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def receive(conn: _Conn) -> None:
        sock = conn.sock
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed by the server")
                conn.buf += chunk
                if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        answer = _complete(conn.buf)
        if answer is None:
            if len(conn.buf) > _HEAD_MAX and b"\r\n\r\n" not in conn.buf:
                raise ValueError("answer headers too long")
            return
        status, keep_alive, body = answer
        if 200 <= status < 300:
            try:
                answers[conn.index] = json.loads(body.decode("utf-8"))["data"]
            except (UnicodeDecodeError, ValueError, KeyError, TypeError):
                pass  # read again the ordinary way, which says what is wrong
        conn.index = -1
        if keep_alive:
            next_read(conn)
        else:
            close(conn)
            if todo:
                open_one()

    for _ in range(min(connections, len(targets))):
        try:
            open_one()
        except OSError:
            break
    try:
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                conn = key.data
                try:
                    if conn.state == "connect":
                        error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if error:
                            raise OSError(error, "connect failed")
                        selector.unregister(conn.sock)
                        conn.sock = context.wrap_socket(conn.sock, server_hostname=host, do_handshake_on_connect=False)
                        selector.register(conn.sock, selectors.EVENT_WRITE, conn)
                        conn.state = "handshake"
                        handshake(conn)
                    elif conn.state == "handshake":
                        handshake(conn)
                    elif conn.state == "send":
                        send(conn)
                    else:
                        receive(conn)
                except (OSError, ValueError):  # ssl.SSLError is an OSError: a refused certificate, a reset
                    close(conn)  # its read, if any, stays NOT_ANSWERED; the others go on
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return answers


def _complete(buf: bytes) -> tuple[int, bool, bytes] | None:
    """(status, whether the connection stays open, body) once ``buf`` holds a whole answer; None before.
    ValueError for an answer this reader does not take (no Content-Length, chunked, garbled)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest[:3])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers or "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("an answer without a Content-Length")
    length = int(headers["content-length"])
    body = buf[end + 4 :]
    if len(body) < length:
        return None
    if len(body) > length:
        raise ValueError("more than the answer")  # one request in flight: nothing may follow it
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return status, keep_alive, body
