"""The dispatch tick, as plain functions the sensor calls (and tests and benchmarks call directly).

1. ``create_due_runs``: for every enabled schedule whose command is enabled, each enabled
   environment of it, the latest cron slot in the tick's window → one ``command_run``. The insert is
   ``ON CONFLICT DO NOTHING`` on UNIQUE (schedule_id, environment_id, slot), so re-ticks, restarts
   and two dispatchers racing on PostgreSQL never create a second run for a slot. Each schedule is
   isolated: one whose slot cannot be computed (a cron that slipped past validation, a bad row) or
   whose run cannot be inserted becomes a ``ScheduleError`` naming it, and the others go on.
2. ``claim_batches``: pending runs whose ``not_before`` has passed (scheduled slots and "run in N
   seconds" requests alike) are claimed into batches with a compare-and-set
   (``pending → queued``, ``batch_key``): a run is in exactly one batch even with two dispatchers.
3. ``unlaunched_batches``: every batch still waiting (``queued``) is (re-)requested with
   ``run_key = batch_key``; Dagster drops a run key it has already launched, so a tick that was
   re-evaluated before its cursor was saved still launches each batch exactly once.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from orchestration.commands import models as m
from orchestration.commands.cron import SlotCache
from orchestration.commands.timeutil import as_utc, minute_floor, utcnow
from resources.db import SQLITE_WRITER

BATCH_PREFIX = "tick:"


@dataclass(frozen=True)
class ScheduleError:
    """One schedule that could not be dispatched this tick, and why (no secret: crons and ids)."""

    schedule_id: int
    name: str
    error: str

    def __str__(self) -> str:
        return f"schedule {self.name!r} (id {self.schedule_id}) skipped this tick: {self.error}"


@dataclass
class TickResult:
    window_start: datetime
    now: datetime
    considered: int = 0
    created: int = 0
    batches: dict[str, list[int]] = field(default_factory=dict)
    errors: list[ScheduleError] = field(default_factory=list)


def window_start_for(cursor: str | None, now: datetime, max_catchup: timedelta) -> datetime:
    """Slots after the previous tick; the first tick only looks at the current minute.

    A dispatcher down for longer than ``max_catchup`` forgets older slots entirely.
    """
    floor = now - max_catchup
    if not cursor:
        return minute_floor(now) - timedelta(microseconds=1)
    try:
        previous = as_utc(datetime.fromisoformat(cursor))
    except ValueError:
        return minute_floor(now) - timedelta(microseconds=1)
    return max(previous, floor)


def _insert_ignore(engine: sa.Engine):
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(m.command_runs)
    if dialect == "sqlite":
        return sqlite.insert(m.command_runs)
    raise NotImplementedError(f"record store dialect {dialect} is not supported")


def describe(exc: BaseException) -> str:
    """One line: the exception's type and message, whitespace collapsed, cut at 300 characters."""
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"


class BadValue(ValueError):
    """A stored value of the wrong type or shape; ``str()`` names its table and column."""

    def __init__(self, column: str, raw: object, why: str) -> None:
        shown = raw if len(str(raw)) <= 60 else f"{str(raw)[:60]}…"
        super().__init__(f"{column} {shown!r}: {why}")


def _raw(column: sa.ColumnElement, dialect: str) -> sa.ColumnElement:
    """The column as the database holds it, with no type processing on fetch.

    SQLite keeps any value in any column and SQLAlchemy parses DateTime/Boolean while rows are
    fetched, so one bad value ('garbage' in a DateTime) raised for the whole query, outside any
    per-schedule isolation; PostgreSQL holds timestamps psycopg2 cannot convert (infinity, BC).
    Bytes on SQLite (a blob or text that is not UTF-8 decodes here, not in the driver), text on
    PostgreSQL; each value is parsed per schedule (``_text``, ``_bool``, ``_timestamp``).
    """
    return sa.cast(column, sa.LargeBinary if dialect == "sqlite" else sa.Text)


def _text(raw: object) -> str | None:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes | memoryview) else raw


# How each database hands a boolean back through ``_raw``: anything else is a bad value.
BOOLEANS = {"sqlite": {"1": True, "0": False}, "postgresql": {"true": True, "false": False}}


def _bool(column: str, raw: object, dialect: str) -> bool:
    value = BOOLEANS[dialect].get(_text(raw) or "")
    if value is None:
        shape = "/".join(BOOLEANS[dialect])
        raise BadValue(column, _text(raw), f"not a boolean ({shape})")
    return value


def _timestamp(column: str, raw: object) -> datetime:
    text = _text(raw)
    try:
        return as_utc(datetime.fromisoformat(text or ""))
    except (ValueError, TypeError, OverflowError):
        raise BadValue(column, text, "not a timestamp (YYYY-MM-DD HH:MM:SS[+00])") from None


