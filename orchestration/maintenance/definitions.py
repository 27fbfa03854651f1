"""This area's jobs, schedules and resources, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.maintenance.jobs import JOBS
from orchestration.maintenance.schedules import SCHEDULES
from resources.bigquery import PlatformBigQueryResource

defs = dg.Definitions(
    jobs=JOBS,
    schedules=SCHEDULES,
    resources={"maintenance_bigquery": PlatformBigQueryResource()},
)
