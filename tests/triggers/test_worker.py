"""The worker on both record-store backends: transitions, skips, attempts, on_error, outbox."""

from datetime import timedelta

import sqlalchemy as sa

from dev.seed import seed_alerts, seed_packages, seed_traces
from orchestration.triggers import actions, per_record, set_based, sql_statement
from orchestration.triggers.catalog import ESCALATE_ALERTS, EXPIRE_PACKAGES, REFRESH_TRACE_SUMMARIES
from orchestration.triggers.models import alerts, trace_summaries, traces, trigger_attempts
from orchestration.triggers.spec import Notification, Transition, TriggerSpec, older_than, utcnow
from orchestration.triggers.worker import ChunkPath, chunk_paths, process_batch, run_trigger
from resources.notifier import OutboxDelivery
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import alert_states, history, outbox


def test_escalates_due_alerts_once_with_one_notification_each(engine):
    seed_alerts(engine, due=5, fresh=2, resolved=1)
    with WebhookReceiver() as hook:
        delivery = OutboxDelivery(webhook_url=hook.url)
        deliver = lambda eng, keys: delivery.deliver_pending(eng, keys)  # noqa: E731
        first = process_batch(ESCALATE_ALERTS, engine, range(1, 9), run_id="r1", deliver=deliver)
        second = process_batch(ESCALATE_ALERTS, engine, range(1, 9), run_id="r2", deliver=deliver)
        posts = list(hook.posts)
    assert first.ids("succeeded") == [1, 2, 3, 4, 5]
    assert first.ids("skipped") == [6, 7, 8]  # fresh and resolved never matched
    assert second.counts()["succeeded"] == 0  # running twice = running once
    states = alert_states(engine)
    assert [states[i] for i in range(1, 9)] == ["escalated"] * 5 + ["pending"] * 2 + ["resolved"]
    rows = outbox(engine)
    assert sorted(r.dedupe_key for r in rows) == [f"escalate_alerts:{i}" for i in range(1, 6)]
    assert all(r.delivered_at is not None for r in rows)
    assert sorted(k for k, _ in posts) == [f"escalate_alerts:{i}" for i in range(1, 6)]
    assert posts[0][1]["event"] == "alert.escalated"
    hist = history(engine, "escalate_alerts")
    assert [(h.record_id, h.attempt, h.status, h.run_id) for h in hist] == [
        (i, 1, "succeeded", "r1") for i in range(1, 6)
    ]
    assert hist[0].actor == "system:alert-escalation"


def test_record_that_stops_matching_before_its_turn_is_skipped(engine):
    seed_alerts(engine, due=3)
    with engine.begin() as conn:
        conn.execute(alerts.update().where(alerts.c.id == 2).values(state="resolved"))
    result = run_trigger(ESCALATE_ALERTS, [1, 2, 3], engine=engine)
    assert result.ids("succeeded") == [1, 3]
    assert result.ids("skipped") == [2]
    assert alert_states(engine)[2] == "resolved"
    assert {r.dedupe_key for r in outbox(engine)} == {"escalate_alerts:1", "escalate_alerts:3"}


def _flaky_spec(fail_ids: set[int], max_attempts: int) -> TriggerSpec:
    def action(record, ctx):
        if record["id"] in fail_ids:
            raise RuntimeError(f"boom on {record['id']}")
        return actions.escalate_alert(record, ctx)

    def on_error(record, ctx, error):
        return Transition(
            values={"state": "resolved"},
            notification=Notification({"event": "alert.escalation_failed", "error": error}),
        )

    return TriggerSpec(
        name="flaky_escalation",
        table=alerts,
        where={"state": "pending", "created_at": older_than(minutes=30)},
        action=action,
        max_attempts=max_attempts,
        on_error=on_error,
    )


def test_raising_action_records_attempts_then_on_error_and_never_retries(engine):
    seed_alerts(engine, due=3)
    spec = _flaky_spec({2}, max_attempts=2)
    first = process_batch(spec, engine, [1, 2, 3])
    assert first.counts() == {"succeeded": 2, "skipped": 0, "failed": 1, "exhausted": 0}
    assert alert_states(engine)[2] == "pending"  # the failure rolled back only record 2
    second = process_batch(spec, engine, [2])
    assert second.outcomes[0].status == "exhausted"
    assert "boom on 2" in second.outcomes[0].error
    assert alert_states(engine)[2] == "resolved"  # on_error's transition
    third = process_batch(spec, engine, [2])
    assert third.outcomes[0].status == "skipped"
    hist = [(h.record_id, h.attempt, h.status) for h in history(engine, "flaky_escalation")]
    assert (2, 1, "failed") in hist and (2, 2, "exhausted") in hist
    assert len([h for h in hist if h[0] == 2]) == 2
    assert "flaky_escalation:2:error" in {r.dedupe_key for r in outbox(engine)}


def test_exhausted_record_is_left_out_of_the_scan_even_if_it_still_matches(engine):
    from orchestration.triggers.scan import scan

    seed_alerts(engine, due=2)
    spec = _flaky_spec({1}, max_attempts=1)
    spec = TriggerSpec(**{**{f: getattr(spec, f) for f in ("name", "table", "where", "action")}})
    process_batch(spec, engine, [1, 2])  # record 1 exhausted at once, no on_error
    with engine.begin() as conn:
        conn.execute(alerts.update().values(state="pending"))  # both match again
        att = conn.execute(sa.select(trigger_attempts.c.status)).scalars().all()
        found = scan(spec, conn, None)
    assert att == ["exhausted"]
    assert [b.ids for b in found.batches] == [[2]]


