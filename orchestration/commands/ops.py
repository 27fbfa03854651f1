"""Command ops: thin wiring from Dagster to the dispatch, action, pool and store functions.

Every failure they raise is final (``allow_retries=False``): the command jobs take no step retry
(recipe ``command``), and a final failure keeps its own message as the step's error (a failure
under a retry policy is reported as "Exceeded max_retries of 0", its message only in the cause).
"""

import queue
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from orchestration.commands import actions, store
from orchestration.commands import models as m
from orchestration.commands.pool import CommandPool
from orchestration.commands.resources import CommandRunnerResource
from orchestration.policies.progress import Progress
from resources.record_store import RecordStoreResource

# Batch progress (run level): the in-process executor walks a batch's steps one by one while the
# pool runs the commands concurrently, so "how far is the batch" is the number of the batch's
# commands that have finished, whichever step notices. The planning step registers the batch;
# each command's step, once its own command is done, logs done/total, rate and ETA (rate-limited
# by Progress, always the last). Output lines have no known total, so they are not the measure.
# The batch is kept on the run's pool, so it goes when the run's resources are torn down.
PROGRESS_EVERY_SECONDS = 2.0


def _report_batch(context: dg.OpExecutionContext, pool: CommandPool) -> None:
    if pool.batch is None:  # a single-command job, or a step re-executed without its plan step
        return
    ids, progress = pool.batch
    if progress.done >= progress.total:  # the last line is out already
        return
    # every id was handed to this pool by the planning step, so ensure() only looks it up
    progress.update(sum(1 for i in ids if pool.ensure(i).future.done()), context.log.info)


def _mapping_key(command_run_id: int) -> str:
    return f"run_{command_run_id}"


def _root_run_id(context: dg.OpExecutionContext) -> str:
    return context.run.root_run_id or context.run_id


def _requested_by(context: dg.OpExecutionContext) -> str:
    return context.run.tags.get("dagster/user") or f"dagster:{context.job_name}"


class BatchConfig(dg.Config):
    command_run_ids: list[int] = Field(description="Command runs this batch executes.")


@dg.op(
    out=dg.DynamicOut(int),
    description="Starts every command run of the batch on the runner pool, one step per run.",
)
def plan_command_runs(
    context: dg.OpExecutionContext,
    config: BatchConfig,
    record_store: RecordStoreResource,
    commands_runner: CommandRunnerResource,
) -> Iterator[dg.DynamicOutput[int]]:
    pool = commands_runner.pool(record_store.engine(), context.run_id)
    ids = list(dict.fromkeys(config.command_run_ids))
    for run_id in ids:
        pool.ensure(run_id)  # start now; each step below waits for its own command
    context.log.info(f"{len(ids)} command run(s) handed to the runner pool")
    pool.batch = (ids, Progress(len(ids), context.log.info, "commands", PROGRESS_EVERY_SECONDS))
    for run_id in ids:
        yield dg.DynamicOutput(run_id, mapping_key=_mapping_key(run_id))


def _stream(context: dg.OpExecutionContext, handle, limit: int, streamed: list[int]) -> None:
    while True:
        try:
            stream, line = handle.lines.get_nowait()
        except queue.Empty:
            return
        streamed[0] += 1
        if streamed[0] <= limit:
            context.log.info(f"[{stream}] {line}")


def _metadata(row: dict, result) -> dict:
    md = {
        "command_run_id": row["id"],
        "command": row["command_name"],
        "environment": row["environment_name"],
        "status": row["status"],
        "attempt": row["attempt"],
        "exit_code": row["exit_code"] if row["exit_code"] is not None else -1,
        "duration_seconds": row["duration_seconds"] or 0.0,
        "started_at": store.fmt_time(row["started_at"]),
        "dagster_run_id": row["dagster_run_id"] or "",
    }
    if row["slot"] is not None:
        md["slot"] = store.fmt_time(row["slot"])
    if result is not None:
        md["stdout_tail"] = dg.MetadataValue.text(result.stdout_tail[-4000:])
        md["stderr_tail"] = dg.MetadataValue.text(result.stderr_tail[-4000:])
    return md


