"""Cron slots at minute boundaries, and catalog validation that changes nothing on error."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orchestration.commands import catalog, cron
from orchestration.commands import models as m
from resources.record_store import make_engine
from tests.commands.helpers import seed, simple_catalog

T = datetime(2026, 1, 1, 12, 34, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T, T),  # exactly on the boundary: due
        (T + timedelta(seconds=59, microseconds=999999), T),  # last instant of the minute
        (T - timedelta(microseconds=1), None),  # 12:33:59.999999: not yet
        (T + timedelta(minutes=1), None),  # 12:35: the slot is outside the 1-minute window
    ],
)
def test_latest_slot_at_minute_boundaries(now, expected):
    window_start = now - timedelta(seconds=60)
    assert cron.latest_slot("34 12 * * *", window_start, now) == expected


def test_window_is_exclusive_at_start_and_takes_only_the_latest_missed_slot():
    assert cron.latest_slot("34 12 * * *", T, T + timedelta(seconds=30)) is None
    # down from 12:00 to 12:34: */5 missed 12:05 … 12:30; only the latest, 12:30, runs
    got = cron.latest_slot("*/5 * * * *", T.replace(minute=0), T)
    assert got == T.replace(minute=30)
    assert cron.is_due("*/2 * * * *", T + timedelta(seconds=5))
    assert not cron.is_due("*/5 * * * *", T + timedelta(seconds=5))


@pytest.mark.parametrize("bad", ["61 * * * *", "* * *", "every minute", "* * * * * *"])
def test_invalid_cron_is_refused(bad):
    with pytest.raises(cron.InvalidCron, match="invalid cron"):
        cron.validate_cron(bad)


def _snapshot(engine):
    with engine.connect() as conn:
        return {
            t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)))
            for t in (m.commands, m.environments, m.variables, m.schedules, m.schedule_crons)
        }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["schedules"][0].update(cron="99 * * * *"), "invalid cron"),
        (lambda d: d["schedules"][0].update(environments=["nope"]), "unknown environment 'nope'"),
        (lambda d: d["commands"].append(dict(d["commands"][0])), "duplicate command name"),
        (lambda d: d["schedules"][0].update(command="ghost"), "unknown command 'ghost'"),
    ],
)
def test_invalid_catalog_changes_nothing(engine, mutate, message):
    seed(engine, simple_catalog())
    before = _snapshot(engine)
    data = simple_catalog(command="echo changed")
    data["environments"].append({"name": "extra"})
    mutate(data)
    with pytest.raises(catalog.CatalogError, match=message):
        seed(engine, data)
    assert _snapshot(engine) == before


def test_sync_upserts_disables_missing_and_reads_secrets_from_env(engine, monkeypatch):
    monkeypatch.setenv("TOKEN_SRC", "s3cr3t-value")
    data = simple_catalog()
    data["environments"][0]["variables"]["TOKEN"] = {"from_env": "TOKEN_SRC", "secret": True}
    data["commands"].append({"name": "other", "command": "true"})
    first = seed(engine, data)
    assert len(first.created) == 4
    data["commands"].pop()
    second = seed(engine, data)
    assert second.disabled == ["command other"]
    with engine.connect() as conn:
        secret = conn.execute(
            sa.select(m.variables.c.value, m.variables.c.secret).where(
                m.variables.c.name == "TOKEN"
            )
        ).one()
        enabled = dict(conn.execute(sa.select(m.commands.c.name, m.commands.c.enabled)).all())
    assert tuple(secret) == ("s3cr3t-value", True)
    assert enabled == {"hello": True, "other": False}
    monkeypatch.delenv("TOKEN_SRC")
    with pytest.raises(catalog.CatalogError, match=r"reads \$TOKEN_SRC, which is not set"):
        seed(engine, data)


def test_example_catalog_is_valid(sqlite_store_url, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("EXAMPLE_PROD_TOKEN", "x")
    path = Path(__file__).resolve().parents[2] / "config" / "commands.example.yaml"
    result = catalog.sync_file(make_engine(sqlite_store_url), path)
    assert len(result.created) == 6
