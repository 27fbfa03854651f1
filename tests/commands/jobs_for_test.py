"""Reconstructable handles on the commands jobs (for execute_job and re-execution)."""

import dagster as dg

from orchestration.definitions import defs


def run_command_now() -> dg.JobDefinition:
    return defs.get_job_def("run_command_now")
