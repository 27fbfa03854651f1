"""How the outbox's notifications are POSTed: ``concurrency`` threads, a kept-alive connection each.

Delivery (``resources.notifier``) hands a sender a claimed batch of ``(key, payload)`` rows; the
sender POSTs them ``concurrency`` at once, each with ``Idempotency-Key: <key>``, and returns one
error text per row (None: answered 2xx).

Two senders, one contract. The default is :class:`HttpClientSender`, over the standard library's
``http.client``: delivery is bound by the CPU one Python process spends per POST (the GIL), and
side by side on this project's 2-CPU machines a notification cost the worker process 2.5-3x the CPU
through httpx (1,190-1,260 µs end to end) that it costs through ``http.client`` (396-505 µs):
761-848 against 1,944-2,206 delivered/s, the issue's target being 2,000/s
(``bench/triggers_bench.py --only e2e --e2e-senders default,httpx``; docs/triggers.md). A webhook
POST needs nothing httpx adds except proxy support, so when the environment names a proxy for the
webhook's host (``HTTPS_PROXY`` / ``HTTP_PROXY``, not bypassed by ``NO_PROXY``) delivery uses
:class:`HttpxSender`, which honours it as every other client of this project does.

Neither follows redirects (a receiver that redirects gets the 3xx counted as a failure, as
before). Error texts never hold the webhook URL or its path (a Slack-style URL carries a token
in its path).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from resources.http_api import REDACTED, redact_then_truncate

if TYPE_CHECKING:
    import httpx

ERROR_TEXT = 200  # characters of a receiver's answer kept in ``last_error``
ANSWER_BYTES = 64 * 1024  # of a receiver's answer read; a longer one closes the connection

Wait = Callable[[], list[str | None]]


class Sender(Protocol):
    """POSTs ``(key, payload)`` rows concurrently. ``start`` queues them and returns a function
    that waits for them: one error text per row, in order (None: answered 2xx)."""

    def start(self, rows: Sequence[tuple[str, Any]]) -> Wait: ...

    def close(self) -> None: ...


def webhook_url_problem(url: str, setting: str) -> str | None:
    """Why ``url`` cannot be a webhook URL (one line naming ``setting`` and the fix), or None.

    Only the scheme is quoted: the rest of a webhook URL may be a secret."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return f"{setting} is not a valid URL (value not shown): set an http:// or https:// URL"
    if parts.scheme not in ("http", "https"):
        shown = f"scheme {parts.scheme!r:.20}" if parts.scheme else "no scheme"
        return (
            f"{setting} has {shown} (value not shown): set an http:// or https:// URL, or unset "
            "it to only log notifications"
        )
    if not parts.hostname:
        return f"{setting} has no host (value not shown): set an http:// or https:// URL with one"
    if any(c in url for c in "\r\n\t ") or any(ord(c) < 32 or ord(c) == 127 for c in url):
        return f"{setting} holds whitespace or control characters (value not shown): remove them"
    return None


