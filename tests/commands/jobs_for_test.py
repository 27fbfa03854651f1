"""Reconstructable handles on the commands jobs (for execute_job and re-execution).

Resources are built when the handle is called, so they read $RECORD_STORE_URL at that moment
(the code location's ``defs`` may have been imported earlier in the session with another URL).
"""

import dagster as dg

from orchestration.commands.definitions import defs as commands_defs
from orchestration.resources import build_resources


def run_command_now() -> dg.JobDefinition:
    merged = dg.Definitions.merge(commands_defs, dg.Definitions(resources=build_resources()))
    return merged.get_job_def("run_command_now")
