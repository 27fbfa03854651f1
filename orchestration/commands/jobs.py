"""Command jobs: the dispatcher's batch job and the two launchpad actions.

All use the in-process executor: the commands' concurrency comes from the runner pool
(``pool.py``), so a step only waits and reports; paying a process per step would cost more than
most commands take.
"""

import dagster as dg

from orchestration.commands.ops import (
    execute_command_run,
    plan_command_runs,
    request_command_run,
    request_retry,
)
from orchestration.tags import KIND_TAG

EXECUTOR = dg.in_process_executor


@dg.job(
    name="run_commands",
    description="Executes a batch of command runs (launched by command_dispatch_sensor), "
    "one step per command run; commands run concurrently on the runner pool.",
    tags={KIND_TAG: "commands"},
    executor_def=EXECUTOR,
)
def run_commands_job() -> None:
    plan_command_runs().map(execute_command_run)


@dg.job(
    name="run_command_now",
    description="Runs a command in an environment now (in_seconds: 0) or in N seconds; "
    "the command_run_id output is the new command run.",
    tags={KIND_TAG: "commands"},
    executor_def=EXECUTOR,
)
def run_command_now_job() -> None:
    _run_id, to_run = request_command_run()
    to_run.map(execute_command_run)


@dg.job(
    name="retry_command_run",
    description="Retries a failed command run (new run, retry_of, attempt + 1) and runs it now.",
    tags={KIND_TAG: "commands"},
    executor_def=EXECUTOR,
)
def retry_command_run_job() -> None:
    _run_id, to_run = request_retry()
    to_run.map(execute_command_run)
