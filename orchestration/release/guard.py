"""One release per environment at a time, also for runs that bypass the run queue.

The QueuedRunCoordinator's tag limit (dagster.yaml) holds queued runs back; ``dagster job
execute`` runs in the calling process and never sees the queue, so the release checks the
instance itself before its first call.
"""

from __future__ import annotations

import dagster as dg

from orchestration.errors import FinalFailure
from orchestration.tags import ENVIRONMENT_TAG


class ConcurrentReleaseError(FinalFailure):
    """Another release of the same environment is running."""


def ensure_single_release(
    instance: dg.DagsterInstance, run_id: str, job_name: str, environment: str
) -> None:
    """Fail if another run of ``job_name`` for ``environment`` started before this one."""
    records = instance.get_run_records(
        dg.RunsFilter(
            job_name=job_name,
            statuses=[dg.DagsterRunStatus.STARTED],
            tags={ENVIRONMENT_TAG: environment},
        )
    )
    mine = instance.get_run_record_by_id(run_id)
    my_start = (mine.start_time if mine and mine.start_time else float("inf"), run_id)
    earlier = [
        r.dagster_run.run_id
        for r in records
        if r.dagster_run.run_id != run_id
        and ((r.start_time or 0.0), r.dagster_run.run_id) < my_start
    ]
    if earlier:
        raise ConcurrentReleaseError(
            f"Another {job_name} for environment '{environment}' is running (run "
            f"{', '.join(earlier)}). Wait for it to finish; nothing was sent."
        )
