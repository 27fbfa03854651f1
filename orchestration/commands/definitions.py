"""This area's jobs, schedules and sensors, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.commands.jobs import retry_command_run_job, run_command_now_job, run_commands_job
from orchestration.commands.resources import CommandRunnerResource
from orchestration.commands.sensors import command_dispatch_sensor

defs = dg.Definitions(
    jobs=[run_commands_job, run_command_now_job, retry_command_run_job],
    sensors=[command_dispatch_sensor],
    resources={"commands_runner": CommandRunnerResource()},
)
