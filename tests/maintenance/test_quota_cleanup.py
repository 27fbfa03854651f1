"""quota_cleanup against the real BigQuery emulator (a subprocess), through the real client."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from dev.bigquery_emulator import EMULATOR_HOST_ENV
from orchestration.definitions import defs
from orchestration.maintenance import quota_cleanup
from resources.bigquery import PlatformBigQueryResource
from resources.environments import ENVIRONMENTS
from tests.conftest import run_config
from tests.maintenance.conftest import insert_usage, remaining_dates
from tests.support.results import step_metadata

TODAY = dt.datetime.now(dt.UTC).date()
# Ages (days before the slot) on both sides of the 90-day boundary: 90 itself is kept.
AGES = [0, 1, 45, 89, 90, 91, 92, 365, 1000]


def run_cleanup(instance, dataset: str, slot: dt.date | None = None, **extra):
    op_config = {"dataset": dataset, **extra}
    if slot is not None:
        op_config["date"] = slot.isoformat()
    return defs.get_job_def("quota_cleanup").execute_in_process(
        run_config=run_config(ops={"delete_expired_quota_records": {"config": op_config}}),
        instance=instance,
        raise_on_error=False,
    )


def test_deletes_exactly_the_rows_older_than_the_window_and_is_idempotent(
    bq_env, bq_client, quota_dataset, instance
):
    insert_usage(bq_client, quota_dataset, TODAY, AGES)
    result = run_cleanup(instance, quota_dataset, TODAY)
    assert result.success
    kept = remaining_dates(bq_client, quota_dataset)
    assert kept == sorted(TODAY - dt.timedelta(days=a) for a in AGES if a <= 90)
    md = step_metadata(result)
    assert md["rows_deleted"] == 4
    assert md["cutoff"] == (TODAY - dt.timedelta(days=90)).isoformat()
    assert md["table"] == f"local.{quota_dataset}.org_quota_usage"
    assert md["bigquery"] == "emulator" and md["retention_days"] == 90

    again = run_cleanup(instance, quota_dataset, TODAY)
    assert again.success and step_metadata(again)["rows_deleted"] == 0
    assert remaining_dates(bq_client, quota_dataset) == kept


def test_retention_is_configurable_and_a_past_slot_deletes_no_more(
    bq_env, bq_client, quota_dataset, instance
):
    insert_usage(bq_client, quota_dataset, TODAY, [0, 29, 31, 40, 60, 61])
    # A slot 10 days ago with 50 days: cutoff = today - 60, so only the 61-day-old row goes.
    result = run_cleanup(instance, quota_dataset, TODAY - dt.timedelta(days=10), retention_days=50)
    assert result.success and step_metadata(result)["rows_deleted"] == 1
    assert min(remaining_dates(bq_client, quota_dataset)) == TODAY - dt.timedelta(days=60)


@pytest.mark.parametrize("days", [0, 7, 29])
def test_retention_below_the_safe_minimum_is_refused_and_nothing_deleted(
    bq_env, bq_client, quota_dataset, instance, days
):
    insert_usage(bq_client, quota_dataset, TODAY, [0, 100, 400])
    result = run_cleanup(instance, quota_dataset, TODAY, retention_days=days)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert f"retention_days={days} is below the safe minimum of 30" in (
        failure.step_failure_data.error.message
    )
    assert len(remaining_dates(bq_client, quota_dataset)) == 3


def test_future_slot_is_refused(bq_env, bq_client, quota_dataset, instance):
    insert_usage(bq_client, quota_dataset, TODAY, [85, 95])
    result = run_cleanup(instance, quota_dataset, TODAY + dt.timedelta(days=30))
    assert not result.success
    assert "is in the future" in result.get_step_failure_events()[0].step_failure_data.error.message
    assert len(remaining_dates(bq_client, quota_dataset)) == 2


def test_missing_table_fails_naming_it(bq_env, quota_dataset, instance):
    result = run_cleanup(instance, quota_dataset, TODAY, table="no_such_table")
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert f"local.{quota_dataset}.no_such_table not found" in message


def test_identifiers_are_validated_not_interpolated(bq_env, quota_dataset, instance):
    result = run_cleanup(instance, quota_dataset, TODAY, table="t` WHERE TRUE OR `x")
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "Invalid table name" in message


def test_default_slot_is_today(bq_env, bq_client, quota_dataset, instance):
    """No slot given: the run's own UTC date (read before and after the run, so a run that
    crosses midnight is judged by the date it took, not by the one the module was imported on)."""
    before = dt.datetime.now(dt.UTC).date()
    insert_usage(bq_client, quota_dataset, before, [90, 91])
    result = run_cleanup(instance, quota_dataset)
    after = dt.datetime.now(dt.UTC).date()
    assert result.success
    slot = dt.date.fromisoformat(step_metadata(result)["slot"])
    assert slot in {before, after}
    inserted = [before - dt.timedelta(days=90), before - dt.timedelta(days=91)]
    kept = [d for d in inserted if d >= slot - dt.timedelta(days=90)]
    assert remaining_dates(bq_client, quota_dataset) == kept
    assert kept  # on the same day the 90-day-old row stays (the cutoff is exclusive)


def test_cutoff_rules_as_plain_function():
    slot = dt.date(2026, 11, 23)
    assert quota_cleanup.cutoff_date(slot, 90, slot) == dt.date(2026, 8, 25)
    assert quota_cleanup.cutoff_date(slot, 30, slot) == dt.date(2026, 10, 24)
    with pytest.raises(quota_cleanup.QuotaCleanupError, match="safe minimum"):
        quota_cleanup.cutoff_date(slot, 29, slot)
    assert quota_cleanup.delete_sql("p.d.t", "usage_date") == (
        "DELETE FROM `p.d.t` WHERE `usage_date` < @cutoff"
    )


def test_resource_targets(monkeypatch):
    resource = PlatformBigQueryResource()
    monkeypatch.delenv(EMULATOR_HOST_ENV, raising=False)
    # test has no GCP project: without an emulator there is nothing to talk to.
    with pytest.raises(dg.Failure, match="has no GCP project"):
        resource.project_for(ENVIRONMENTS["test"])
    assert resource.project_for(ENVIRONMENTS["stage"]) == "cloudact-testing-1"
    assert resource.project_for(ENVIRONMENTS["prod"]) == "cloudact-prod"

    monkeypatch.setenv(EMULATOR_HOST_ENV, "127.0.0.1:9")
    assert resource.emulator_endpoint() == "http://127.0.0.1:9"
    assert resource.project_for(ENVIRONMENTS["test"]) == "local"
    # A prod run never silently cleans a local fake.
    with pytest.raises(dg.Failure, match="targets prod"), resource.get_client(ENVIRONMENTS["prod"]):
        pass
    with resource.get_client(ENVIRONMENTS["stage"]) as client:
        assert client.project == "local"


def test_test_environment_without_emulator_fails_clearly(monkeypatch, instance):
    monkeypatch.delenv(EMULATOR_HOST_ENV, raising=False)
    result = run_cleanup(instance, "organizations", TODAY)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "Environment 'test' has no GCP project" in message and EMULATOR_HOST_ENV in message
