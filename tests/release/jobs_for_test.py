"""Reconstructable handles on the code location's jobs (for execute_job and re-execution)."""

import dagster as dg

from orchestration.definitions import defs


def release() -> dg.JobDefinition:
    return defs.get_job_def("release")


def org_sync_all() -> dg.JobDefinition:
    return defs.get_job_def("org_sync_all")
