"""Reconstructable handles on the triggers' jobs (for execute_job and re-execution)."""

import dagster as dg

from orchestration.definitions import defs


def escalate_alerts() -> dg.JobDefinition:
    return defs.get_job_def("escalate_alerts")
