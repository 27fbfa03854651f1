"""A root span per run: recorded by a sensor once the run has finished (when tracing is on).

Why a sensor and not a wrapper inside the run: the root span must cover the whole run whichever
executor or launcher runs it, and a run that dies (OOM, SIGKILL, run-monitoring timeout) must
still get one. The run's steps never need the span object itself: their API-call spans parent to
ids derived from the run id (``tracing.run_root_span_id``), and this sensor records the root with
exactly those ids, the run's start and end times, job, run id and environment. Off (a skip
reason, no queries beyond the runs page) while ``PLATFORM_OPS_TRACING`` is unset.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg

from orchestration.tags import ENVIRONMENT_TAG, KIND_TAG
from resources import tracing
from resources.environments import DEFAULT_ENVIRONMENT

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
PAGE = 200


def environment_of(run: dg.DagsterRun) -> str:
    """The run's environment: its tag, else the ``environment`` resource config, else default."""
    if run.tags.get(ENVIRONMENT_TAG):
        return run.tags[ENVIRONMENT_TAG]
    resources = (run.run_config or {}).get("resources") or {}
    config = (resources.get("environment") or {}).get("config") or {}
    return str(config.get("name") or DEFAULT_ENVIRONMENT)


def record_root_span(record: dg.RunRecord) -> object:
    run = record.dagster_run
    start = record.start_time or record.create_timestamp.timestamp()
    end = record.end_time or record.update_timestamp.timestamp()
    ok = run.status == dg.DagsterRunStatus.SUCCESS
    return tracing.record_run_span(
        run.run_id, run.job_name, start, max(end, start), failed=not ok,
        error=None if ok else f"run {run.status.value.lower()}",
        **{
            "dagster.run_id": run.run_id,
            "dagster.job_name": run.job_name,
            "dagster.run_status": run.status.value,
            "deployment.environment": environment_of(run),
            "platform.kind": run.tags.get(KIND_TAG),
        },
    )  # fmt: skip


def trace_runs_since(
    instance: dg.DagsterInstance, cursor: dict | None
) -> tuple[list[dg.RunRecord], dict]:
    """Finished runs updated after the cursor (oldest first, one page) and the next cursor."""
    if cursor is None:  # first tick: start from now, not the whole history
        return [], {"after": datetime.now(UTC).timestamp(), "ids": []}
    after = cursor["after"]
    seen = set(cursor.get("ids", []))
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=FINISHED,
            updated_after=datetime.fromtimestamp(after, UTC) - timedelta(milliseconds=1),
        ),
        limit=PAGE,
        order_by="update_timestamp",
        ascending=True,
    )
    fresh = [r for r in records if r.dagster_run.run_id not in seen]
    if fresh:
        last = fresh[-1].update_timestamp.timestamp()
        ids = [r.dagster_run.run_id for r in records if r.update_timestamp.timestamp() == last]
        if last == after:
            ids = sorted(seen | set(ids))
        return fresh, {"after": last, "ids": ids}
    return [], cursor
