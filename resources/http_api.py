"""The one HTTP calling convention both platform services share.

Retries follow PLATFORM_API.md: connect errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and jitter (honouring ``Retry-After``); every other 4xx is final at once. A
POST carries one ``Idempotency-Key`` for all its attempts, so a retry after a lost response is a
no-op on the server. Errors carry method, path, status and the server's detail, never a header:
secrets live only in the ``httpx.Client`` headers and are scrubbed from anything we raise or log.

Every call is bounded (README, "HTTP behaviour"): one deadline covers connect, send, read, every
attempt and every sleep; a success body is read up to ``max_body_bytes`` and an error body up to
``max_error_body_bytes``, streamed, so a hostile or broken server can hold neither the step's time
nor its memory. A 2xx body that is not JSON is a final :class:`ApiResponseError`.

httpx (with httpcore and h11: ~60 ms and ~6 MB) is imported when a client is made, with the
transport pieces that subclass it (``http_api_transport``): every run loads this module through
the code location, and most runs never call a platform (tests/core/test_import_cost.py).
"""

from __future__ import annotations

import contextvars
import email.utils
import html
import json as jsonlib
import logging
import re
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg
import tenacity

from resources import tracing
from resources.environments import header_value_problem

if TYPE_CHECKING:
    import httpx

    from resources.http_api_transport import CheckedResponse

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})
REDACTED = "[REDACTED]"
# What a server's text may contribute to an error or log line, after scrubbing.
DETAIL_LIMIT = 500
EXCERPT_LIMIT = 200
MAX_BODY_BYTES = 8 * 1024 * 1024  # a success (JSON) body
MAX_ERROR_BODY_BYTES = 64 * 1024  # what is read of an error body for its detail
MAX_DEFAULT_DEADLINE_SECONDS = 600.0
# The one content-coding layer we decode ourselves (see _BodyDecoder); we ask for nothing else.
ACCEPT_ENCODING = "gzip, deflate"
# Input fed to zlib per step: with max_length, output per step is bounded too.
_DECODE_STEP = 64 * 1024


class ApiError(dg.Failure):
    """A call that failed for good. A ``dagster.Failure`` so the UI shows the message plainly."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        method: str,
        path: str,
        status: int | None = None,
        detail: str | None = None,
        attempts: int = 1,
        allow_retries: bool = True,
    ) -> None:
        super().__init__(
            allow_retries=allow_retries,
            description=message,
            metadata={
                "service": service,
                "call": f"{method} {path}",
                "status": status if status is not None else "no response",
                "attempts": attempts,
            },
        )
        self.message = message
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        self.attempts = attempts

    def __str__(self) -> str:
        return self.message


class ApiAuthError(ApiError):
    """401/403: the key was refused. Never retried: another attempt cannot fix a wrong key."""


class ApiDeadlineError(ApiError):
    """The call's overall deadline passed (all attempts and sleeps included)."""


class ApiResponseError(ApiError):
    """A response we refuse to use: a 2xx body that is not JSON, or a body over the size cap.

    Final (never retried, not even by a Dagster step retry): the server answered, so for a POST
    the effect may be done, and the same endpoint replays the same body for the same key.
    """


def is_transient(status: int | None) -> bool:
    """Whether a failure with this status (None: no response) may go away on its own."""
    return status is None or status in RETRYABLE_STATUS or status >= 500


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth another try."""

    def __init__(
        self, reason: str, status: int | None, detail: str | None, retry_after: float | None
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class _DeadlinePassed(Exception):
    """Internal: the call's deadline passed during an attempt (never retried)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try. Defaults suit an API call inside a Dagster step."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    # Retry-After above this is clamped: a step should not sleep for an hour on one header.
    max_retry_after_seconds: float = 60.0


def default_deadline_seconds(timeout_seconds: float, max_attempts: int) -> float:
    """One timeout per attempt, at most 10 minutes, never less than one timeout.

    Backoff sleeps come out of the same budget, so a call whose every attempt times out gets
    slightly fewer attempts rather than a longer hold on the step.
    """
    return max(timeout_seconds, min(timeout_seconds * max_attempts, MAX_DEFAULT_DEADLINE_SECONDS))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _secret_list(secrets: Iterable[str]) -> list[str]:
    # Longest first: a secret that contains another is replaced whole, not around the shorter one.
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` (servers sometimes echo what they were sent)."""
    for secret in _secret_list(secrets):
        text = text.replace(secret, REDACTED)
    return text


def mask_cut_secret(text: str, secrets: Iterable[str]) -> str:
    """Mask the end of a cut ``text`` when it is the start of a secret (or of ``REDACTED``).

    A cut can leave the first characters of a secret whose whole value was never in the kept
    text, so whole-value redaction cannot see them. Any such trailing prefix, even one character
    long, becomes ``REDACTED``: a character too many masked costs nothing, one too few leaks.
    """
    longest = 0
    for candidate in [*_secret_list(secrets), REDACTED]:
        for size in range(min(len(candidate) - 1, len(text)), longest, -1):
            if text.endswith(candidate[:size]):
                longest = size
                break
    return f"{text[: len(text) - longest]}{REDACTED}" if longest else text


# The escapes a server (or a library's repr) may put on a secret it echoes: JSON / Python string
# escapes (a UTF-16 surrogate pair first, so it becomes one character), then HTML character
# references, then percent-encoding.
_BACKSLASH_ESCAPE = re.compile(
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
    r"|\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})|((?:\\x[0-9a-fA-F]{2})+)|\\([\\/\"'bfnrt])"
)
_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PERCENT_RUN = re.compile(r"(?:%[0-9a-fA-F]{2})+")
# An escape the cut of a body left unfinished at its end ("\u00", "%4", "&#x5", a lone high
# surrogate): dropped before a trailing partial secret is looked for.
_CUT_ESCAPE = re.compile(
    r"(?:\\(?:u[dD][89abAB][0-9a-fA-F]{2}(?:\\u?[0-9a-fA-F]{0,3})?|u[0-9a-fA-F]{0,3}"
    r"|U[0-9a-fA-F]{0,7}|x[0-9a-fA-F]?)?|%[0-9a-fA-F]?|&#?[xX]?[0-9a-zA-Z]{0,10})$"
)
_UNESCAPE_ROUNDS = 3


def _backslash_unescape(match: re.Match[str]) -> str:
    high, low, u4, u8, x2, simple = match.groups()
    if high:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
    if x2:  # a bytes repr: a run of \\xNN is UTF-8 when it decodes, else one byte a character
        raw = bytes(int(x2[i + 2 : i + 4], 16) for i in range(0, len(x2), 4))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    code = u4 or u8
    if code:
        value = int(code, 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    return _SIMPLE_ESCAPES.get(simple, simple)


def unescape(text: str) -> str:
    """``text`` with the escapes a server may apply undone (one layer of each kind).

    JSON and Python string escapes (``\\/``, ``\\uXXXX`` with surrogate pairs, ``\\xNN``,
    ``\\n``...), HTML character references (``&#x51;``, ``&amp;``) and percent-encoding (UTF-8).
    Whole-value redaction only matches a secret's real characters; an echoed secret with any
    subset of its characters escaped would otherwise be shown whole.
    """
    text = _BACKSLASH_ESCAPE.sub(_backslash_unescape, text)
    if "&" in text:
        text = html.unescape(text)
    if "%" in text:
        text = _PERCENT_RUN.sub(lambda m: urllib.parse.unquote(m.group(0), errors="replace"), text)
    return text


def _with_unescaped(secrets: Iterable[str]) -> list[str]:
    """The secrets and what :func:`unescape` makes of them: a secret holding ``%41`` or ``&amp``
    literally is changed by the unescape step, and must still be found afterwards."""
    found = set(_secret_list(secrets))
    for secret in list(found):
        for _ in range(_UNESCAPE_ROUNDS):
            secret = unescape(secret)
            found.add(secret)
    return _secret_list(found)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Raw server (or library) text with every secret replaced, escaped forms included.

    Redacts, undoes one layer of escapes (:func:`unescape`), redacts again, a few rounds until
    nothing changes: a secret escaped twice is found too. The result is the unescaped text: what
    is shown no longer depends on which characters the server chose to escape.
    """
    secrets = _with_unescaped(secrets)
    text = redact(text, secrets)
    for _ in range(_UNESCAPE_ROUNDS):
        plain = redact(unescape(text), secrets)
        if plain == text:
            break
        text = plain
    return text


def scrub_cut(text: str, secrets: Iterable[str]) -> str:
    """:func:`scrub` for a text cut at its end: an unfinished escape there is dropped, then a
    trailing partial secret is masked (:func:`mask_cut_secret`)."""
    secrets = _with_unescaped(secrets)
    text = _CUT_ESCAPE.sub("", text.rstrip("\ufffd"))
    # A cut inside a multi-byte character (raw or percent-encoded) leaves U+FFFD at the end.
    # Unescaping can itself end the text with an unfinished escape ("&#x25;" is "%"): again.
    text = _CUT_ESCAPE.sub("", scrub(text, secrets).rstrip("\ufffd")).rstrip("\ufffd")
    return mask_cut_secret(text, secrets)


def redact_then_truncate(text: str, secrets: Iterable[str], limit: int = DETAIL_LIMIT) -> str:
    """What may be shown of a server's text: scrubbed whole, then cut to ``limit`` characters.

    Order matters: cutting first can split a secret so that redaction no longer matches it and
    its first characters survive. Secrets of every length are replaced whole; after a cut, a
    trailing partial secret is masked too (:func:`mask_cut_secret`).
    """
    secrets = _secret_list(secrets)
    text = redact(text, secrets)
    if len(text) <= limit:
        return text
    return f"{mask_cut_secret(text[:limit], secrets)}… [{len(text) - limit} more characters]"


def _redact_json(value: Any, secrets: list[str]) -> Any:
    """Scrub every string (keys too) of a parsed JSON value, before it is serialised again.

    Serialising first would escape a secret's quotes or backslashes so it no longer matches.
    """
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, list):
        return [_redact_json(v, secrets) for v in value]
    if isinstance(value, dict):
        return {scrub(str(k), secrets): _redact_json(v, secrets) for k, v in value.items()}
    return value


def detail_of(body: bytes, secrets: Iterable[str], *, cut: bool = False) -> str:
    """The server's explanation from an error body: ``detail``/``message``/``error`` or all of it.

    Scrubbed, then cut to ``DETAIL_LIMIT``. ``cut`` says the body was itself cut by the read cap,
    so its end may hold a partial secret. Raw text (cut, or not JSON) is unescaped before it is
    scrubbed (:func:`scrub`): a server may echo a key with ``\\/``, ``\\u0051``, ``%2F``...
    """
    secrets = _secret_list(secrets)
    text = body.decode("utf-8", errors="replace")
    if cut:
        return redact_then_truncate(scrub_cut(text, secrets), secrets, DETAIL_LIMIT)
    try:
        parsed = jsonlib.loads(text)
    except ValueError:
        return redact_then_truncate(scrub(text, secrets), secrets, DETAIL_LIMIT)
    parsed = _redact_json(parsed, secrets)
    if isinstance(parsed, dict):
        for key in ("detail", "message", "error"):
            if key in parsed:
                parsed = parsed[key]
                break
    if not isinstance(parsed, str):
        parsed = jsonlib.dumps(parsed, ensure_ascii=False)
    return redact_then_truncate(parsed, secrets, DETAIL_LIMIT)


# The deadline of the call running on this thread; read by the network streams below.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "http_api_deadline", default=None
)


def _within_deadline(timeout: float | None, exc_type: type[Exception]) -> float | None:
    """Shrink one socket operation's timeout to what is left of the call's deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise exc_type("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


# Content-codings named in a message; any other header text is the server's and is not echoed
# (it could carry anything, and it was lowercased, which no scrub would recognise).
_KNOWN_CODINGS = frozenset(
    {"gzip", "x-gzip", "deflate", "br", "compress", "x-compress", "zstd", "exi", "aes128gcm"}
)


def _codings_named(codings: list[str]) -> str:
    return ", ".join(c if c in _KNOWN_CODINGS else "<unknown coding>" for c in codings[:5]) + (
        ", …" if len(codings) > 5 else ""
    )


class _EncodingRefused(Exception):
    """Internal: a body whose content-coding we do not decode (or that does not decode)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BodyDecoder:
    """Decodes the raw body of one response with a bound on what each step may produce.

    httpx decodes a whole network read at once and stacks one decoder per listed coding, so a
    2 KB ``gzip, gzip`` body inflates to gigabytes before any cap can count it. Here at most one
    coding (``gzip`` / ``deflate``; ``identity`` is none) is accepted, and zlib's ``max_length``
    keeps every step within what is left of the cap: memory stays bounded by the cap whatever
    the compression ratio. More than one coding, or any other, is refused unread.
    """

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise _EncodingRefused(
                f"Content-Encoding stacks {len(codings)} codings ({_codings_named(codings)}); "
                "only one of gzip or deflate is accepted"
            )
        self._coding = codings[0] if codings else ""
        if self._coding not in ("", "gzip", "x-gzip", "deflate"):
            raise _EncodingRefused(
                f"Content-Encoding {_codings_named([self._coding])} is not accepted (only gzip or "
                "deflate)"
            )
        self._zlib: Any = None
        if self._coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        self._pending = b""

    def feed(self, raw: bytes, room: int) -> bytes:
        """Decoded bytes of ``raw``: at most ``room`` + 1 (one more says "over the cap")."""
        if not self._coding:
            return raw[: room + 1]
        if self._zlib is None:  # deflate: a zlib stream, or (some servers) raw deflate
            self._pending += raw
            if len(self._pending) < 2:
                return b""
            head = self._pending[:2]
            zlib_wrapped = head[0] & 0x0F == 8 and int.from_bytes(head, "big") % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
            raw, self._pending = self._pending, b""
        out: list[bytes] = []
        size = 0
        data = raw
        try:
            while data and size <= room and not self._zlib.eof:
                piece = self._zlib.decompress(data[:_DECODE_STEP], room + 1 - size)
                data = self._zlib.unconsumed_tail + data[_DECODE_STEP:]
                out.append(piece)
                size += len(piece)
                if not piece and not self._zlib.unconsumed_tail and len(data) == 0:
                    break
        except zlib.error as exc:
            raise _EncodingRefused(f"its {self._coding} body does not decode ({exc})") from None
        return b"".join(out)

    def finish(self) -> None:
        """Refuse a compressed body that ended before its compressed stream did."""
        if self._coding and self._zlib is not None and not self._zlib.eof:
            raise _EncodingRefused(f"its {self._coding} body ends before its compressed stream")
        if self._coding and self._zlib is None and self._pending:
            raise _EncodingRefused(f"its {self._coding} body is too short to decode")


class _WaitWithRetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with jitter, but never shorter than the server's ``Retry-After``."""

    def __init__(self, settings: RetrySettings) -> None:
        self._settings = settings
        self._backoff = tenacity.wait_exponential_jitter(
            initial=settings.initial_backoff_seconds,
            max=settings.max_backoff_seconds,
            jitter=settings.initial_backoff_seconds,
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self._backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._settings.max_retry_after_seconds))
        return delay


class _StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop instead of sleeping past the deadline (the sleep would only end in a timeout)."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return time.monotonic() + retry_state.upcoming_sleep >= self._deadline


RetryLog = Callable[[str], None]


class ApiClient:
    """A small httpx wrapper: base URL, auth headers, retries, idempotency keys, redaction.

    ``service`` names the remote in messages ("platform API (prod)"); ``secrets`` are the values to
    scrub from anything surfaced; ``on_retry`` receives a human line per retry (the run log).
    ``deadline_seconds`` bounds one logical call, all attempts and sleeps included (default:
    :func:`default_deadline_seconds`); ``max_body_bytes`` / ``max_error_body_bytes`` cap what is
    read of a success / error body.
    """

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        headers: Mapping[str, str],
        secrets: Iterable[str],
        timeout_seconds: float = 30.0,
        retry: RetrySettings | None = None,
        on_retry: RetryLog | None = None,
        auth_hint: str = "",
        transport: httpx.BaseTransport | None = None,
        trace_attributes: Mapping[str, str] | None = None,
        deadline_seconds: float | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_error_body_bytes: int = MAX_ERROR_BODY_BYTES,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._secrets = tuple(_secret_list(secrets))
        self._retry = retry or RetrySettings()
        self._on_retry = on_retry
        self._auth_hint = auth_hint
        self._trace_attributes = dict(trace_attributes or {})
        self._timeout_seconds = timeout_seconds
        if deadline_seconds is None:
            deadline_seconds = default_deadline_seconds(timeout_seconds, self._retry.max_attempts)
        for name, value in (
            ("deadline_seconds", deadline_seconds),
            ("max_body_bytes", max_body_bytes),
            ("max_error_body_bytes", max_error_body_bytes),
        ):
            if not value > 0:
                raise ValueError(f"{service}: {name} must be positive, got {value!r}")
        _check_secret_headers(service, headers, self._secrets)
        self.deadline_seconds = float(deadline_seconds)
        self.max_body_bytes = max_body_bytes
        self.max_error_body_bytes = max_error_body_bytes
        import httpx

        from resources.http_api_transport import deadline_transport

        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Accept-Encoding": ACCEPT_ENCODING, **dict(headers)},
            timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
            transport=transport if transport is not None else deadline_transport(),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets)

    def excerpt(self, text: str, limit: int) -> str:
        """``text`` (e.g. a value from a response) safe to show: every secret of this client
        scrubbed whole first, then cut to ``limit`` with a trailing partial secret masked."""
        return redact_then_truncate(scrub(text, self._secrets), self._secrets, limit)

    def _attempt_timeout(self, deadline: float) -> httpx.Timeout:
        """This attempt's timeouts, none past the deadline (for transports without our sockets)."""
        import httpx

        remaining = max(0.001, deadline - time.monotonic())
        timeout = min(self._timeout_seconds, remaining)
        return httpx.Timeout(timeout, connect=min(10.0, timeout))

    def _read_capped(
        self, response: httpx.Response, cap: int, deadline: float, describe: Callable[[], str]
    ) -> tuple[bytes, bool]:
        """Up to ``cap`` DECODED bytes of the body, streamed; ``True`` when there was more.

        The raw bytes are decoded here (:class:`_BodyDecoder`), never by httpx, so the cap bounds
        memory whatever the compression; a refused coding raises :class:`_EncodingRefused`. The
        clock is checked per chunk as well as per socket read (custom transports).
        """
        decoder = _BodyDecoder(response.headers.get("Content-Encoding", ""))
        chunks: list[bytes] = []
        size = 0
        for raw in response.iter_raw():  # as received: a chunk_size would buffer
            if time.monotonic() >= deadline:
                raise _DeadlinePassed(f"{describe()} while reading the body ({size} bytes read)")
            chunk = decoder.feed(raw, cap - size)
            if size + len(chunk) > cap:
                chunks.append(chunk[: cap - size])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        decoder.finish()
        return b"".join(chunks), False

    def _unusable(
        self, method: str, path: str, status: int, what: str, detail: str | None = None
    ) -> ApiResponseError:
        """The one final error for a response that answered but cannot be used (not retried:
        the same request gets the same answer)."""
        return ApiResponseError(
            f"{self.service}: {method} {path} returned HTTP {status} {what}",
            service=self.service,
            method=method,
            path=path,
            status=status,
            detail=detail,
            allow_retries=False,
        )

    def _too_large(self, method: str, path: str, status: int, what: str) -> ApiResponseError:
        return self._unusable(
            method,
            path,
            status,
            f"with a body {what}, over the {_size(self.max_body_bytes)} cap on a response body; "
            "not read and not retried (page the request smaller, or raise max_body_bytes if the "
            "size is expected).",
        )

    def decode_json(self, response: httpx.Response, method: str, path: str) -> Any:
        """The JSON of a successful response, or an :class:`ApiResponseError` naming the call.

        Not retried: a complete 2xx whose body is not JSON is a proxy or a wrong URL answering in
        place of the API (or a server bug), and the same request gets the same answer; for a POST
        the effect may already be applied. A body cut short by a dropped connection is a
        transport error instead, which is retried.
        """
        try:
            return jsonlib.loads(response.content)
        except ValueError:
            pass
        text = response.content.decode("utf-8", errors="replace")
        excerpt = redact_then_truncate(scrub(text, self._secrets), self._secrets, EXCERPT_LIMIT)
        # A header is server text too: scrubbed and cut like the body.
        content_type = self.excerpt(response.headers.get("Content-Type", "no Content-Type"), 80)
        raise self._unusable(
            method,
            path,
            response.status_code,
            f"but its body is not JSON ({content_type}, {len(response.content)} bytes, starting "
            f"{excerpt!r}); not retried. Check that the environment's API URL reaches the API "
            "itself, not a proxy or login page.",
            detail=excerpt,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        ok_statuses: Iterable[int] = (200, 201),
    ) -> CheckedResponse:
        """Send one logical call, retrying per the contract; return the successful response.

        The response is read whole (within ``max_body_bytes``) before it is returned; its
        ``json()`` is :meth:`decode_json`.
        """
        import httpx

        method = method.upper()
        headers = dict(extra_headers or {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or f"{uuid.uuid4()}"
        ok = frozenset(ok_statuses)
        deadline = time.monotonic() + self.deadline_seconds
        attempts = 0

        def past_deadline() -> str:
            return f"its {self.deadline_seconds:g}s deadline passed"

        def attempt() -> CheckedResponse:
            nonlocal attempts
            attempts += 1
            if time.monotonic() >= deadline:
                raise _DeadlinePassed(f"{past_deadline()} before attempt {attempts}")
            try:
                with self._client.stream(
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=self._attempt_timeout(deadline),
                ) as response:
                    status = response.status_code
                    if status in ok:
                        return self._read_ok(response, method, path, deadline, past_deadline)
                    try:
                        body, cut = self._read_capped(
                            response, self.max_error_body_bytes, deadline, past_deadline
                        )
                    except _EncodingRefused as exc:  # the status still decides
                        body, cut = f"(body not read: {exc.reason})".encode(), False
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
                # h11 and httpx quote values as bytes reprs (b'..\\n..'): scrub() unescapes them.
                text = redact_then_truncate(
                    scrub(str(exc) or type(exc).__name__, self._secrets), self._secrets
                )
                if time.monotonic() >= deadline:
                    raise _DeadlinePassed(f"{past_deadline()} ({kind}: {text})") from None
                raise _Retryable(f"{kind}: {text}", None, None, None) from None
            detail = detail_of(body, self._secrets, cut=cut)
            if is_transient(status):
                raise _Retryable(
                    f"HTTP {status}: {detail}",
                    status,
                    detail,
                    parse_retry_after(response.headers.get("Retry-After")),
                )
            self._raise_final(method, path, status, detail, attempts=attempts)
            raise AssertionError("unreachable")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = exc.reason if isinstance(exc, _Retryable) else repr(exc)
            wait = state.next_action.sleep if state.next_action else 0.0
            line = self._scrub(
                f"{self.service}: {method} {path} attempt {state.attempt_number}/"
                f"{self._retry.max_attempts} failed ({reason}); retrying in {wait:.1f}s"
            )
            logger.warning(line)
            if self._on_retry:
                self._on_retry(line)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._retry.max_attempts)
            | _StopBeforeDeadline(deadline),
            wait=_WaitWithRetryAfter(self._retry),
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        token = _DEADLINE.set(deadline)
        try:
            # One span per logical call (all its attempts); its traceparent rides every attempt.
            with tracing.span(
                f"{method} {path}",
                headers,
                **{
                    "http.request.method": method,
                    "url.path": path,
                    "peer.service": self.service,
                    **self._trace_attributes,
                },
            ):
                return retrying(attempt)
        except _Retryable as exc:
            if attempts >= self._retry.max_attempts:
                summary = f"failed after {attempts} attempts"
            else:
                summary = (
                    f"gave up after {attempts} attempt(s): the next one would start past its "
                    f"{self.deadline_seconds:g}s deadline"
                )
            raise ApiError(
                self._scrub(f"{self.service}: {method} {path} {summary}; last error: {exc.reason}"),
                service=self.service,
                method=method,
                path=path,
                status=exc.status,
                detail=exc.detail,
                attempts=attempts,
            ) from None
        except _DeadlinePassed as exc:
            raise ApiDeadlineError(
                self._scrub(
                    f"{self.service}: {method} {path} stopped after {attempts} attempt(s): "
                    f"{exc.reason}. The deadline covers connect, send, read, retries and their "
                    "sleeps; raise deadline_seconds only if the server is known to be this slow."
                ),
                service=self.service,
                method=method,
                path=path,
                attempts=attempts,
            ) from None
        finally:
            _DEADLINE.reset(token)

    def _read_ok(
        self,
        response: httpx.Response,
        method: str,
        path: str,
        deadline: float,
        past_deadline: Callable[[], str],
    ) -> CheckedResponse:
        """Read a success body within the cap (refused early on ``Content-Length``)."""
        status = response.status_code
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(method, path, status, f"of {_size(int(declared))} (declared)")
        try:
            body, over = self._read_capped(response, self.max_body_bytes, deadline, past_deadline)
        except _EncodingRefused as exc:
            raise self._unusable(
                method,
                path,
                status,
                f"but {exc.reason}; not read and not retried (the server or a proxy must send the "
                "body plain, gzip or deflate, one layer).",
            ) from None
        if over:
            raise self._too_large(method, path, status, "that kept going")
        from resources.http_api_transport import CheckedResponse

        kept = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return CheckedResponse(
            decoder=lambda r: self.decode_json(r, method, path),
            status_code=status,
            headers=kept,
            content=body,
            request=response.request,
        )

    def _raise_final(self, method: str, path: str, status: int, detail: str, attempts: int) -> None:
        if status in (401, 403):
            raise ApiAuthError(
                f"{self.service}: {method} {path} was refused with HTTP {status} ({detail}). "
                f"{self._auth_hint}".strip(),
                service=self.service,
                method=method,
                path=path,
                status=status,
                detail=detail,
                attempts=attempts,
                allow_retries=False,
            )
        raise ApiError(
            f"{self.service}: {method} {path} failed with HTTP {status}: {detail} (not retried: a "
            f"{status} will not change on retry)",
            service=self.service,
            method=method,
            path=path,
            status=status,
            detail=detail,
            attempts=attempts,
            allow_retries=False,  # a step retry (Dagster RetryPolicy) cannot fix a 4xx either
        )

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, then :meth:`decode_json` (bounded, checked, clear errors)."""
        return self.decode_json(self.request(method, path, **kwargs), method.upper(), path)

    def post_json(self, path: str, body: Any, *, idempotency_key: str | None = None) -> Any:
        return self.request_json("POST", path, json=body, idempotency_key=idempotency_key)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request_json("GET", path, params=params)


def _check_secret_headers(service: str, headers: Mapping[str, str], secrets: Iterable[str]) -> None:
    """Refuse, before any request, a header carrying a secret that is not visible ASCII.

    httpx/h11 would refuse it on every attempt, quoting the value as bytes in its message; the
    refusal here names the header and the position, never the value (read_secret checks first,
    naming the variable; this covers every other caller).
    """
    secrets = list(secrets)
    for name, value in headers.items():
        if not any(secret in value for secret in secrets):
            continue
        for secret in secrets:
            problem = header_value_problem(secret) if secret in value else None
            if problem:
                raise ValueError(
                    f"{service}: the secret sent in header {name} {problem}; a header-carried "
                    "secret must be visible ASCII (0x21-0x7E). Fix the secret; it is not shown "
                    "and nothing was sent."
                )


def _size(n: int) -> str:
    """Bytes as the README states the caps (KiB / MiB)."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MiB"
    if n >= 1024:
        return f"{n / 1024:g} KiB"
    return f"{n} bytes"
