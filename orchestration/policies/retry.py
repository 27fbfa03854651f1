"""Step-level retry defaults, on top of the HTTP client's per-call retries.

The client retries one call within seconds (connect errors, 5xx, 429); a step retry covers a
longer outage: 3 attempts in all, 5 s initial delay, exponential with jitter. Which failures are
final is decided where the error is raised: ``dagster.Failure(allow_retries=False)`` for a 4xx, a
refused environment or a bad migration, so a RetryPolicy never repeats what cannot succeed.
"""

import os

import dagster as dg

DEFAULT_ATTEMPTS = 3
DEFAULT_DELAY_SECONDS = 5.0
# Overrides every recipe's initial step-retry delay (read at load time): the test suite sets it
# small so retried steps don't sleep for real; deployments leave it unset.
DELAY_OVERRIDE_ENV = "PLATFORM_OPS_RETRY_DELAY_SECONDS"


def effective_delay(delay_seconds: float) -> float:
    override = os.environ.get(DELAY_OVERRIDE_ENV, "").strip()
    return float(override) if override else delay_seconds


def retry_policy(
    attempts: int = DEFAULT_ATTEMPTS, delay_seconds: float = DEFAULT_DELAY_SECONDS
) -> dg.RetryPolicy:
    """``attempts`` in total (Dagster counts retries, so ``max_retries = attempts - 1``)."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    return dg.RetryPolicy(
        max_retries=attempts - 1,
        delay=effective_delay(delay_seconds),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )
