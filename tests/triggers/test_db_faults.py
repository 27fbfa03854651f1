"""Database faults under the trigger worker and sensors (issue #14 §9), on real PostgreSQL.

- a session left idle holding some due rows ``FOR UPDATE``: the worker finishes within a bound,
  the other rows move, the held ones are named (ids, holder pid) and move on a later pass;
- backends killed with ``pg_terminate_backend`` mid-run, and a throwaway PostgreSQL server of the
  test's own stopped for 4 s and started again while the worker CLI runs: the work completes
  exactly once (transitions, outbox rows, deliveries);
- a record store on a closed port: every record-store sensor's error headline is "record store
  unreachable at 127.0.0.1:<port>/<db>", without the password; the CLI says it in one line.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from dev.seed import seed_alerts
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.worker import process_batch
from resources.notifier import DEFAULT_TIMEOUT_S
from resources.record_store import RecordStoreResource, make_engine, upgrade
from tests.pg_admin import terminate_backends
from tests.support.wait import wait_until
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import alert_states, moved_per_record, outbox

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Zq81-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_cli(store_url: str, ids: str, hook_url: str, commit_every: int, env=None):
    cmd = [
        sys.executable, "-m", "orchestration.triggers.worker", "--store-url", store_url,
        "--trigger", "escalate_alerts", "--ids", ids, "--webhook-url", hook_url,
        "--commit-every", str(commit_every),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- (a) a session left idle holding due rows ---------------------------------------------------


@pytest.mark.postgres
def test_rows_held_by_an_idle_session_bound_the_wait_are_named_and_move_later(
    pg_store_url, monkeypatch
):
    monkeypatch.setenv("RECORD_STORE_LOCK_TIMEOUT_MS", "200")
    engine = make_engine(pg_store_url)
    n, held = 40, [5, 17, 18, 33]  # spread over three of the four chunks
    seed_alerts(engine, due=n)
    holder = make_engine(pg_store_url).connect()
    holder_pid = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    holder.execute(
        sa.text("SELECT id FROM alerts WHERE id = ANY(:ids) FOR UPDATE"), {"ids": held}
    )  # ... and stays idle in its transaction
    lines: list[str] = []
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(
            result=process_batch(
                ESCALATE_ALERTS, engine, range(1, n + 1), run_id="r1", log=lines.append,
                commit_every=10,
            )
        ),
        daemon=True,
    )  # fmt: skip
    try:
        worker.start()
        worker.join(60)  # the holder never lets go: only the attempt limit ends the wait
        assert not worker.is_alive(), f"worker still waiting on the held rows: {lines}"
    finally:
        holder.rollback()  # release (lets a stuck pre-fix worker finish too)
        holder.close()
    worker.join(30)
    result = done["result"]
    moved = [i for i in range(1, n + 1) if i not in held]
    assert result.ids("succeeded") == moved
    assert result.ids("skipped") == held
    for o in result.outcomes:
        if o.record_id in held:
            assert "locked by another session" in o.error and f"pid {holder_pid}" in o.error
    named = [ln for ln in lines if ln.startswith("chunk ") and ": skipped " in ln]
    assert {tuple(ln.split(": ")[-1].split(";")[0].split(", ")) for ln in named} == {
        ("5",),
        ("17", "18"),
        ("33",),
    }, lines
    waited = [ln for ln in lines if "waited past lock_timeout for table alerts" in ln]
    assert waited and all(f"pid {holder_pid}" in ln for ln in waited), lines
    # The attempt limit: each chunk with a held row waits out exactly LOCK_TIMEOUT_ATTEMPTS (3)
    # lock timeouts, the last one sending it the skip-locked way; the free chunk never waits.
    then = [
        "retried whole (1 of 3 lock timeouts)",
        "retried whole (2 of 3 lock timeouts)",
        "next attempt skips the rows held",
    ]
    for chunk, ids in (("1..10", "5"), ("11..20", "17, 18"), ("31..40", "33")):
        mine = [ln for ln in waited if ln.startswith(f"chunk {chunk}: ")]
        assert [ln.rsplit("; ", 1)[1] for ln in mine] == then, lines
        assert all(f"record(s) {ids} held by another session" in ln for ln in mine), mine
    assert not [ln for ln in lines if ln.startswith("chunk 21..30")], lines
    states = alert_states(engine)
    assert [states[i] for i in held] == ["pending"] * len(held)

    # A later pass, once the holder is gone, moves exactly the held ones.
    again = process_batch(ESCALATE_ALERTS, engine, range(1, n + 1), run_id="r2")
    assert again.ids("succeeded") == held
    assert set(alert_states(engine).values()) == {"escalated"}
    assert moved_per_record(engine) == Counter(range(1, n + 1))  # nothing moved twice
    assert sorted(r.dedupe_key for r in outbox(engine)) == sorted(
        f"escalate_alerts:{i}" for i in range(1, n + 1)
    )
    engine.dispose()


# --- (b) connections killed mid-run -------------------------------------------------------------


def _assert_exactly_once(engine: sa.Engine, hook: WebhookReceiver, n: int, repeats: int) -> None:
    assert set(alert_states(engine).values()) == {"escalated"}
    assert moved_per_record(engine) == Counter(range(1, n + 1))
    rows = outbox(engine)
    assert sorted(r.dedupe_key for r in rows) == sorted(
        f"escalate_alerts:{i}" for i in range(1, n + 1)
    )
    assert all(r.delivered_at is not None for r in rows)
    keys = hook.key_counts()
    assert set(keys) == {f"escalate_alerts:{i}" for i in range(1, n + 1)}
    assert sum(keys.values()) - n <= repeats, keys  # a repeat only where a fault landed


@pytest.mark.postgres
def test_worker_cli_survives_its_backends_killed_while_delivering(pg_store_url):
    """Backends of the worker CLI (chunks and deliverer alike) killed while notifications are
    being POSTed, three times: every transition and every delivery exactly once, and no POST
    repeated (the deliverer redoes a batch whose mark failed without POSTing again what the
    receiver acknowledged)."""
    app = "db-faults-worker-cli"
    engine, admin = make_engine(pg_store_url), make_engine(pg_store_url)
    n = 60
    seed_alerts(engine, due=n)
    kills: list[int] = []
    lock = threading.Lock()

    def kill(_key):  # until three kills found backends of the worker to kill
        with lock:
            if len(kills) < 3 and (killed := terminate_backends(admin, app)):
                kills.append(killed)

    with WebhookReceiver(delay=0.01, before_answer=kill) as hook:
        proc = _worker_cli(f"{pg_store_url}&application_name={app}", f"1-{n}", hook.url, 5)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        assert len(kills) == 3, kills
        assert "retried after" in err and "attempt 1 failed, next in" in err, err[-3000:]
        _assert_exactly_once(engine, hook, n, repeats=0)
    engine.dispose()
    admin.dispose()


# --- (b) a throwaway server restarted while the worker runs -------------------------------------


@dataclass
class ThrowawayPostgres:
    bindir: str
    data: str
    port: int
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, f"{self.bindir}/pg_ctl", "-D", f"{self.data}/db", *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", f"{self.data}/log", "-w", "-o", opts, "start")

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")


def _postgres_bindir() -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return d
    found = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(found)) if found else None


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own (the shared one must never be restarted).

    Skips when the server binaries are absent, unless REQUIRE_POSTGRES=1 (CI): then it fails.
    """
    bindir = _postgres_bindir()
    prefix: list[str] = []
    if bindir and os.geteuid() == 0:  # initdb refuses root: run the server as "postgres"
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
        if not prefix:
            bindir = None
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl; as root also runuser) not found"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {message}")
        pytest.skip(message)
    data = tempfile.mkdtemp(prefix="pg-throwaway-")
    os.chmod(data, 0o777)  # a private temp dir handed to the postgres user
    if prefix:
        shutil.chown(data, "postgres", "postgres")
    server = ThrowawayPostgres(bindir, data, _free_port(), prefix)
    subprocess.run(
        [*prefix, f"{bindir}/initdb", "-D", f"{data}/db", "-A", "trust", "-U", "postgres",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", f"{data}/db", "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_worker_cli_rides_out_a_server_restart_and_completes_exactly_once(throwaway_pg):
    url = throwaway_pg.url
    upgrade(url)
    engine = make_engine(url)
    n = 60
    seed_alerts(engine, due=n)
    stopped, hold = threading.Event(), threading.Event()
    held_for: list[float] = []  # seconds each POST received after "stopped" was held

    def answer_after_the_stop(_key) -> None:  # no POST is answered between 12 and the stop
        if stopped.is_set():
            began = time.monotonic()
            hold.wait(120)
            held_for.append(time.monotonic() - began)

    with WebhookReceiver(delay=0.05, before_answer=answer_after_the_stop) as hook:
        proc = _worker_cli(url, f"1-{n}", hook.url, 5)
        wait_until(lambda: len(hook.posts) >= 12, what="12 notifications POSTed", interval=0.01)
        stopped.set()  # from here the receiver answers nothing until the server is down
        throwaway_pg.stop()
        assert len(hook.posts) < n, "the restart must land mid-run"
        hold.set()
        time.sleep(4)  # the outage itself (the scenario: a server down for 4 s), not a wait
        throwaway_pg.start()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err
        assert "retried after" in err, err[-3000:]
        engine.dispose()  # its pooled connections died with the server
        # A POST held about as long as the sender's timeout (pg_ctl stop is slow on a loaded
        # machine) may have timed out: its row stays pending and is POSTed again, one repeat
        # each. The sender's clock starts before the hold, so "about" leaves it 1 s.
        timed_out = sum(1 for held in held_for if held >= DEFAULT_TIMEOUT_S - 1.0)
        _assert_exactly_once(engine, hook, n, repeats=2 + timed_out)
    engine.dispose()


# --- (c) a clear word when the store is unreachable ---------------------------------------------


def _record_store_starters():
    """Every sensor and schedule of the code location that needs only the record store."""
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    sensors = [s for s in repo.sensor_defs if s.required_resource_keys == {"record_store"}]
    schedules = [s for s in repo.schedule_defs if s.required_resource_keys == {"record_store"}]
    return sensors, schedules


def _assert_headline(exc: BaseException, port: int) -> None:
    first = str(exc).splitlines()[0]
    assert first.startswith(f"record store unreachable at 127.0.0.1:{port}/platform"), first
    whole = "".join(traceback.format_exception(exc))
    assert PASSWORD not in whole
    assert PASSWORD[:4] not in whole


def test_record_store_sensors_and_schedules_say_unreachable_first(instance, monkeypatch):
    from dagster._core.errors import SensorExecutionError, user_code_error_boundary

    monkeypatch.setenv("RECORD_STORE_RETRY_WINDOW_S", "0")
    port = _free_port()  # closed: nothing listens
    store = RecordStoreResource(url=f"postgresql://ops:{PASSWORD}@127.0.0.1:{port}/platform")
    sensors, schedules = _record_store_starters()
    names = {s.name for s in sensors} | {s.name for s in schedules}
    assert {"escalate_alerts_sensor", "command_dispatch_sensor", "poll_devices_sensor"} <= names
    assert "refresh_trace_summaries_schedule" in names
    for sensor in sensors:
        # As the daemon runs it: the sensor's evaluation inside Dagster's user-code boundary.
        with (
            pytest.raises(Exception) as err,
            dg.build_sensor_context(instance=instance, resources={"record_store": store}) as ctx,
            user_code_error_boundary(SensorExecutionError, lambda: "generic headline"),
        ):
            sensor.evaluate_tick(ctx)
        _assert_headline(err.value, port)
        with (
            pytest.raises(Exception) as err,
            dg.build_sensor_context(instance=instance, resources={"record_store": store}) as ctx,
        ):
            sensor(ctx)
        _assert_headline(err.value, port)
    for schedule in schedules:
        with (
            pytest.raises(Exception) as err,
            dg.build_schedule_context(instance=instance, resources={"record_store": store}) as ctx,
        ):
            schedule.evaluate_tick(ctx)
        _assert_headline(err.value, port)


def test_worker_cli_on_an_unreachable_store_is_one_line(tmp_path):
    port = _free_port()
    url = f"postgresql://ops:{PASSWORD}@127.0.0.1:{port}/platform"
    proc = _worker_cli(
        url, "1-5", "http://127.0.0.1:9/hook", 5, env={"RECORD_STORE_RETRY_WINDOW_S": "1"}
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: record store unreachable at 127.0.0.1:{port}/platform"
    ), err
    assert "Traceback" not in err and PASSWORD not in err and PASSWORD not in out
    bad = _worker_cli(
        url, "1-5", "http://127.0.0.1:9/hook", 5, env={"RECORD_STORE_LOCK_TIMEOUT_MS": "5s"}
    )
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 1
    assert err.strip().splitlines() == [
        "error: RECORD_STORE_LOCK_TIMEOUT_MS='5s' is not valid: set a whole number of ms from 1 "
        "to 3600000 (bounds a wait for a lock; default 5000), or unset it"
    ]
