"""Each schedule's cron, timezone and partition at boundary times, evaluated as the daemon would;
the jobs' partitions (what the UI's partition view lists)."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from orchestration.definitions import defs
from orchestration.maintenance.partitions import (
    DAILY,
    MONTHLY,
    PARTITIONS_START,
    SlotError,
    idempotency_key,
    parse_day,
    parse_month,
    resolve_day,
    resolve_month,
)
from orchestration.maintenance.schedules import SCHEDULES

UTC = dt.UTC
DAILY_JOBS = ["quota_reset", "quota_cleanup", "stale_cleanup", "alerts"]
BY_NAME = {s.name: s for s in SCHEDULES}

EXPECTED = {
    "quota_reset_schedule": ("quota_reset", "0 0 * * *"),
    "quota_cleanup_schedule": ("quota_cleanup", "0 1 * * *"),
    "stale_cleanup_schedule": ("stale_cleanup", "0 2 * * *"),
    "alerts_schedule": ("alerts", "0 8 * * *"),
    "quota_monthly_schedule": ("quota_monthly", "5 0 1 * *"),
}


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def evaluate(name: str, when: dt.datetime) -> dg.RunRequest:
    schedule = BY_NAME[name]
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        result = schedule.evaluate_tick(context)
    (request,) = result.run_requests
    return request


def test_every_schedule_is_running_utc_on_its_cron_and_in_the_code_location():
    repo = defs.get_repository_def()
    assert set(EXPECTED) <= {s.name for s in repo.schedule_defs}
    for name, (job, cron) in EXPECTED.items():
        schedule = repo.get_schedule_def(name)
        assert schedule.job_name == job
        assert schedule.cron_schedule == cron
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(
    ("name", "when", "slot"),
    [
        # Daily jobs at month and year end: the slot is the scheduled UTC day itself.
        ("quota_reset_schedule", at(2026, 11, 30, 0, 0), "2026-11-30"),
        ("quota_reset_schedule", at(2027, 1, 1, 0, 0), "2027-01-01"),
        ("quota_cleanup_schedule", at(2026, 12, 31, 1, 0), "2026-12-31"),
        ("stale_cleanup_schedule", at(2028, 2, 29, 2, 0), "2028-02-29"),
        ("alerts_schedule", at(2026, 1, 31, 8, 0), "2026-01-31"),
        # Monthly at 00:05 on the 1st: the month that just began.
        ("quota_monthly_schedule", at(2026, 12, 1, 0, 5), "2026-12"),
        ("quota_monthly_schedule", at(2027, 1, 1, 0, 5), "2027-01"),
    ],
)
def test_tick_runs_its_slot_as_partition_and_run_key(name, when, slot):
    request = evaluate(name, when)
    assert request.run_key == slot
    assert request.partition_key == slot
    assert request.tags["dagster/partition"] == slot
    # No slot in config: the op reads it from the partition (config stays for unpartitioned runs).
    assert "ops" not in (request.run_config or {})
    job = defs.get_job_def(EXPECTED[name][0])
    assert job.partitions_def is not None
    with dg.partition_loading_context(effective_dt=when):  # a valid key at the tick
        assert job.partitions_def.has_partition_key(slot)


def test_slot_is_the_utc_day_even_for_an_offset_aware_time():
    # 19:05 in New York on Nov 30 is 00:05 UTC on Dec 1: the monthly slot is December.
    new_york = dt.timezone(dt.timedelta(hours=-5))
    when = dt.datetime(2026, 11, 30, 19, 5, tzinfo=new_york)
    assert evaluate("quota_monthly_schedule", when).run_key == "2026-12"
    assert evaluate("quota_reset_schedule", when).run_key == "2026-12-01"


@pytest.mark.parametrize(
    ("name", "after", "expected"),
    [
        ("quota_reset_schedule", "2026-11-30T23:59:59", ["2026-12-01T00:00", "2026-12-02T00:00"]),
        ("quota_cleanup_schedule", "2026-11-30T01:00:00", ["2026-11-30T01:00", "2026-12-01T01:00"]),
        ("stale_cleanup_schedule", "2026-03-29T00:00:00", ["2026-03-29T02:00", "2026-03-30T02:00"]),
        ("alerts_schedule", "2026-10-25T07:59:00", ["2026-10-25T08:00", "2026-10-26T08:00"]),
        ("quota_monthly_schedule", "2026-11-30T23:59:00", ["2026-12-01T00:05", "2027-01-01T00:05"]),
        ("quota_monthly_schedule", "2027-01-01T00:04:00", ["2027-01-01T00:05", "2027-02-01T00:05"]),
    ],
)
def test_next_ticks_at_boundaries_are_utc_wall_times(name, after, expected):
    # 2026-03-29 and 2026-10-25 are European DST switch days: UTC schedules do not move.
    schedule = BY_NAME[name]
    start = dt.datetime.fromisoformat(after).replace(tzinfo=UTC).timestamp()
    ticks = cron_string_iterator(start, schedule.cron_schedule, schedule.execution_timezone)
    got = [next(ticks).astimezone(UTC).strftime("%Y-%m-%dT%H:%M") for _ in expected]
    assert got == expected


@pytest.mark.parametrize(
    ("job", "kind"), [(j, "daily") for j in DAILY_JOBS] + [("quota_monthly", "monthly")]
)
def test_every_job_is_partitioned_by_utc_slot_from_the_partitions_start(job, kind):
    # What the UI's partition view lists: every day (month) from the start to the one in progress.
    partitions = defs.get_job_def(job).partitions_def
    assert partitions is (DAILY if kind == "daily" else MONTHLY)
    assert partitions.timezone == "UTC"
    with dg.partition_loading_context(effective_dt=at(2026, 11, 23, 0, 0)):
        keys = partitions.get_partition_keys()
    if kind == "daily":
        assert keys[0] == PARTITIONS_START.isoformat() == "2026-01-01"
        assert keys[-3:] == ["2026-11-21", "2026-11-22", "2026-11-23"]  # today's is there
        assert len(keys) == (dt.date(2026, 11, 23) - PARTITIONS_START).days + 1
    else:
        assert keys[0] == "2026-01" and keys[-1] == "2026-11" and len(keys) == 11
    for key in keys:  # keys are the slots the API expects, unchanged by partitioning
        assert (parse_day(key).isoformat() if kind == "daily" else parse_month(key)) == key


def test_slot_resolution_partition_config_or_today():
    now = at(2026, 11, 23, 8, 0)
    assert resolve_day("2026-11-20", None, now) == "2026-11-20"
    assert resolve_day("2026-11-20", " 2026-11-20 ", now) == "2026-11-20"
    assert resolve_day(None, "2025-02-28", now) == "2025-02-28"  # before the partitions: config
    assert resolve_day(None, None, now) == resolve_day(None, "  ", now) == "2026-11-23"
    assert resolve_month(None, None, now) == "2026-11"
    assert resolve_month("2026-10", "2026-10", now) == "2026-10"
    with pytest.raises(SlotError, match="Partition 2026-11-20 and config date 2026-11-21"):
        resolve_day("2026-11-20", "2026-11-21", now)
    with pytest.raises(SlotError, match="Invalid date slot '2026-02-30'"):
        resolve_day(None, "2026-02-30", now)
    with pytest.raises(SlotError, match="Invalid month slot '2026-13'"):
        resolve_month(None, "2026-13", now)
    assert idempotency_key("quota-reset-monthly", "2026-11") == "quota-reset-monthly:2026-11"
