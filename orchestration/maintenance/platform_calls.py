"""The four platform-API maintenance calls, one function each, keyed by their slot.

Plain functions over :class:`PlatformApiClient` so tests call them directly; the ops only add
config, tags and metadata. A failure is re-raised naming the job, the slot and the call, so the
run page says which call failed and why (retries already happened inside the client, per
PLATFORM_API.md: 408/429/5xx/connection errors retried with backoff, other 4xx not at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from orchestration.maintenance.partitions import idempotency_key
from resources.http_api import ApiError
from resources.platform_api import PlatformApiClient


@dataclass(frozen=True)
class PlatformCall:
    """One maintenance endpoint: the key prefix and how to call it for a slot."""

    job: str
    action: str
    endpoint: str
    send: Callable[[PlatformApiClient, str, str], dict[str, Any]]

    def key(self, slot: str) -> str:
        return idempotency_key(self.action, slot)


QUOTA_RESET = PlatformCall(
    job="quota_reset",
    action="quota-reset-daily",
    endpoint="POST /admin/quota/reset-daily",
    send=lambda c, slot, key: c.reset_daily_quota(slot, idempotency_key=key),
)
STALE_CLEANUP = PlatformCall(
    job="stale_cleanup",
    action="quota-cleanup-stale",
    endpoint="POST /admin/quota/cleanup-stale",
    # No date in the body; the slot still scopes the key, so one cleanup per scheduled day.
    send=lambda c, _slot, key: c.cleanup_stale_quota(idempotency_key=key),
)
ALERTS = PlatformCall(
    job="alerts",
    action="alerts-process-all",
    endpoint="POST /admin/alerts/process-all",
    send=lambda c, slot, key: c.process_alerts(slot, idempotency_key=key),
)
QUOTA_MONTHLY = PlatformCall(
    job="quota_monthly",
    action="quota-reset-monthly",
    endpoint="POST /admin/quota/reset-monthly",
    send=lambda c, slot, key: c.reset_monthly_quota(slot, idempotency_key=key),
)


def run_call(client: PlatformApiClient, call: PlatformCall, slot: str) -> dict[str, Any]:
    """Send ``call`` for ``slot`` once (the client retries per the contract); return the body."""
    try:
        body = call.send(client, slot, call.key(slot))
    except ApiError as exc:
        # The key is never part of the message: it is derived, but it is still a request header.
        raise dg.Failure(
            description=f"{call.job} for {slot}: {exc.message}",
            metadata={**exc.metadata, "job": call.job, "slot": slot},
            allow_retries=exc.allow_retries,  # a 4xx stays final for the step retry policy
        ) from exc
    if not isinstance(body, dict) or body.get("status") != "ok":
        raise dg.Failure(
            description=f"{call.job} for {slot}: {call.endpoint} answered without status ok: "
            f"{str(body)[:300]}",
            metadata={"job": call.job, "slot": slot, "call": call.endpoint},
        )
    return body
