"""Declarations are checked at load; the migrated schedule keeps the legacy cron's fire times."""

from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy as sa
from croniter import croniter

from dev.seed import seed_alerts
from orchestration.triggers.catalog import LEGACY_TRACE_SUMMARY_CRON, REFRESH_TRACE_SUMMARIES
from orchestration.triggers.models import alerts
from orchestration.triggers.scheduled import ScheduledAction
from orchestration.triggers.spec import TriggerDeclarationError, TriggerSpec, eq, utcnow


def _noop(record, ctx):
    raise AssertionError("not called")


def _spec(**kw):
    base = dict(name="t", table=alerts, where={"state": "pending"}, action=_noop)
    return TriggerSpec(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"where": {"colour": "red"}}, "unknown column 'colour' in table 'alerts'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"max_per_tick": -5}, "max_per_tick must be a positive integer"),
        ({"max_attempts": 0}, "max_attempts must be a positive integer"),
        ({"cron": "every five minutes"}, "invalid cron expression 'every five minutes'"),
        ({"cas_columns": ("nope",)}, "unknown column 'nope'"),
        ({"tenants": ["a"]}, "tenants given without tenant_column"),
        ({"where": {}}, "'where' is empty"),
        ({"name": "Bad Name"}, "lower_snake_case"),
    ],
)
def test_bad_declaration_fails_at_load_naming_the_problem(kw, message):
    with pytest.raises(TriggerDeclarationError, match="declared wrongly") as err:
        _spec(**kw)
    assert message in str(err.value)


def test_bad_scheduled_action_cron_fails():
    with pytest.raises(TriggerDeclarationError, match="invalid cron"):
        ScheduledAction(name="x", cron="61 * * * *", action=lambda i, c: {})


def test_good_declaration_selects_the_rows_its_where_says(engine):
    """Not the declaration's attributes but what its ``where`` selects in a real store."""
    seed_alerts(engine, due=6, resolved=2, tenants=3)  # tenant-0: ids 1, 4, 7 (7 resolved)
    spec = _spec(where={"state": "pending", "tenant_id": eq("tenant-0")})
    assert set(spec.conditions) == {"state", "tenant_id"}
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(alerts.c.id).where(spec.where_clause(utcnow())).order_by(alerts.c.id)
        ).scalars()
        assert list(found) == [1, 4]


def test_migrated_schedule_fires_at_the_legacy_cron_times():
    from orchestration.definitions import defs

    schedule = defs.get_repository_def().get_schedule_def("refresh_trace_summaries_schedule")
    assert REFRESH_TRACE_SUMMARIES.cron == LEGACY_TRACE_SUMMARY_CRON == "*/5 * * * *"
    start = datetime(2026, 3, 1, 23, 41, 17, tzinfo=UTC)
    legacy = croniter(LEGACY_TRACE_SUMMARY_CRON, start)
    expected = [legacy.get_next(datetime) for _ in range(30)]
    ours = croniter(schedule.cron_schedule, start)
    assert [ours.get_next(datetime) for _ in range(30)] == expected
    assert schedule.execution_timezone == "UTC"
    assert expected[0] == datetime(2026, 3, 1, 23, 45, tzinfo=UTC)
    # And Dagster's own tick iterator agrees with the legacy cron.
    from dagster._utils.schedules import cron_string_iterator

    it = cron_string_iterator(start.timestamp(), schedule.cron_schedule, "UTC")
    assert [next(it).astimezone(UTC) for _ in range(30)] == expected
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
