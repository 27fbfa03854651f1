"""A trigger declared once, as data, and checked when the code location loads.

``TriggerSpec`` names the table, a ``where`` (column → value or condition), the action applied to
one record, how often to scan, batch sizes, attempts and error handling. Everything else (sensor or
schedule, worker job, history) is derived from it by the modules beside this one. A declaration
that cannot work (unknown column, non-positive size, invalid cron) raises
``TriggerDeclarationError`` at import time, naming the trigger and the problem, so a bad
trigger never reaches the daemon.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from croniter import croniter

from resources.db import as_utc

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,80}$")


class TriggerDeclarationError(ValueError):
    """A trigger declaration that cannot work; raised when the declaration is made."""


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- conditions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One column's condition; ``clause`` builds it for a given ``now`` (times are relative)."""

    op: str
    value: Any = None

    def clause(self, column: sa.ColumnElement, now: datetime) -> sa.ColumnElement[bool]:
        if self.op == "eq":
            return column.is_(self.value) if self.value is None else column == self.value
        if self.op == "ne":
            return column.is_not(None) if self.value is None else column != self.value
        if self.op == "in":
            return column.in_(list(self.value))
        if self.op == "older_than":
            return column < now - self.value
        if self.op == "past":
            return column <= now
        raise TriggerDeclarationError(f"unknown condition {self.op!r}")

    def matches(self, value: Any, now: datetime) -> bool:
        """The same condition in Python, for re-checking a record that was read."""
        if self.op == "eq":
            return value == self.value
        if self.op == "ne":
            return value != self.value
        if self.op == "in":
            return value in self.value
        if value is None:
            return False
        if self.op == "older_than":
            return as_utc(value) < now - self.value
        if self.op == "past":
            return as_utc(value) <= now
        raise TriggerDeclarationError(f"unknown condition {self.op!r}")


def eq(value: Any) -> Condition:
    return Condition("eq", value)


def ne(value: Any) -> Condition:
    return Condition("ne", value)


def one_of(*values: Any) -> Condition:
    return Condition("in", tuple(values))


def older_than(**delta: float) -> Condition:
    """Timestamp column more than ``timedelta(**delta)`` in the past."""
    return Condition("older_than", timedelta(**delta))


def past() -> Condition:
    """Timestamp column at or before now."""
    return Condition("past")


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """What to tell the outside world about a transition; goes to the outbox in its transaction."""

    payload: dict[str, Any]
    channel: str = "webhook"
    dedupe_key: str | None = None  # default: "<trigger>:<record id>"


@dataclass(frozen=True)
class Transition:
    """An action's result: column values to set (compare-and-set) and an optional notification."""

    values: dict[str, Any]
    notification: Notification | None = None


@dataclass
class ActionContext:
    """Handed to actions: the open transaction (for side rows), the clock, who acts and for what."""

    conn: sa.Connection
    now: datetime
    trigger: str
    actor: str | None
    run_id: str | None
    attempt: int


# (table, now) -> value per column: a constant, None, or a SQL expression over the row.
Values = Callable[[sa.Table, sa.ColumnElement], Mapping[str, Any]]
# (table, now) -> the notification payload's fields, as SQL expressions over the updated row.
Payload = Callable[[sa.Table, sa.ColumnElement], Mapping[str, Any]]


@dataclass(frozen=True)
class SqlAction:
    """A trigger action written as SQL, for the one-statement chunk on PostgreSQL.

    ``values`` and ``payload`` get the table and a bound ``now`` (the chunk's clock, the same
    value the Python action sees as ``ctx.now``). The payload is built from the row as updated
    (``RETURNING``), so it should read columns the transition does not change. ``dedupe_key``
    defaults to ``"<trigger>:<id>"``, the Python path's default.

    Only for actions that cannot fail per record: the statement moves every matching record of
    the chunk or, on an error, none (the chunk is then redone by the Python action, record by
    record). ``chunk_size`` records per statement and commit: a statement costs a commit and a
    plan, so chunks are larger than the Python paths' ``commit_every``.
    """

    values: Values
    payload: Payload | None = None
    dedupe_key: Callable[[sa.Table], sa.ColumnElement] | None = None
    channel: str = "webhook"
    chunk_size: int = 5000