@dg.op(description="Waits for one command run, streams its output, records and reports it.")
def execute_command_run(
    context: dg.OpExecutionContext,
    record_store: RecordStoreResource,
    commands_runner: CommandRunnerResource,
    command_run_id: int,
) -> int:
    engine = record_store.engine()
    pool = commands_runner.pool(engine, context.run_id)
    handle = pool.ensure(command_run_id)
    streamed = [0]
    while not handle.future.done():
        try:
            handle.future.result(timeout=0.2)
        except TimeoutError:
            pass
        except Exception:  # raised again below with its traceback
            break
        _stream(context, handle, commands_runner.stream_lines, streamed)
    _stream(context, handle, commands_runner.stream_lines, streamed)
    hidden = max(streamed[0] - commands_runner.stream_lines, 0) + handle.dropped
    if hidden:
        context.log.info(f"{hidden} more output line(s) not streamed; the tail is stored")
    outcome = handle.future.result()
    _report_batch(context, pool)
    row = store.get_run(engine, command_run_id)
    what = f"command {row['command_name']!r} in {row['environment_name']!r} (run {row['id']})"
    if not outcome.started_here:
        if row["status"] == m.RUNNING:
            raise dg.Failure(
                f"{what} is running in Dagster run {row['dagster_run_id']}", allow_retries=False
            )
        if row["status"] not in m.TERMINAL:
            raise dg.Failure(
                f"{what} is {row['status']} (not due before {row['not_before']})",
                allow_retries=False,
            )
        context.log.info(f"{what} already finished {row['status']}; not run again")
    events = store.events_for(engine, command_run_id)
    final = next((e for e in reversed(events) if e["kind"] in m.TERMINAL), None)
    if final is not None and store.NOT_STORED in (final["message"] or ""):
        context.log.warning(f"{what}: {final['message']}")  # recorded without its output
    from orchestration.commands.runner import CommandResult

    result = outcome.result
    if result is None and final is not None:
        result = CommandResult(
            row["status"], row["exit_code"], row["started_at"], row["finished_at"],
            row["duration_seconds"] or 0.0, final["stdout_tail"] or "",
            final["stderr_tail"] or "", final["message"] or "",
        )  # fmt: skip
    metadata = _metadata(row, result)
    if row["status"] != m.SUCCEEDED:
        message = (result.message if result else "") or row["status"]
        tail = (result.stderr_tail if result else "")[-3000:]
        raise dg.Failure(
            description=f"{what} {message}."
            + (f"\nstderr (tail):\n{tail}" if tail else "\n(no stderr)"),
            metadata=metadata,
            allow_retries=False,
        )
    context.log.info(f"{what} succeeded in {row['duration_seconds']}s")
    context.add_output_metadata(metadata)
    return command_run_id


class RunNowConfig(dg.Config):
    command: str = Field(description="Command name (from the catalog).")
    environment: str = Field(description="Environment name whose variables the command gets.")
    in_seconds: int = Field(
        default=0, ge=0, description="0: run in this Dagster run; N: the dispatcher runs it later."
    )


@dg.op(
    out={"command_run_id": dg.Out(int), "to_run": dg.DynamicOut(int, is_required=False)},
    description="Creates the command run (idempotent per launchpad run) and returns its id.",
)
def request_command_run(
    context: dg.OpExecutionContext,
    config: RunNowConfig,
    record_store: RecordStoreResource,
    commands_runner: CommandRunnerResource,
):
    engine = record_store.engine()
    now = config.in_seconds == 0
    try:
        run_id = actions.request_run(
            engine, config.command, config.environment, in_seconds=config.in_seconds,
            requested_by=_requested_by(context),
            request_key=f"launchpad:{_root_run_id(context)}",
            status=m.QUEUED if now else m.PENDING,
            batch_key=f"run:{context.run_id}" if now else None,
        )  # fmt: skip
    except actions.ActionError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    row = store.get_run(engine, run_id)
    context.log.info(
        f"command run {run_id}: {config.command} in {config.environment}, "
        f"{'running now' if now else 'due at ' + store.fmt_time(row['not_before'])}"
    )
    yield dg.Output(
        run_id, "command_run_id",
        metadata={"command_run_id": run_id, "not_before": store.fmt_time(row["not_before"])},
    )  # fmt: skip
    if now:
        commands_runner.pool(engine, context.run_id).ensure(run_id)
        yield dg.DynamicOutput(run_id, output_name="to_run", mapping_key=_mapping_key(run_id))


class RetryConfig(dg.Config):
    command_run_id: int = Field(description="The failed, timed-out or cancelled run to retry.")


@dg.op(
    out={"command_run_id": dg.Out(int), "to_run": dg.DynamicOut(int)},
    description="Creates the retry (retry_of, attempt + 1; one per failed run) and returns its id.",
)
def request_retry(
    context: dg.OpExecutionContext,
    config: RetryConfig,
    record_store: RecordStoreResource,
    commands_runner: CommandRunnerResource,
):
    engine = record_store.engine()
    try:
        run_id = actions.retry_run(
            engine, config.command_run_id, requested_by=_requested_by(context),
            status=m.QUEUED, batch_key=f"run:{context.run_id}",
        )  # fmt: skip
    except actions.ActionError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    row = store.get_run(engine, run_id)
    context.log.info(
        f"command run {run_id} retries {config.command_run_id} (attempt {row['attempt']})"
    )
    yield dg.Output(
        run_id, "command_run_id",
        metadata={"command_run_id": run_id, "retry_of": config.command_run_id,
                  "attempt": row["attempt"]},
    )  # fmt: skip
    commands_runner.pool(engine, context.run_id).ensure(run_id)
    yield dg.DynamicOutput(run_id, output_name="to_run", mapping_key=_mapping_key(run_id))