def test_expired_package_token_is_refused_afterwards(engine):
    tokens = seed_packages(engine, expired=2, active=1)
    ids = sorted(tokens)
    with engine.connect() as conn:
        assert actions.check_download(conn, ids[2], tokens[ids[2]])  # valid package works
        assert not actions.check_download(conn, ids[2], "wrong-token")
    result = run_trigger(EXPIRE_PACKAGES, ids, engine=engine)
    assert result.ids("succeeded") == ids[:2]
    with engine.connect() as conn:
        assert not actions.check_download(conn, ids[0], tokens[ids[0]])
        assert actions.check_download(conn, ids[2], tokens[ids[2]])
        row = conn.execute(
            sa.text("SELECT state, download_token_hash FROM edge_packages WHERE id = :i"),
            {"i": ids[0]},
        ).one()
    assert tuple(row) == ("expired", None)


def test_trace_summary_refresh_and_version_compare_and_set(engine):
    seed_traces(engine, stale=3, fresh=1)
    result = run_trigger(REFRESH_TRACE_SUMMARIES, [1, 2, 3, 4], engine=engine)
    assert result.ids("succeeded") == [1, 2, 3]
    with engine.begin() as conn:
        summaries = {r.trace_id: r for r in conn.execute(sa.select(trace_summaries))}
        assert summaries[1].span_count == 2 and summaries[1].error_count == 1
        assert summaries[2].total_duration_ms == 12.5 + 1 + 3.0
        # A trace written again becomes stale; its summary follows the new version.
        conn.execute(
            traces.update()
            .where(traces.c.id == 2)
            .values(version=2, summary_stale=True, updated_at=utcnow() + timedelta(seconds=1))
        )
    run_trigger(REFRESH_TRACE_SUMMARIES, [2], engine=engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(trace_summaries).where(trace_summaries.c.trace_id == 2)).one()
        stale = conn.execute(sa.select(sa.func.count()).where(traces.c.summary_stale)).scalar()
    assert row.trace_version == 2
    assert stale == 0


def test_undeliverable_notification_stays_pending_and_is_swept_later(engine):
    seed_alerts(engine, due=1)
    with WebhookReceiver(status=503) as hook:
        run_trigger(ESCALATE_ALERTS, [1], engine=engine, webhook_url=hook.url)
    (row,) = outbox(engine)
    assert row.delivered_at is None and "HTTP 503" in row.last_error
    with WebhookReceiver() as hook:
        report = OutboxDelivery(webhook_url=hook.url).deliver_pending(engine)
        assert [k for k, _ in hook.posts] == ["escalate_alerts:1"]
    assert report.delivered == ["escalate_alerts:1"]
    assert outbox(engine)[0].delivered_at is not None


def test_a_chunk_larger_than_the_delivery_limit_is_delivered_whole(engine):
    """Given keys are all delivered: the sweep limit (1,000) never strands a big chunk's rows."""
    seed_alerts(engine, due=1500)
    delivery = OutboxDelivery(webhook_url=None)  # log-only delivery: marks rows delivered
    result = process_batch(
        ESCALATE_ALERTS,
        engine,
        range(1, 1501),
        commit_every=1500,
        deliver=lambda eng, keys: delivery.deliver_pending(eng, keys),
    )
    assert result.counts()["succeeded"] == 1500
    assert all(r.delivered_at is not None for r in outbox(engine))


def test_chunk_paths_pick_the_fastest_path_each_trigger_can_take():
    sql, sets, per = ChunkPath.SQL_STATEMENT, ChunkPath.SET_BASED, ChunkPath.PER_RECORD
    assert chunk_paths(ESCALATE_ALERTS, "postgresql") == (sql, sets, per)  # sql_action + pure
    assert chunk_paths(ESCALATE_ALERTS, "sqlite") == (sets, per)
    assert chunk_paths(EXPIRE_PACKAGES, "sqlite") == (sets, per)
    assert chunk_paths(REFRESH_TRACE_SUMMARIES, "postgresql") == (per,)  # uses ctx.conn
    assert chunk_paths(REFRESH_TRACE_SUMMARIES, "sqlite") == (per,)


def test_each_chunk_runs_on_the_first_path_chunk_paths_names(engine, monkeypatch):
    """The dispatcher follows the table: the path modules are spied on (still run for real)."""
    calls: list[str] = []

    def spy(module):
        real = module.run

        def run(*args, **kwargs):
            calls.append(module.__name__.rsplit(".", 1)[1])
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "run", run)

    for module in (sql_statement, set_based, per_record):
        spy(module)
    seed_alerts(engine, due=3)
    seed_traces(engine, stale=2, fresh=1)
    assert process_batch(ESCALATE_ALERTS, engine, [1, 2, 3]).ids("succeeded") == [1, 2, 3]
    assert calls == [chunk_paths(ESCALATE_ALERTS, engine.dialect.name)[0].value]
    calls.clear()
    assert process_batch(REFRESH_TRACE_SUMMARIES, engine, [1, 2]).ids("succeeded") == [1, 2]
    assert calls == ["per_record"]