Action = Callable[[Mapping[str, Any], ActionContext], Transition]
ErrorAction = Callable[[Mapping[str, Any], ActionContext, str], Transition | None]
Tenants = Sequence[str] | Callable[[sa.Connection], Sequence[str]]


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger. ``where`` maps column names to a value (equality) or a ``Condition``."""

    name: str
    table: sa.Table
    where: Mapping[str, Any]
    action: Action
    description: str = ""
    interval_seconds: int | None = 30
    cron: str | None = None
    batch_size: int = 500
    max_per_tick: int = 10_000
    max_attempts: int = 1
    on_error: ErrorAction | None = None
    trigger_once: bool = True
    tenants: Tenants | None = None
    tenant_column: str | None = None
    actor: str | None = None
    pool: str | None = None
    queue: str | None = None
    # Columns whose read value must be unchanged at update time, beyond ``where`` itself.
    cas_columns: tuple[str, ...] = ()
    commit_every: int = 100
    # The action only computes a Transition from the record (no ``ctx.conn``, no side effects),
    # so the worker may run a chunk set-based: all actions first, then one compare-and-set
    # ``UPDATE … WHERE id IN (…) AND <where> RETURNING id``. A pure action that touches
    # ``ctx.conn`` anyway sends its chunk down the per-record path.
    pure_action: bool = False
    # The same action as SQL: on PostgreSQL a chunk is then one statement (``sql_statement``).
    sql_action: SqlAction | None = None
    conditions: dict[str, Condition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise TriggerDeclarationError(
                f"trigger {self.name!r} is declared wrongly: " + "; ".join(problems)
            )
        conds = {col: (v if isinstance(v, Condition) else eq(v)) for col, v in self.where.items()}
        object.__setattr__(self, "conditions", conds)

    def _problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            out.append("name must be lower_snake_case (letters, digits, underscores)")
        columns = set(self.table.c.keys())
        if "id" not in columns:
            out.append(f"table {self.table.name!r} has no 'id' column to scan by")
        if not self.where:
            out.append("'where' is empty (a trigger must select records)")
        for col in [*self.where, *self.cas_columns, *filter(None, [self.tenant_column])]:
            if col not in columns:
                known = ", ".join(sorted(columns))
                out.append(f"unknown column {col!r} in table {self.table.name!r} (has: {known})")
        for key in ("batch_size", "max_per_tick", "max_attempts", "commit_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                out.append(f"{key} must be a positive integer, got {value!r}")
        if self.cron is None and self.interval_seconds is None:
            out.append("give either interval_seconds or cron")
        if self.cron is not None and not croniter.is_valid(self.cron):
            out.append(f"invalid cron expression {self.cron!r}")
        if self.cron is None and (
            not isinstance(self.interval_seconds, int) or self.interval_seconds <= 0
        ):
            out.append(
                f"interval_seconds must be a positive integer, got {self.interval_seconds!r}"
            )
        if self.tenants is not None and self.tenant_column is None:
            out.append("tenants given without tenant_column")
        if not callable(self.action):
            out.append("action must be callable")
        if self.sql_action is not None:
            now = sa.bindparam("now", type_=sa.DateTime(timezone=True))
            for col in self.sql_action.values(self.table, now):
                if col not in columns:
                    out.append(f"sql_action sets unknown column {col!r} of {self.table.name!r}")
            if not isinstance(self.sql_action.chunk_size, int) or self.sql_action.chunk_size <= 0:
                out.append("sql_action.chunk_size must be a positive integer")
        return out

    @property
    def job_name(self) -> str:
        return self.name

    def where_clause(self, now: datetime) -> sa.ColumnElement[bool]:
        return sa.and_(*(c.clause(self.table.c[col], now) for col, c in self.conditions.items()))

    def matches(self, record: Mapping[str, Any], now: datetime) -> bool:
        return all(c.matches(record[col], now) for col, c in self.conditions.items())

    def tenant_list(self, conn: sa.Connection) -> list[str | None]:
        if self.tenants is None:
            return [None]
        tenants = self.tenants(conn) if callable(self.tenants) else self.tenants
        return list(tenants)
