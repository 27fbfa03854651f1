"""poll_devices_sensor: requests a poll_devices run when a tick has something to do.

It asks the record store first (due targets, tasks to fail over or assign, results to record), so
an idle fleet costs no runs, and skips while a poll_devices run is already queued or running.
"""

import dagster as dg

from orchestration.gateways.assignment import has_work
from orchestration.gateways.jobs import POLL_JOB
from resources.record_store import RecordStoreResource

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    job_name=POLL_JOB,
    minimum_interval_seconds=10,
    # On like every other sensor here: with no targets or agents it only skips, cheaply.
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a poll_devices tick when targets are due, a gateway lease expired, "
    "tasks wait for a gateway or results wait to be recorded.",
)
def poll_devices_sensor(context: dg.SensorEvaluationContext, record_store: RecordStoreResource):
    active = context.instance.get_runs(dg.RunsFilter(job_name=POLL_JOB, statuses=ACTIVE), limit=1)
    if active:
        return dg.SkipReason(f"poll_devices run {active[0].run_id[:8]} is still in progress")
    work = has_work(record_store.engine())
    if not any(work.values()):
        return dg.SkipReason("nothing due, nothing to fail over, nothing to record")
    summary = ",".join(f"{k}={v}" for k, v in work.items())
    return dg.RunRequest(tags={"platform/gateways-work": summary})
