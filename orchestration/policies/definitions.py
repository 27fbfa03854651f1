"""Policy jobs, schedules and sensors, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.policies.jobs import archive_run_history
from orchestration.policies.resources import FailureNotifierConfig
from orchestration.policies.schedules import archive_schedule
from orchestration.policies.sensors import notify_run_failures, trace_finished_runs
from resources.bigquery import PlatformBigQueryResource

defs = dg.Definitions(
    jobs=[archive_run_history],
    schedules=[archive_schedule],
    sensors=[notify_run_failures, trace_finished_runs],
    resources={
        "policies_failure_notifier": FailureNotifierConfig(),
        "policies_bigquery": PlatformBigQueryResource(),
    },
)
