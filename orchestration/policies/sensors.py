"""This area's sensors: one failure message per failed run, one root span per finished run.

Thin wiring: what they do lives in ``notifications.py`` and ``run_spans.py``.
"""

import json

import dagster as dg

from orchestration.policies.notifications import notify_failure
from orchestration.policies.resources import FailureNotifierConfig
from orchestration.policies.run_spans import record_root_span, trace_runs_since
from resources import tracing
from resources.record_store import RecordStoreResource


@dg.run_failure_sensor(
    name="notify_run_failures",
    description="Sends one webhook message (Slack-compatible) per failed run: job, environment, "
    "failed step, error summary and a UI link. Never a secret; never twice for one run.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def notify_run_failures(
    context: dg.RunFailureSensorContext,
    record_store: RecordStoreResource,
    policies_failure_notifier: FailureNotifierConfig,
) -> None:
    notify_failure(context, record_store, policies_failure_notifier)


@dg.sensor(
    name="trace_finished_runs",
    description="When tracing is on (PLATFORM_OPS_TRACING), records one root span per finished "
    "run (job, run id, environment), the parent of the run's API-call spans.",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def trace_finished_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason | None:
    if not tracing.enabled():
        return dg.SkipReason(f"tracing is off ({tracing.TRACING_ENV} unset)")
    cursor = json.loads(context.cursor) if context.cursor else None
    records, next_cursor = trace_runs_since(context.instance, cursor)
    for record in records:
        record_root_span(record)
    context.update_cursor(json.dumps(next_cursor))
    if not records:
        return dg.SkipReason("no newly finished runs")
    context.log.info(f"recorded the root span of {len(records)} run(s)")
    return None
