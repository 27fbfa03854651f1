"""A chunk's lock timeouts: name what was waited on, and stop waiting after a few.

A row another session holds makes the chunk's ``UPDATE`` (or its ``FOR UPDATE``) wait up to the
engine's ``lock_timeout``. Each timeout is logged naming the table, the held record ids and the
holding session; after ``LOCK_TIMEOUT_ATTEMPTS`` the worker redoes the chunk the Python way, whose
read skips locked rows, and the held rows are reported skipped (a later pass finds them again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from orchestration.triggers.chunk import Outcome, id_in
from orchestration.triggers.spec import TriggerSpec, utcnow
from resources.db import reason

Log = Callable[[str], None]

# Lock timeouts on one chunk before it is redone skipping the rows another session holds.
LOCK_TIMEOUT_ATTEMPTS = 3


def _lock_holders(engine: sa.Engine, spec: TriggerSpec, ids: list[int]) -> tuple[list[int], str]:
    """Which of the chunk's due records another session holds, and who (PostgreSQL; cheap).

    Due ids minus those ``FOR UPDATE SKIP LOCKED`` returns are the held ones; a held row's
    ``xmax`` is its locker's transaction id, whose lock in ``pg_locks`` names the backend pid.
    Read in a transaction that is rolled back at once; it never waits for a row.
    """
    t = spec.table
    with engine.connect() as conn:
        now = utcnow()
        due = sa.select(t.c.id).where(id_in(conn, t.c.id, ids), spec.where_clause(now))
        every = set(conn.execute(due).scalars())
        free = set(conn.execute(due.with_for_update(skip_locked=True)).scalars())
        held = sorted(every - free)
        who = "holder unknown"
        if held:
            name = conn.dialect.identifier_preparer.format_table(t)
            rows = conn.execute(
                sa.text(
                    "SELECT DISTINCT a.pid, a.state, a.application_name, a.xact_start "
                    f"FROM {name} r JOIN pg_locks l ON l.locktype = 'transactionid' "
                    "AND l.transactionid = r.xmax AND l.granted "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE r.id = ANY(:ids)"
                ),
                {"ids": held},
            ).all()
            if rows:
                who = "; ".join(
                    f"pid {pid} ({state or '?'}, application {app or '?'!r}, transaction open "
                    f"since {start.isoformat(timespec='seconds') if start else '?'})"
                    for pid, state, app, start in rows
                )
        conn.rollback()
    return held, who


def _ids_text(ids: list[int], most: int = 50) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f" … ({len(ids)} in all)" if len(ids) > most else "")


@dataclass
class LockWatch:
    """A chunk's lock timeouts: what was waited on, and when to stop waiting for it."""

    spec: TriggerSpec
    engine: sa.Engine
    part: list[int]
    log: Log | None
    timeouts: int = 0
    held: list[int] = field(default_factory=list)
    who: str = ""
    lost_connection: bool = False

    @property
    def skip_locked(self) -> bool:
        return self.timeouts >= LOCK_TIMEOUT_ATTEMPTS

    def saw(self, exc: BaseException) -> None:
        """A lock timeout: name the table, the held record ids and their holder in the log."""
        self.timeouts += 1
        try:
            self.held, self.who = _lock_holders(self.engine, self.spec, self.part)
        except Exception as diag_exc:  # the diagnosis must never hide the real failure
            self.held, self.who = [], f"holder not found ({reason(diag_exc)})"
        if self.log:
            then = (
                "next attempt skips the rows held"
                if self.skip_locked
                else f"retried whole ({self.timeouts} of {LOCK_TIMEOUT_ATTEMPTS} lock timeouts)"
            )
            self.log(
                f"chunk {self.part[0]}..{self.part[-1]}: waited past lock_timeout for table "
                f"{self.spec.table.name}, record(s) {_ids_text(self.held) or '?'} held by another "
                f"session: {self.who}; {then}"
            )

    def name_skipped(self, outcomes: list[Outcome]) -> list[Outcome]:
        """After a skip-locked pass: the held records that were skipped say why."""
        held = set(self.held)
        note = f"locked by another session past lock_timeout ({self.who}); left for a later pass"
        skipped = []
        for o in outcomes:
            if o.status == "skipped" and o.record_id in held and o.error is None:
                o.error = note
                skipped.append(o.record_id)
        if skipped and self.log:
            self.log(
                f"chunk {self.part[0]}..{self.part[-1]}: skipped {len(skipped)} record(s) of "
                f"{self.spec.table.name} locked by another session ({self.who}): "
                f"{_ids_text(skipped)}; the rest committed, these move on a later pass"
            )
        return outcomes