def _secrets(url: str) -> list[str]:
    """Every part of ``url`` a receiver's answer might echo that could be a secret, in the forms
    it might echo them: the URL, its path and query, each path segment and query value of 6+
    characters, the user and password; each also percent-decoded, percent-encoded and with ``/``
    JSON-escaped (``\\/``). Matched case-insensitively (:func:`_scrub`)."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    found = {url, parts.path + query, parts.query}
    if len(parts.path) > 1:
        found.add(parts.path)
    found |= {seg for seg in parts.path.split("/") if len(seg) >= 6}
    for pair in parts.query.split("&"):
        value = pair.partition("=")[2]
        if len(value) >= 6:
            found.add(value)
    found |= {v for v in (parts.username, parts.password) if v}
    forms = set()
    for secret in filter(None, found):
        for form in (secret, unquote(secret), quote(secret, safe="")):
            forms |= {form, form.replace("/", "\\/")}
    return sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret form replaced, whatever its case; then cut (and a secret cut
    in two masked) by the project's ``redact_then_truncate``."""
    if secrets:
        pattern = re.compile("|".join(re.escape(s) for s in secrets), re.IGNORECASE)
        text = pattern.sub(REDACTED, text)
    return redact_then_truncate(text, secrets, ERROR_TEXT)


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to this URL through a proxy, as httpx would
    (``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``, unless ``NO_PROXY`` names the host)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class _Threads:
    """``concurrency`` threads, each keeping its own connection (made by ``connect``)."""

    def __init__(self, url: str, concurrency: int) -> None:
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="outbox-post")
        self._local = threading.local()
        self._made: list[Any] = []
        self._lock = threading.Lock()
        self._secrets = _secrets(url)

    def error_text(self, text: str) -> str:
        """What may be stored and logged of an error: the URL, its path and password never."""
        return _scrub(text, self._secrets)

    def _own(self, make: Callable[[], Any]) -> Any:
        made = getattr(self._local, "conn", None)
        if made is None:
            made = self._local.conn = make()
            with self._lock:
                self._made.append(made)
        return made

    def _drop(self) -> None:
        made = getattr(self._local, "conn", None)
        self._local.conn = None
        if made is not None:
            made.close()

    def post_one(self, key: str, payload: Any) -> str | None:
        raise NotImplementedError

    def start(self, rows: Sequence[tuple[str, Any]]) -> Wait:
        futures = [self._pool.submit(self.post_one, key, payload) for key, payload in rows]
        return lambda: [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for made in self._made:
                made.close()


def _tls_context() -> ssl.SSLContext:
    """The same trust as every other client of the project: httpx's context (certifi's bundle,
    or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set), certificate and host name verified."""
    import httpx

    return httpx.create_ssl_context()


# A kept-alive connection the receiver closed meanwhile: the request never reached it, so one
# fresh try is safe. A timeout is not among them: the receiver may be working on it.
STALE_CONNECTION = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class HttpClientSender(_Threads):
    """The default: ``http.client`` (standard library), one kept-alive connection per thread."""

    def __init__(self, url: str, timeout_seconds: float, concurrency: int) -> None:
        super().__init__(url, concurrency)
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout_seconds
        self._context = _tls_context() if self._https else None
        self._headers = {"Content-Type": "application/json", "User-Agent": "platform-ops"}
        if parts.username is not None:  # user:password@host, as httpx sends it: Basic auth
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def post_one(self, key: str, payload: Any) -> str | None:
        body = json.dumps(payload).encode()
        headers = {**self._headers, "Idempotency-Key": key}
        error = ""
        # A kept-alive connection the receiver closed meanwhile fails at once: one fresh try (a
        # repeat it may cause carries the same Idempotency-Key).
        for fresh in (False, True):
            reused = getattr(self._local, "conn", None) is not None
            conn = self._own(self._connect)
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                resp = conn.getresponse()
                answer = resp.read(ANSWER_BYTES)
                # An answer longer than we read, or the receiver closes: do not reuse it.
                if not resp.isclosed() or resp.will_close:
                    self._drop()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                error = self.error_text(f"{type(exc).__name__}: {exc}")
                if reused and not fresh and isinstance(exc, STALE_CONNECTION):
                    continue
                return error
            if resp.status >= 300:
                text = answer.decode("utf-8", "replace")
                return f"HTTP {resp.status}: {self.error_text(text)}"
            return None
        return error


class HttpxSender(_Threads):
    """httpx, one ``httpx.Client`` per thread (one kept-alive connection each): used when a proxy
    applies to the webhook URL. One shared client's pool cost more per POST under threads (its
    lock and connection search) than a client per thread."""

    def __init__(self, url: str, timeout_seconds: float, concurrency: int) -> None:
        import httpx

        super().__init__(url, concurrency)
        self.url = httpx.URL(url)  # parsed once, not on every POST
        self._timeout = timeout_seconds

    def _client(self) -> httpx.Client:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        return self._own(lambda: httpx.Client(timeout=self._timeout, limits=limits))

    def post_one(self, key: str, payload: Any) -> str | None:
        import httpx

        try:
            resp = self._client().post(self.url, json=payload, headers={"Idempotency-Key": key})
        except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is no HTTPError
            return self.error_text(f"{type(exc).__name__}: {exc}")
        if resp.status_code >= 300:
            return f"HTTP {resp.status_code}: {self.error_text(resp.text)}"
        return None


def make_sender(url: str, timeout_seconds: float, concurrency: int) -> Sender:
    """The sender for ``url``: ``http.client``, or httpx when a proxy applies (module docstring)."""
    kind = HttpxSender if _proxied(url) else HttpClientSender
    return kind(url, timeout_seconds, concurrency)
