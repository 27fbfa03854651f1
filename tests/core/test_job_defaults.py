"""Every job and schedule of the code location is declared the one way (issue: job defaults once).

``recipes.job_settings`` gives each job its executor, recipe (run tags, max runtime, notification
route, step retry policy), kind tag and description; ``policies.scheduling`` gives each schedule
UTC, its name and a running default. Walking the loaded ``Definitions`` catches a job added by hand.
"""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.policies.recipes import RECIPE_TAG, RECIPES
from orchestration.policies.scheduling import TIMEZONE
from orchestration.tags import KIND_TAG

# Jobs without a step retry policy, with why (their recipe has one attempt). Dagster's implicit
# asset job (``__ASSET_JOB``) is not walked: Dagster builds it for ad-hoc materializations.
NO_STEP_RETRY: dict[str, str] = {
    name: "a command is not idempotent: a retried step could run it twice; the operator's retry "
    "is the retry_command_run job (recipe 'command', docs/commands.md)"
    for name in ("run_commands", "run_command_now", "retry_command_run")
}


def _jobs() -> list[dg.JobDefinition]:
    return [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]


def test_the_code_location_has_the_expected_jobs() -> None:
    names = {job.name for job in _jobs()}
    assert set(NO_STEP_RETRY) <= names
    assert {"release", "quota_reset", "quota_monthly", "escalate_alerts", "run_commands"} <= names
    assert len(names) >= 19


@pytest.mark.parametrize("job", _jobs(), ids=lambda job: job.name)
def test_every_job_has_a_recipe_retry_policy_kind_and_description(job: dg.JobDefinition) -> None:
    name = job.tags.get(RECIPE_TAG)
    assert name in RECIPES, f"{job.name}: no recipe tag (declare it with recipes.job_settings)"
    chosen = RECIPES[name]
    assert chosen.run_tags().items() <= dict(job.tags).items(), f"{job.name}: recipe tags differ"
    assert job.tags.get(KIND_TAG), f"{job.name}: no {KIND_TAG} tag"
    policy = job.op_retry_policy
    if job.name in NO_STEP_RETRY:
        assert NO_STEP_RETRY[job.name].strip()
        assert chosen.attempts == 1 and policy is None, f"{job.name}: listed as not retried"
    else:
        assert isinstance(policy, dg.RetryPolicy), f"{job.name}: no step retry policy"
        assert policy.max_retries == chosen.attempts - 1 >= 1
    assert job.executor_def.name == dg.in_process_executor.name
    assert (job.description or "").strip(), f"{job.name}: no description"


def test_every_schedule_is_utc_named_for_its_job_and_running_by_default() -> None:
    schedules = [defs.resolve_schedule_def(s.name) for s in defs.schedules or []]
    assert len(schedules) >= 7
    jobs = {job.name for job in _jobs()}
    for schedule in schedules:
        assert schedule.execution_timezone == TIMEZONE, schedule.name
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
        assert schedule.job_name in jobs, schedule.name
        assert schedule.name.endswith("_schedule"), schedule.name
        assert (schedule.description or "").strip(), schedule.name
