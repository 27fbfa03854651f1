"""The schedules of cron triggers and of scheduled actions, through ``policies.scheduling``."""

import dagster as dg

from orchestration.policies.scheduling import cron_schedule
from orchestration.triggers import scan as scan_lib
from orchestration.triggers.ops import action_op_name
from orchestration.triggers.runs import UNFINISHED_RUN_STATUSES, in_flight_ids, run_requests
from orchestration.triggers.scheduled import ScheduledAction
from orchestration.triggers.spec import TriggerSpec
from resources.record_store import RecordStoreResource


def build_trigger_schedule(spec: TriggerSpec, job, op_name: str) -> dg.ScheduleDefinition:
    """A cron trigger: each tick scans every matching record (a full pass, keyed by the tick)
    and asks for one run per batch; ``trigger_once`` leaves out ids of unfinished runs."""

    def trigger_schedule(context: dg.ScheduleEvaluationContext, record_store: RecordStoreResource):
        busy = in_flight_ids(context.instance, spec, op_name) if spec.trigger_once else set()
        tick = int(context.scheduled_execution_time.timestamp())
        with record_store.clear_errors(), record_store.engine().connect() as conn:
            found = scan_lib.scan(spec, conn, None, busy, pass_no=tick)
        if not found.batches:
            return dg.SkipReason("nothing due")
        return run_requests(spec, op_name, found.batches)

    assert spec.cron is not None, f"trigger {spec.name!r} has no cron"
    return cron_schedule(
        job,
        cron=spec.cron,
        name=f"{spec.name}_schedule",
        description=f"Runs trigger {spec.name!r} on cron {spec.cron!r}: every matching record, "
        f"in runs of {spec.batch_size}.",
        execution_fn=trigger_schedule,
    )


def build_action_schedule(item: ScheduledAction, job: dg.JobDefinition) -> dg.ScheduleDefinition:
    """A scheduled action on its cron, with its declared input as the op's config.

    A tick while an earlier run of the action is unfinished is skipped (the reason names that
    run): a sweep that outlasts its interval (a receiver that hangs) must not start another
    every minute, each holding connections to the same receiver and a slot of the queue.
    """
    run_config = {"ops": {action_op_name(item): {"config": {"input": item.input}}}}

    def action_schedule(context: dg.ScheduleEvaluationContext):
        unfinished = context.instance.get_run_records(
            dg.RunsFilter(job_name=job.name, statuses=list(UNFINISHED_RUN_STATUSES)), limit=1
        )
        if unfinished:
            run = unfinished[0].dagster_run
            return dg.SkipReason(
                f"run {run.run_id} of {job.name} is still {run.status.value.lower()}: one at a "
                "time (the next tick after it ends starts the next run)"
            )
        return dg.RunRequest(run_config=run_config)

    return cron_schedule(
        job,
        cron=item.cron,
        name=f"{item.name}_schedule",
        description=f"{item.description or item.name} ({item.cron}); skipped while a run of it "
        "is unfinished",
        execution_fn=action_schedule,
    )
