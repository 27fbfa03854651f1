"""Policy jobs, schedules and sensors, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.policies.archive_job import archive_run_history, archive_schedule

defs = dg.Definitions(jobs=[archive_run_history], schedules=[archive_schedule])
