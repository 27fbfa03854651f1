"""The device checks a gateway runs: HTTP GET or TCP connect, always with a timeout.

httpx is imported by the first HTTP check, not with the module: the code location loads this
module for every run, and a TCP-only gateway never needs it (tests/core/test_import_cost.py).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _shared_client() -> httpx.Client:
    """One pooled client per process: a new client per check would build a TLS context and a
    connection every time, which dominates a fast device's check."""
    global _client
    import httpx

    with _client_lock:
        if _client is None:
            _client = httpx.Client(follow_redirects=False, limits=httpx.Limits(max_connections=64))
        return _client


def http_check(address: str, timeout: float) -> tuple[str, dict]:
    """GET ``address``; a response below 400 means up. Redirects are not followed: a device that
    answers at all with a non-error status is reachable, which is what polling measures."""
    import httpx

    started = time.perf_counter()
    try:
        response = _shared_client().get(address, timeout=timeout)
    except httpx.HTTPError as exc:
        return "down", {"error": f"{type(exc).__name__}: {exc}"[:300], **_elapsed(started)}
    status = "up" if response.status_code < 400 else "down"
    return status, {"http_status": response.status_code, **_elapsed(started)}


def tcp_check(address: str, timeout: float) -> tuple[str, dict]:
    """Connect to ``host:port`` (``[v6]:port`` too) and close."""
    started = time.perf_counter()
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        return "down", {"error": f"{type(exc).__name__}: {exc}"[:300], **_elapsed(started)}
    return "up", _elapsed(started)


def run_check(kind: str, address: str, timeout: float) -> tuple[str, dict]:
    if kind == "http":
        return http_check(address, timeout)
    if kind == "tcp":
        return tcp_check(address, timeout)
    return "down", {"error": f"unknown check kind {kind!r}"}


def _elapsed(started: float) -> dict:
    return {"elapsed_ms": round((time.perf_counter() - started) * 1000, 1)}
