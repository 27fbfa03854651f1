"""The schedules of cron triggers and of scheduled actions, through ``policies.scheduling``."""

import dagster as dg

from orchestration.policies.scheduling import cron_schedule
from orchestration.triggers import scan as scan_lib
from orchestration.triggers.ops import action_op_name
from orchestration.triggers.runs import in_flight_ids, run_requests
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
    """A scheduled action on its cron, with its declared input as the op's config."""
    return cron_schedule(
        job,
        cron=item.cron,
        name=f"{item.name}_schedule",
        description=f"{item.description or item.name} ({item.cron})",
        run_config={"ops": {action_op_name(item): {"config": {"input": item.input}}}},
    )
