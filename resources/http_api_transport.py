"""The httpx pieces of ``http_api``: sockets clipped to the call's deadline, the checked response.

Separate from ``http_api`` because they subclass httpx/httpcore classes at definition time, so
importing them imports httpx (~60 ms, ~6 MB); ``http_api`` imports this module when a client is
made or a response is kept, not when the code location loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from resources.http_api import _within_deadline


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write ends by the call's deadline.

    httpx's timeouts are per socket operation: a server sending one byte per second never trips
    a 3 s read timeout. Clipping each operation to the remaining deadline bounds the whole call,
    the status line and headers included (which no body loop could watch).
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _within_deadline(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sync backend, with :class:`_DeadlineStream` sockets."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_tcp(
                host,
                port,
                _within_deadline(timeout, httpcore.ConnectTimeout),
                local_address,
                socket_options,
            )
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_unix_socket(
                path, _within_deadline(timeout, httpcore.ConnectTimeout), socket_options
            )
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def deadline_transport() -> httpx.HTTPTransport:
    """httpx's default transport over :class:`_DeadlineBackend`.

    httpx has no public hook for a network backend; its transport keeps the httpcore pool in
    ``_pool``. Should that change, the header-trickling test in
    tests/release/test_http_hardening.py fails (nothing else can bound a trickled status line).
    """
    # One SSL context for both (loading the CA bundle takes ~20 ms each): the transport's own
    # pool, which is replaced, would otherwise build one that is never used.
    ssl_context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context, network_backend=_DeadlineBackend()
    )
    return transport


class CheckedResponse(httpx.Response):
    """A response read whole within the caps, whose ``json()`` fails as an :class:`ApiError`.

    Callers that take the response from :meth:`ApiClient.request` and call ``.json()`` get the
    same checked decoding as :meth:`ApiClient.request_json`.
    """

    def __init__(self, *, decoder: Callable[[httpx.Response], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decoder = decoder

    def json(self, **kwargs: Any) -> Any:
        return self._decoder(self)
