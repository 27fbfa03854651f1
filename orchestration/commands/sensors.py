"""``command_dispatch_sensor``: every minute, create the due command runs and launch them.

The cursor is the previous tick's time, so the window of slots is "since the last tick" (capped
at ``MAX_CATCHUP``): a dispatcher down for a while runs each schedule's latest missed slot once.
The database, not the cursor, is what guarantees one run per slot (the cursor is saved only after
the tick's runs are submitted, so a tick may be evaluated again). Each tick also runs the reaper
(``reaper.py``): command runs whose worker died are closed as ``lost``/``cancelled`` with an event.

Nothing one part of the tick does stops the others: the reaper runs *first* (a dispatch that fails
can never keep dead workers open) and its own failure is logged, not raised; a schedule that
cannot be dispatched is logged by name with its error and the other schedules still run.
"""

from datetime import datetime, timedelta

import dagster as dg

from orchestration.commands import dispatch, reaper, store
from orchestration.commands.jobs import run_commands_job
from orchestration.commands.timeutil import utcnow
from orchestration.tags import KIND_TAG
from resources.record_store import RecordStoreResource

MAX_CATCHUP = timedelta(hours=24)
BATCH_SIZE = 500  # command runs per Dagster run (one step each)
MAX_RUNS_PER_TICK = 5000
ORPHAN_AFTER = timedelta(minutes=10)
BATCH_TAG = "platform/command-batch"
FINISHED = {
    dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
}  # fmt: skip


def batch_run_request(key: str, ids: list[int]) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=key,
        run_config={"ops": {"plan_command_runs": {"config": {"command_run_ids": ids}}}},
        tags={KIND_TAG: "commands", BATCH_TAG: key},
    )


def _batch_time(key: str) -> datetime | None:
    try:
        stamp = key[len(dispatch.BATCH_PREFIX) :].split(":", 1)[0]
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=utcnow().tzinfo)
    except ValueError:
        return None


def reap_dead_workers(context: dg.SensorEvaluationContext, engine, now: datetime) -> int:
    """The reaper, isolated: its failure is one error line in the tick's log, never the tick's."""
    try:
        lost_runs = reaper.reap(context.instance, engine, now)
    except Exception as exc:  # the dispatch below must run whatever happened here
        context.log.error(f"reaper failed this tick (dispatch goes on): {dispatch.describe(exc)}")
        return 0
    for lost in lost_runs:
        context.log.warning(
            f"command run {lost.command_run_id} {lost.status}: {lost.message}"
            + (f" ({lost.orphans})" if lost.orphans else "")
        )
    return len(lost_runs)


def reap_orphans(instance: dg.DagsterInstance, engine, batches: dict[str, list[int]], now) -> int:
    """Cancel runs of a batch whose Dagster run finished without reaching them (e.g. terminated)."""
    reaped = 0
    for key, ids in list(batches.items()):
        born = _batch_time(key)
        if born is None or now - born < ORPHAN_AFTER:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: key}), limit=1)
        if runs and runs[0].status in FINISHED:
            reaped += store.cancel_unstarted(
                engine, ids, f"batch run {runs[0].run_id} ended {runs[0].status.value} before it"
            )
            del batches[key]
    return reaped


@dg.sensor(
    name="command_dispatch_sensor",
    job=run_commands_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute: one command run per due (schedule, environment, cron slot) and "
    "every 'run in N seconds' request now due, launched in batches of run_commands.",
)
def command_dispatch_sensor(
    context: dg.SensorEvaluationContext, record_store: RecordStoreResource
) -> dg.SensorResult:
    engine = record_store.engine()
    now = utcnow()
    reaped = reap_dead_workers(context, engine, now)
    start = dispatch.window_start_for(context.cursor, now, MAX_CATCHUP)
    result = dispatch.tick(engine, now, start, batch_size=BATCH_SIZE, max_runs=MAX_RUNS_PER_TICK)
    for error in result.errors:
        context.log.error(f"{error}; fix it in the catalog or with `set-schedule`")
    reaped += reap_orphans(context.instance, engine, result.batches, now)
    queued = sum(len(ids) for ids in result.batches.values())
    context.log.info(
        f"window ({start.isoformat()}, {now.isoformat()}]: {result.considered} schedule row(s), "
        f"{result.created} new command run(s), {queued} queued in {len(result.batches)} batch(es)"
        + (f", {reaped} run(s) of dead workers closed" if reaped else "")
        + (f", {len(result.errors)} schedule(s) skipped (errors above)" if result.errors else "")
    )
    requests = [batch_run_request(k, ids) for k, ids in sorted(result.batches.items())]
    if not requests:
        return dg.SensorResult(skip_reason="no command runs due", cursor=now.isoformat())
    return dg.SensorResult(run_requests=requests, cursor=now.isoformat())
