"""Step retry policies and recipes on real runs against the sandbox's faults."""

import pytest

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from orchestration.policies.recipes import RECIPE_TAG, RECIPES, recipe
from tests.conftest import run_config


def _events(result, kind):
    return [e for e in result.all_events if e.event_type_value == kind]


def _two_calls_per_step():
    config = run_config()
    config["resources"]["platform_api"]["config"]["max_attempts"] = 2
    return config


def test_transient_failure_is_retried_by_the_step_policy(instance, platform_env):
    # 4 x 503: step attempt 1 (2 calls) and 2 (2 calls) fail, attempt 3 succeeds.
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=503, times=4))
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=_two_calls_per_step(), raise_on_error=False
    )
    assert result.success
    assert len(_events(result, "STEP_UP_FOR_RETRY")) == 2
    calls = [r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]
    assert [c["status"] for c in calls] == [503, 503, 503, 503, 200]
    assert len({c["idempotency_key"] for c in calls}) == 1  # one logical call per run


def test_4xx_is_final_at_once(instance, platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=422))
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=_two_calls_per_step(), raise_on_error=False
    )
    assert not result.success
    assert _events(result, "STEP_UP_FOR_RETRY") == []
    assert len([r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]) == 1


def test_retries_exhausted_fail_after_three_attempts(instance, platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=500))
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=_two_calls_per_step(), raise_on_error=False
    )
    assert not result.success
    assert len(_events(result, "STEP_UP_FOR_RETRY")) == 2
    assert len([r for r in platform_env.requests if r["path"] == "/admin/bootstrap"]) == 6


@pytest.mark.parametrize(
    ("job", "expected"),
    [("release", "release"), ("migrate", "api_call"), ("org_sync_all", "bulk_fanout")],
)
def test_jobs_carry_their_recipe(job, expected, instance, platform_env):
    job_def = defs.get_job_def(job)
    assert job_def.tags[RECIPE_TAG] == expected
    assert job_def.tags["dagster/max_runtime"] == str(RECIPES[expected].max_runtime_seconds)
    result = job_def.execute_in_process(instance=instance, run_config=run_config())
    assert instance.get_run_by_id(result.run_id).tags[RECIPE_TAG] == expected


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown recipe 'nope'.*api_call"):
        recipe("nope")


def test_the_command_recipe_never_retries_a_step():
    assert recipe("command").attempts == 1
    assert recipe("command").retry_policy().max_retries == 0
    jobs = ("run_commands", "run_command_now", "retry_command_run")
    assert {defs.get_job_def(name).tags[RECIPE_TAG] for name in jobs} == {"command"}
