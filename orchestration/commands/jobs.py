"""Command jobs: the dispatcher's batch job and the two launchpad actions.

All follow the ``command`` recipe (``policies/recipes.py``): no step retry, because a command is
not idempotent and the operator's retry is ``retry_command_run`` (a new command run). All use the
in-process executor: the commands' concurrency comes from the runner pool (``pool.py``), so a
step only waits and reports; paying a process per step would cost more than most commands take.
"""

import dagster as dg

from orchestration.commands.ops import (
    execute_command_run,
    plan_command_runs,
    request_command_run,
    request_retry,
)
from orchestration.policies.recipes import job_settings

RECIPE = "command"
KIND = "commands"


@dg.job(
    **job_settings(
        "run_commands",
        description="Executes a batch of command runs (launched by command_dispatch_sensor), "
        "one step per command run; commands run concurrently on the runner pool.",
        recipe=RECIPE,
        kind=KIND,
    )
)
def run_commands_job() -> None:
    plan_command_runs().map(execute_command_run)


@dg.job(
    **job_settings(
        "run_command_now",
        description="Runs a command in an environment now (in_seconds: 0) or in N seconds; "
        "the command_run_id output is the new command run.",
        recipe=RECIPE,
        kind=KIND,
    )
)
def run_command_now_job() -> None:
    _run_id, to_run = request_command_run()
    to_run.map(execute_command_run)


@dg.job(
    **job_settings(
        "retry_command_run",
        description="Retries a failed command run (new run, retry_of, attempt + 1) "
        "and runs it now.",
        recipe=RECIPE,
        kind=KIND,
    )
)
def retry_command_run_job() -> None:
    _run_id, to_run = request_retry()
    to_run.map(execute_command_run)
