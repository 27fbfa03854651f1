"""Delete BigQuery quota records older than the retention window, with one parameterised DML.

The window is measured from the run's slot (the scheduled day), never from "now" inside SQL, so
re-running a past slot deletes no more than that day's run would have, and a test can place rows
exactly on either side of the boundary. A row dated on the cutoff day itself is kept: only rows
*older* than ``retention_days`` go. Identifiers cannot be query parameters in BigQuery, so they
are validated against a strict pattern and backquoted; the cutoff is a ``DATE`` parameter.

The Google client (with its storage client, pandas and pyarrow: ~150 MB and ~1 s) is imported by
``delete_old_records`` when a cleanup runs, never when the code location loads: every other job's
run pays for loading this module (tests/core/test_import_cost.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resources.errors import FinalFailure

if TYPE_CHECKING:
    from google.cloud import bigquery

MIN_RETENTION_DAYS = 30
DEFAULT_RETENTION_DAYS = 90
DEFAULT_DATASET = "organizations"
DEFAULT_TABLE = "org_quota_usage"
DEFAULT_DATE_COLUMN = "usage_date"

_PROJECT = re.compile(r"[a-z][a-z0-9\-]{2,61}[a-z0-9]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1023}")


class QuotaCleanupError(FinalFailure):
    """A refused or failed cleanup (shown plainly in the UI)."""


@dataclass(frozen=True)
class CleanupResult:
    table: str
    cutoff: dt.date
    retention_days: int
    rows_deleted: int
    job_id: str | None


def cutoff_date(slot: dt.date, retention_days: int, today: dt.date) -> dt.date:
    """First day kept: rows dated before it are older than the window and may go.

    Refuses a retention below :data:`MIN_RETENTION_DAYS` and a slot in the future (its window
    would reach into data that is still inside today's window).
    """
    if retention_days < MIN_RETENTION_DAYS:
        raise QuotaCleanupError(
            f"Refusing to delete: retention_days={retention_days} is below the safe minimum of "
            f"{MIN_RETENTION_DAYS} days. Nothing was deleted.",
            retention_days=retention_days,
        )
    if slot > today:
        raise QuotaCleanupError(
            f"Refusing to delete: slot {slot.isoformat()} is in the future (today is "
            f"{today.isoformat()} UTC). Nothing was deleted.",
            slot=slot.isoformat(),
        )
    return slot - dt.timedelta(days=retention_days)


def table_ref(project: str, dataset: str, table: str, date_column: str) -> str:
    """`project.dataset.table`, after checking every identifier (they cannot be parameters)."""
    if not _PROJECT.fullmatch(project):
        raise QuotaCleanupError(f"Invalid GCP project id {project!r}.")
    for kind, name in (("dataset", dataset), ("table", table), ("date column", date_column)):
        if not _NAME.fullmatch(name):
            raise QuotaCleanupError(
                f"Invalid {kind} name {name!r}: letters, digits and underscores only."
            )
    return f"{project}.{dataset}.{table}"


def _first_line(text: object) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def delete_sql(table: str, date_column: str) -> str:
    return f"DELETE FROM `{table}` WHERE `{date_column}` < @cutoff"


def delete_old_records(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    table: str,
    date_column: str,
    slot: dt.date,
    retention_days: int,
    today: dt.date,
    timeout_seconds: float = 600.0,
) -> CleanupResult:
    """Run the DELETE and return how many rows it removed (from the DML job statistics)."""
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    cutoff = cutoff_date(slot, retention_days, today)
    ref = table_ref(project, dataset, table, date_column)
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("cutoff", "DATE", cutoff)]
    )
    try:
        job = client.query(delete_sql(ref, date_column), job_config=config)
        job.result(timeout=timeout_seconds)
    except gexc.NotFound as exc:
        raise QuotaCleanupError(
            f"BigQuery table {ref} not found ({_first_line(exc.message)}). Check the "
            "dataset/table config.",
            table=ref,
        ) from exc
    except gexc.GoogleAPICallError as exc:
        raise QuotaCleanupError(
            f"BigQuery DELETE on {ref} failed (HTTP {exc.code}): {_first_line(exc.message)}",
            table=ref,
        ) from exc
    return CleanupResult(
        table=ref,
        cutoff=cutoff,
        retention_days=retention_days,
        rows_deleted=int(job.num_dml_affected_rows or 0),
        job_id=job.job_id,
    )
