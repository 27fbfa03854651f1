"""Every job and schedule of the code location is declared the one way (issue: job defaults once).

``recipes.job_settings`` gives each job its executor, recipe (run tags, max runtime, notification
route, step retry policy), kind tag and description; ``policies.scheduling`` gives each schedule
UTC, its name and a running default. Walking the loaded ``Definitions`` catches a job added by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.policies.recipes import RECIPE_TAG, RECIPES
from orchestration.policies.retry import DELAY_OVERRIDE_ENV
from orchestration.policies.scheduling import TIMEZONE
from orchestration.tags import KIND_TAG

# Jobs without a step retry policy, with why (their recipe has one attempt). Dagster's implicit
# asset job (``__ASSET_JOB``) is not walked: Dagster builds it for ad-hoc materializations.
NO_STEP_RETRY: dict[str, str] = {
    name: "a command is not idempotent: a retried step could run it twice; the operator's retry "
    "is the retry_command_run job (recipe 'command', docs/commands.md)"
    for name in ("run_commands", "run_command_now", "retry_command_run")
}


REPO = Path(__file__).resolve().parents[2]

# Every op of every job and the retry policy Dagster applies to it (the op's own, else the job's
# op_retry_policy: ``JobDefinition.get_retry_policy_for_handle``, what the executor reads). Run in
# a fresh interpreter without the suite's delay override, so the delays are the deployed ones.
_DUMP_POLICIES = """
import json
from orchestration.definitions import defs
out = {}
for job in defs.resolve_all_job_defs():
    if job.name.startswith("__"):
        continue
    ops = {}
    for handle in job.graph.iterate_node_handles():
        p = job.get_retry_policy_for_handle(handle)
        ops[str(handle)] = None if p is None else {
            "max_retries": p.max_retries, "delay": p.delay,
            "backoff": p.backoff and p.backoff.value, "jitter": p.jitter and p.jitter.value,
        }
    out[job.name] = {"recipe": job.tags.get("platform/recipe"), "ops": ops}
print(json.dumps(out))
"""


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


@pytest.fixture(scope="module")
def deployed_policies() -> dict[str, dict]:
    """Job -> recipe and {op handle: effective retry policy}, as a deployment loads them."""
    env = {k: v for k, v in os.environ.items() if k != DELAY_OVERRIDE_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP_POLICIES], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _readme_retry_claim() -> tuple[int, float, dict[str, float], set[str]]:
    """The README's "Retries" bullet: attempts, default initial delay, per-recipe delays, and the
    recipes that never retry a step."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^- \*\*Retries\*\*:(.*?)(?=^- \*\*|^$)", text, re.M | re.S)
    assert match, "README: no '- **Retries**:' bullet"
    bullet = " ".join(match.group(1).split())
    head = re.search(r"every op retries (\d+) attempts in all, (\d+) s initial delay", bullet)
    assert head, bullet
    assert "exponential with jitter" in bullet, bullet
    delays = {name: float(s) for s, name in re.findall(r"(\d+) s for `(\w+)`", bullet)}
    never = set(re.findall(r"\(recipe `(\w+)`\) never retry a step", bullet))
    return int(head.group(1)), float(head.group(2)), delays, never


def test_readme_retry_claim_is_what_the_recipes_say() -> None:
    attempts, default_delay, delays, never = _readme_retry_claim()
    assert never == {"command"} and set(delays) <= set(RECIPES), (delays, never)
    for recipe in RECIPES.values():
        if recipe.name in never:
            assert recipe.attempts == 1, recipe.name
        else:
            assert recipe.attempts == attempts, recipe.name
            assert recipe.delay_seconds == delays.get(recipe.name, default_delay), recipe.name


def test_every_op_of_every_job_retries_as_the_readme_says(deployed_policies) -> None:
    """Each op's effective policy, not just the job's: an op with its own policy, a job without
    one or with other numbers fails here, naming job and op."""
    attempts, default_delay, delays, never = _readme_retry_claim()
    assert set(deployed_policies) == {job.name for job in _jobs()}
    checked = 0
    for job, info in deployed_policies.items():
        recipe = info["recipe"]
        assert recipe in RECIPES, f"{job}: no recipe"
        assert info["ops"], f"{job}: no ops"
        for op, policy in info["ops"].items():
            where = f"{job}.{op} (recipe {recipe})"
            if recipe in never:
                assert policy is None, f"{where}: retries, but the README says never"
                continue
            assert policy == {
                "max_retries": attempts - 1,
                "delay": delays.get(recipe, default_delay),
                "backoff": dg.Backoff.EXPONENTIAL.value,
                "jitter": dg.Jitter.PLUS_MINUS.value,
            }, where
            checked += 1
    assert checked >= 25
