"""The four platform-API jobs end to end against the sandbox: slots, idempotency, failures."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from orchestration.maintenance.partitions import SLOT_TAG
from tests.conftest import TEST_API_KEY, run_config
from tests.support.results import step_metadata

# job, op, config field, slot, endpoint, sandbox effect kind, expected idempotency key
CASES = [
    ("quota_reset", "reset_daily_quota", "date", "2026-11-23", "/admin/quota/reset-daily",
     "reset-daily", "quota-reset-daily:2026-11-23"),
    ("alerts", "process_daily_alerts", "date", "2026-11-23", "/admin/alerts/process-all",
     "process-all", "alerts-process-all:2026-11-23"),
    ("quota_monthly", "reset_monthly_quota", "month", "2026-12", "/admin/quota/reset-monthly",
     "reset-monthly", "quota-reset-monthly:2026-12"),
    ("stale_cleanup", "cleanup_stale_counters", "date", "2026-11-23", "/admin/quota/cleanup-stale",
     "cleanup-stale", "quota-cleanup-stale:2026-11-23"),
]  # fmt: skip


def execute(job: str, op: str, op_config: dict, instance: dg.DagsterInstance, **kw):
    config = run_config(ops={op: {"config": op_config}})
    return defs.get_job_def(job).execute_in_process(
        run_config=config, instance=instance, raise_on_error=False, **kw
    )


def posts(sandbox, path: str) -> list[dict]:
    return [r for r in sandbox.requests if r["method"] == "POST" and r["path"] == path]


@pytest.mark.parametrize(("job", "op", "field", "slot", "path", "effect", "key"), CASES)
def test_job_applies_its_slot_once_even_when_run_twice(
    platform_env, instance, job, op, field, slot, path, effect, key
):
    sandbox = platform_env
    first = execute(job, op, {field: slot}, instance)
    assert first.success
    second = execute(job, op, {field: slot}, instance)
    assert second.success

    # Client side: both runs sent the same slot-derived key (never the run id).
    sent = posts(sandbox, path)
    assert [r["idempotency_key"] for r in sent] == [key, key]
    assert all(r["status"] == 200 for r in sent)
    # Server side: the effect happened exactly once.
    effects = sandbox.state()["effects"][effect]
    if effect == "cleanup-stale":  # the sandbox counts this one under the day it ran
        assert sum(effects.values()) == 1
    else:
        assert effects == {slot: 1}

    run = instance.get_run_by_id(first.run_id)
    assert run.tags[SLOT_TAG] == slot
    assert run.tags["platform/environment"] == "test"
    assert step_metadata(first)["slot"] == slot


@pytest.mark.parametrize(("job", "op", "field", "slot", "path", "effect", "key"), CASES)
def test_a_partitioned_run_is_for_its_partition(
    platform_env, instance, job, op, field, slot, path, effect, key
):
    # What a schedule tick or a backfill launches: a partition, no op config.
    sandbox = platform_env
    result = defs.get_job_def(job).execute_in_process(
        run_config=run_config(), instance=instance, partition_key=slot
    )
    assert result.success
    assert [r["idempotency_key"] for r in posts(sandbox, path)] == [key]
    if effect != "cleanup-stale":  # the sandbox counts this one under the day it ran
        assert sandbox.state()["effects"][effect] == {slot: 1}
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags["dagster/partition"] == tags[SLOT_TAG] == slot
    # The same partition again, now with the same slot named in config too: one effect.
    again = execute(job, op, {field: slot}, instance, partition_key=slot)
    assert again.success
    assert [r["idempotency_key"] for r in posts(sandbox, path)] == [key, key]


@pytest.mark.parametrize(
    ("job", "op", "config", "partition", "message"),
    [
        ("quota_reset", "reset_daily_quota", {"date": "2026-11-22"}, "2026-11-23",
         "Partition 2026-11-23 and config date 2026-11-22 disagree"),
        ("quota_monthly", "reset_monthly_quota", {"month": "2026-10"}, "2026-11",
         "Partition 2026-11 and config month 2026-10 disagree"),
    ],
)  # fmt: skip
def test_a_config_slot_that_contradicts_the_partition_fails_before_any_call(
    platform_env, instance, job, op, config, partition, message
):
    result = execute(job, op, config, instance, partition_key=partition)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    text = failure.step_failure_data.error.message.strip()
    assert message in text and len(text.splitlines()) == 1, text
    # A FinalFailure: one attempt, nothing sent.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [r for r in platform_env.requests if r["method"] == "POST"] == []


def test_second_run_reports_the_same_counts_as_the_first(platform_env, instance):
    first = execute("quota_reset", "reset_daily_quota", {"date": "2026-11-23"}, instance)
    second = execute("quota_reset", "reset_daily_quota", {"date": "2026-11-23"}, instance)

    assert first.success and second.success
    assert step_metadata(first)["orgs_reset"] == step_metadata(second)["orgs_reset"] == 5
    assert platform_env.state()["quota"]["last_daily_reset"] == "2026-11-23"


def test_launchpad_run_can_name_a_past_slot_and_defaults_to_today(platform_env, instance):
    """No slot: the run's own UTC day (month). The clock is read before and after each run, so
    a run that crosses midnight is judged by the day it took, not by a race with the clock."""
    sandbox = platform_env
    past = execute("alerts", "process_daily_alerts", {"date": "2025-02-28"}, instance)
    assert past.success
    before = dt.datetime.now(dt.UTC)
    default = defs.get_job_def("alerts").execute_in_process(
        run_config=run_config(), instance=instance
    )
    after = dt.datetime.now(dt.UTC)
    today = instance.get_run_by_id(default.run_id).tags[SLOT_TAG]
    assert today in {before.date().isoformat(), after.date().isoformat()}
    assert sandbox.state()["effects"]["process-all"] == {"2025-02-28": 1, today: 1}

    before = dt.datetime.now(dt.UTC)
    month = defs.get_job_def("quota_monthly").execute_in_process(
        run_config=run_config(), instance=instance
    )
    after = dt.datetime.now(dt.UTC)
    this_month = instance.get_run_by_id(month.run_id).tags[SLOT_TAG]
    assert this_month in {before.strftime("%Y-%m"), after.strftime("%Y-%m")}
    assert sandbox.state()["effects"]["reset-monthly"] == {this_month: 1}


def test_invalid_slot_fails_before_any_call(platform_env, instance):
    result = execute("quota_reset", "reset_daily_quota", {"date": "2026-02-30"}, instance)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "Invalid date slot '2026-02-30'" in failure.step_failure_data.error.message
    assert posts(platform_env, "/admin/quota/reset-daily") == []


def test_503_is_retried_with_the_same_key_then_succeeds(platform_env, instance):
    sandbox = platform_env
    sandbox.add_fault(Fault(method="POST", path="/admin/quota/reset-daily", status=503, times=2))
    result = execute("quota_reset", "reset_daily_quota", {"date": "2026-11-24"}, instance)
    assert result.success
    sent = posts(sandbox, "/admin/quota/reset-daily")
    assert [r["status"] for r in sent] == [503, 503, 200]
    assert {r["idempotency_key"] for r in sent} == {"quota-reset-daily:2026-11-24"}
    assert sandbox.state()["effects"]["reset-daily"] == {"2026-11-24": 1}
    retries = [
        e.message for e in instance.all_logs(result.run_id) if "retrying in" in (e.message or "")
    ]
    assert len(retries) == 2 and "HTTP 503" in retries[0]


def test_400_is_not_retried_and_the_failure_names_the_call(platform_env, instance):
    sandbox = platform_env
    sandbox.add_fault(
        Fault(
            method="POST",
            path="/admin/alerts/process-all",
            status=400,
            times=1,
            body={"detail": "alert rules table missing"},
        )
    )
    result = execute("alerts", "process_daily_alerts", {"date": "2026-11-23"}, instance)
    assert not result.success
    assert [r["status"] for r in posts(sandbox, "/admin/alerts/process-all")] == [400]
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.message
    assert "alerts for 2026-11-23" in message
    assert "POST /admin/alerts/process-all failed with HTTP 400" in message
    assert "alert rules table missing" in message and "not retried" in message
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["status"].value == 400 and metadata["slot"].value == "2026-11-23"
    assert "alerts-process-all" not in message  # the key header is not echoed
    assert TEST_API_KEY not in message
    assert sandbox.state()["effects"]["process-all"] == {}


def test_503_forever_fails_after_the_configured_attempts(platform_env, instance):
    sandbox = platform_env
    sandbox.add_fault(Fault(method="POST", path="/admin/quota/reset-monthly", status=503))
    config = run_config(ops={"reset_monthly_quota": {"config": {"month": "2026-12"}}})
    config["resources"]["platform_api"]["config"]["max_attempts"] = 3
    result = defs.get_job_def("quota_monthly").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False
    )
    assert not result.success
    # 3 calls per step attempt (client), 3 step attempts (the maintenance recipe's RetryPolicy).
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 2
    assert len(posts(sandbox, "/admin/quota/reset-monthly")) == 9
    assert len({p["idempotency_key"] for p in posts(sandbox, "/admin/quota/reset-monthly")}) == 1
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.error.to_string()  # the last attempt's error is its cause
    assert "failed after 3 attempts; last error: HTTP 503" in message