def _due_query(dialect: str) -> sa.Select:
    """Every (schedule, environment, cron) not disabled, columns raw (``_raw``).

    Outer joins and ``IS DISTINCT FROM false`` (not ``IS true``) so that a schedule with a broken
    link or a flag that is no boolean comes back and is named, instead of silently never
    running; a value that is exactly false (disabled) is left out here.
    """
    s, c, se, e, sc = (
        m.schedules, m.commands, m.schedule_environments, m.environments, m.schedule_crons,
    )  # fmt: skip
    raw = [
        _raw(col, dialect)
        for col in (s.c.name, s.c.enabled, s.c.command_id, s.c.created_at, c.c.enabled)
    ]
    env_raw = [_raw(col, dialect) for col in (se.c.environment_id, e.c.enabled, sc.c.cron)]
    return (
        sa.select(s.c.id, *raw[:4], c.c.id, raw[4], env_raw[0], e.c.id, *env_raw[1:])
        .select_from(s)
        .outerjoin(c, c.c.id == s.c.command_id)
        .join(se, se.c.schedule_id == s.c.id)
        .outerjoin(e, e.c.id == se.c.environment_id)
        .join(sc, sc.c.schedule_id == s.c.id)
        .where(
            s.c.enabled.is_distinct_from(False),
            c.c.enabled.is_distinct_from(False),
            e.c.enabled.is_distinct_from(False),
        )
    )


def _parse(row: sa.Row, dialect: str) -> tuple[bool, int, int, datetime, str]:
    """(enabled, command id, environment id, created_at, cron) of one raw row, or ``BadValue``
    naming the first column that does not hold what the dispatcher needs."""
    s_enabled, command_ref, created_at, cmd_id, c_enabled = row[2:7]
    env_ref, env_id, e_enabled, cron = row[7:11]
    if cmd_id is None:
        raise BadValue("schedules.command_id", _text(command_ref), "no command has this id")
    if env_id is None:
        raise BadValue(
            "schedule_environments.environment_id", _text(env_ref), "no environment has this id"
        )
    enabled = (
        _bool("schedules.enabled", s_enabled, dialect)
        and _bool(f"commands.enabled (command id {cmd_id})", c_enabled, dialect)
        and _bool(f"environments.enabled (environment id {env_id})", e_enabled, dialect)
    )
    cron_text = _text(cron) or ""
    if "\ufffd" in cron_text:
        raise BadValue("schedule_crons.cron", cron_text, "not UTF-8 text")
    return enabled, cmd_id, env_id, _timestamp("schedules.created_at", created_at), cron_text


def due_rows(
    conn: sa.Connection,
    window_start: datetime,
    now: datetime,
    errors: list[ScheduleError] | None = None,
) -> tuple[int, list[dict]]:
    """(rows considered, command_run values for every (schedule, environment) due in the window).

    A schedule whose row cannot be read (a value of the wrong type in any column the tick uses:
    the error names the column) or whose slot cannot be computed is left out and appended to
    ``errors`` (once); the other schedules go on.
    """
    errors = [] if errors is None else errors
    slot_of = SlotCache(window_start, now)
    latest: dict[tuple[int, int], tuple[int, datetime]] = {}
    failed: dict[int, ScheduleError] = {}
    considered = 0
    dialect = conn.dialect.name
    for row in conn.execute(_due_query(dialect)):
        sid, name = row[0], _text(row[1]) or "?"
        if sid in failed:
            continue
        try:
            enabled, command_id, env_id, created_at, cron = _parse(row, dialect)
        except BadValue as exc:  # a bad stored value: this schedule only
            failed[sid] = ScheduleError(sid, name, f"bad value in {exc}")
            continue
        if not enabled:
            continue
        considered += 1
        try:
            slot = slot_of(cron)
            if slot is None or slot < minute_floor(created_at):
                continue  # never run a slot from before the schedule existed
        except Exception as exc:  # isolate this schedule, keep the others
            failed[sid] = ScheduleError(sid, name, f"cron {cron!r}: {describe(exc)}")
            continue
        key = (sid, env_id)
        if key not in latest or latest[key][1] < slot:
            latest[key] = (command_id, slot)
    errors.extend(failed.values())
    created = utcnow()
    rows = [
        {
            "command_id": command_id, "environment_id": env_id, "schedule_id": sid, "slot": slot,
            "requested_by": "schedule", "not_before": slot, "status": m.PENDING, "attempt": 1,
            "created_at": created,
        }
        for (sid, env_id), (command_id, slot) in latest.items()
        if sid not in failed  # a schedule with a bad cron runs none of its crons this tick
    ]  # fmt: skip
    return considered, rows


