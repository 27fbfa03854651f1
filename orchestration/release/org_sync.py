"""Syncing every active org: batches for the Dagster fan-out, threads for bounded concurrency.

A Dagster step costs far more than one HTTP call, so the fan-out is by batch of orgs (each batch a
mapped step in the UI) and each batch syncs its orgs on a bounded thread pool. One org failing
never stops the others; the batch reports every failure at its end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from orchestration.policies.progress import Progress
from resources.http_api import ApiError, is_transient
from resources.identifiers import ORG_SLUG_RULE, display, is_org_slug
from resources.platform_api import PlatformApiClient

INVALID_SLUG = f"slug does not match {ORG_SLUG_RULE}; not sent (fix the org's slug on the platform)"


def org_name(slug: str) -> str:
    """How an org is named in messages and tables: as is when valid, else safely escaped."""
    return slug if is_org_slug(slug) else display(slug)


@dataclass(frozen=True)
class OrgBatch:
    """A slice of the org list; ``offset`` and ``total`` let each batch report overall progress."""

    index: int
    orgs: tuple[str, ...]
    offset: int
    total: int

    @property
    def mapping_key(self) -> str:
        first = re.sub(r"[^A-Za-z0-9_]", "_", self.orgs[0]) if self.orgs else "empty"
        return f"b{self.index:04d}_{first}"[:100]


@dataclass
class BatchOutcome:
    synced: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    # Failed orgs whose error may pass on its own (5xx, timeouts): worth a step retry.
    transient: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def make_batches(orgs: Sequence[str], batch_size: int) -> list[OrgBatch]:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    total = len(orgs)
    return [
        OrgBatch(i // batch_size + 1, tuple(orgs[i : i + batch_size]), i, total)
        for i in range(0, total, batch_size)
    ]


def sync_batch(
    client: PlatformApiClient,
    orgs: Sequence[str],
    *,
    concurrency: int,
    key_for: Callable[[str], str],
    progress: Progress | None = None,
) -> BatchOutcome:
    """Sync ``orgs`` with at most ``concurrency`` calls in flight; collect every failure.

    A slug outside the slug rule is a failed org (not transient: a retry lists it again) and is
    never sent: it is API data, and pasted into a path it could address another endpoint.
    """
    outcome = BatchOutcome()
    started = time.monotonic()
    for slug in orgs:
        if not is_org_slug(slug):
            outcome.failed[slug] = INVALID_SLUG
            if progress:
                progress.tick()
    valid = [slug for slug in orgs if is_org_slug(slug)]
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="org-sync") as pool:
        futures = {
            pool.submit(client.sync_org, slug, idempotency_key=key_for(slug)): slug
            for slug in valid
        }
        for future in as_completed(futures):
            slug = futures[future]
            try:
                body = future.result()
                outcome.synced[slug] = int(body.get("datasets_synced") or 0)
            except ApiError as exc:
                outcome.failed[slug] = exc.message
                if is_transient(exc.status):
                    outcome.transient.add(slug)
            except Exception as exc:  # one org's surprise must not sink the batch
                outcome.failed[slug] = f"{type(exc).__name__}: {exc}"
                outcome.transient.add(slug)
            if progress:
                progress.tick()
    outcome.seconds = time.monotonic() - started
    return outcome
