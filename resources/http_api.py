"""The one HTTP calling convention both platform services share.

Retries follow PLATFORM_API.md: connect errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and jitter (honouring ``Retry-After``); every other 4xx is final at once. A
POST carries one ``Idempotency-Key`` for all its attempts, so a retry after a lost response is a
no-op on the server. Errors carry method, path, status and the server's detail, never a header:
secrets live only in the ``httpx.Client`` headers and are scrubbed from anything we raise or log.
"""

from __future__ import annotations

import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import httpx
import tenacity

from orchestration.policies import tracing

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})
REDACTED = "[REDACTED]"


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


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try. Defaults suit an API call inside a Dagster step."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    # Retry-After above this is clamped: a step should not sleep for an hour on one header.
    max_retry_after_seconds: float = 60.0


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


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` (servers sometimes echo what they were sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def _detail_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if key in body:
                return str(body[key])[:500]
    return str(body)[:500]


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


RetryLog = Callable[[str], None]


class ApiClient:
    """A small httpx wrapper: base URL, auth headers, retries, idempotency keys, redaction.

    ``service`` names the remote in messages ("platform API (prod)"); ``secrets`` are the values to
    scrub from anything surfaced; ``on_retry`` receives a human line per retry (the run log).
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
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._secrets = tuple(s for s in secrets if s)
        self._retry = retry or RetrySettings()
        self._on_retry = on_retry
        self._auth_hint = auth_hint
        self._trace_attributes = dict(trace_attributes or {})
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=dict(headers),
            timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
            transport=transport,
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
    ) -> httpx.Response:
        """Send one logical call, retrying per the contract; return the successful response."""
        method = method.upper()
        headers = dict(extra_headers or {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or f"{uuid.uuid4()}"
        ok = frozenset(ok_statuses)

        def attempt() -> httpx.Response:
            try:
                response = self._client.request(
                    method, path, json=json, params=params, headers=headers
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
                raise _Retryable(
                    f"{kind}: {self._scrub(str(exc)) or type(exc).__name__}", None, None, None
                ) from None
            if response.status_code in ok:
                return response
            detail = self._scrub(_detail_of(response))
            status = response.status_code
            if is_transient(status):
                raise _Retryable(
                    f"HTTP {status}: {detail}",
                    status,
                    detail,
                    parse_retry_after(response.headers.get("Retry-After")),
                )
            self._raise_final(method, path, status, detail, attempts=1)
            raise AssertionError("unreachable")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = exc.reason if isinstance(exc, _Retryable) else repr(exc)
            wait = state.next_action.sleep if state.next_action else 0.0
            line = (
                f"{self.service}: {method} {path} attempt {state.attempt_number}/"
                f"{self._retry.max_attempts} failed ({reason}); retrying in {wait:.1f}s"
            )
            logger.warning(line)
            if self._on_retry:
                self._on_retry(line)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self._retry.max_attempts),
            wait=_WaitWithRetryAfter(self._retry),
            retry=tenacity.retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
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
            raise ApiError(
                f"{self.service}: {method} {path} failed after {self._retry.max_attempts} "
                f"attempts; last error: {exc.reason}",
                service=self.service,
                method=method,
                path=path,
                status=exc.status,
                detail=exc.detail,
                attempts=self._retry.max_attempts,
            ) from None

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

    def post_json(self, path: str, body: Any, *, idempotency_key: str | None = None) -> Any:
        return self.request("POST", path, json=body, idempotency_key=idempotency_key).json()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()