def _insert_chunk(
    conn: sa.Connection, stmt: sa.Insert, rows: list[dict], errors: list[ScheduleError]
) -> int:
    """Insert a chunk in a savepoint; if it fails, row by row, so one bad row fails only itself.

    A lost connection (``OperationalError``) is not a row's fault: it propagates.
    """
    try:
        with conn.begin_nested():
            return len(conn.execute(stmt, rows).all())
    except sa.exc.OperationalError:
        raise
    except sa.exc.SQLAlchemyError:
        pass
    created = 0
    for row in rows:
        try:
            with conn.begin_nested():
                created += len(conn.execute(stmt, [row]).all())
        except sa.exc.OperationalError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            sid = row["schedule_id"]
            name = conn.execute(sa.select(m.schedules.c.name).where(m.schedules.c.id == sid))
            reason = describe(getattr(exc, "orig", None) or exc)
            errors.append(ScheduleError(sid, name.scalar() or "?", f"run not created: {reason}"))
    return created


def create_due_runs(
    engine: sa.Engine,
    window_start: datetime,
    now: datetime,
    errors: list[ScheduleError] | None = None,
) -> tuple[int, int]:
    """(rows considered, command runs actually created) for the window ``(window_start, now]``.

    Schedules that could not be dispatched are appended to ``errors``; the rest are created.
    """
    errors = [] if errors is None else errors
    # SQLite: a writer from BEGIN, so its read of the due schedules and its inserts are one
    # transaction that no other writer can fail between (resources.db.SQLITE_WRITER).
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        considered, rows = due_rows(conn, window_start, now, errors)
        if not rows:
            return considered, 0
        stmt = (
            _insert_ignore(engine)
            .on_conflict_do_nothing(index_elements=["schedule_id", "environment_id", "slot"])
            .returning(m.command_runs.c.id)
        )
        created = 0
        for start in range(0, len(rows), 1000):
            created += _insert_chunk(conn, stmt, rows[start : start + 1000], errors)
        return considered, created


def claim_batches(
    engine: sa.Engine, now: datetime, *, batch_size: int, max_runs: int
) -> dict[str, list[int]]:
    """Claim due pending runs (oldest first, at most ``max_runs``) in batches of ``batch_size``."""
    t = m.command_runs
    # Unique per evaluation: two dispatchers (or a re-evaluated tick) never share a run_key.
    stamp = f"{now.strftime('%Y%m%dT%H%M%S')}:{uuid.uuid4().hex[:8]}"
    batches: dict[str, list[int]] = {}
    with engine.begin() as conn:
        ids = (
            conn.execute(
                sa.select(t.c.id)
                .where(t.c.status == m.PENDING, t.c.not_before <= now)
                .order_by(t.c.not_before, t.c.id)
                .limit(max_runs)
            )
            .scalars()
            .all()
        )
    for index, start in enumerate(range(0, len(ids), batch_size)):
        key = f"{BATCH_PREFIX}{stamp}:{index}"
        chunk = ids[start : start + batch_size]
        with engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id.in_(chunk), t.c.status == m.PENDING)
                .values(status=m.QUEUED, batch_key=key)
            )
            claimed = (
                conn.execute(sa.select(t.c.id).where(t.c.batch_key == key).order_by(t.c.id))
                .scalars()
                .all()
            )
        if claimed:
            batches[key] = list(claimed)
    return batches


def unlaunched_batches(engine: sa.Engine) -> dict[str, list[int]]:
    """Every tick batch with runs still ``queued`` (not yet picked up by its Dagster run)."""
    t = m.command_runs
    out: dict[str, list[int]] = defaultdict(list)
    with engine.connect() as conn:
        for key, run_id in conn.execute(
            sa.select(t.c.batch_key, t.c.id)
            .where(t.c.status == m.QUEUED, t.c.batch_key.like(f"{BATCH_PREFIX}%"))
            .order_by(t.c.id)
        ):
            out[key].append(run_id)
    return dict(out)


def tick(
    engine: sa.Engine,
    now: datetime,
    window_start: datetime,
    *,
    batch_size: int = 500,
    max_runs: int = 5000,
) -> TickResult:
    """One whole dispatch tick; returns every batch that should have a Dagster run."""
    now = as_utc(now)
    result = TickResult(window_start=window_start, now=now)
    result.considered, result.created = create_due_runs(engine, window_start, now, result.errors)
    claim_batches(engine, now, batch_size=batch_size, max_runs=max_runs)
    result.batches = unlaunched_batches(engine)
    return result
