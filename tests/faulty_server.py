"""A tiny HTTP/1.1 server on 127.0.0.1 that answers with scripted faults the sandbox cannot make.

The sandbox injects statuses and delays; the HTTP client's hardening tests also need a server that
trickles bytes (status line included), sends hundreds of megabytes without holding them, or lies
about its body. Each route is a function that writes raw bytes to the socket, so any fault is a
few lines. Every response closes the connection (no keep-alive state to reason about).
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

Writer = Callable[[BinaryIO], None]


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FaultyServer:
    """Routes by path (query ignored); ``hits`` records every request received."""

    routes: dict[str, Writer] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)

    def __enter__(self) -> FaultyServer:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request_line = self.rfile.readline().decode("latin-1").split()
                if len(request_line) < 2:
                    return
                headers: dict[str, str] = {}
                while (line := self.rfile.readline().decode("latin-1").strip()) != "":
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.rfile.read(int(headers.get("content-length", "0") or 0))
                path = request_line[1].split("?", 1)[0]
                owner.hits.append(Hit(request_line[0], path, headers))
                writer = owner.routes.get(path, respond(404, b'{"detail": "no such route"}'))
                try:
                    writer(self.wfile)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what the caps and the deadline are for

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Writer:
    """A plain, complete response."""
    head = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}

    def write(out: BinaryIO) -> None:
        out.write(_head(status, head) + body)

    return write


def trickle(
    status: int, body: bytes, *, interval: float, head_too: bool = False, limit_s: float = 60.0
) -> Writer:
    """One byte per ``interval`` seconds, of the body or (``head_too``) of the whole response.

    Each byte arrives well within any per-read timeout, so only an overall deadline ends it.
    """
    head = _head(status, {"Content-Type": "application/json", "Content-Length": str(len(body))})

    def write(out: BinaryIO) -> None:
        slow = head + body if head_too else body
        if not head_too:
            out.write(head)
        stop = time.monotonic() + limit_s
        for i in range(len(slow)):
            if time.monotonic() > stop:
                return
            out.write(slow[i : i + 1])
            out.flush()
            time.sleep(interval)

    return write


def flood(status: int, total_bytes: int, *, declare_length: bool = True) -> Writer:
    """``total_bytes`` of body from one reused 1 MiB buffer (the server itself holds ~1 MiB)."""
    chunk = b"x" * (1024 * 1024)
    headers = {"Content-Type": "application/json"}
    if declare_length:
        headers["Content-Length"] = str(total_bytes)

    def write(out: BinaryIO) -> None:
        out.write(_head(status, headers))
        for piece in _pieces(total_bytes, chunk):
            out.write(piece)

    return write


def _pieces(total: int, chunk: bytes) -> Iterator[bytes]:
    while total > 0:
        piece = chunk if total >= len(chunk) else chunk[:total]
        total -= len(piece)
        yield piece
