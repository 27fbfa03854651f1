"""The sensor of each interval trigger: a keyset scan from its cursor, one run per batch."""

import dagster as dg

from orchestration.triggers import scan as scan_lib
from orchestration.triggers.runs import in_flight_ids, run_requests
from orchestration.triggers.spec import TriggerSpec
from resources.record_store import RecordStoreResource


def build_sensor(spec: TriggerSpec, job, op_name: str) -> dg.SensorDefinition:
    """Scans from the cursor (at most ``max_per_tick`` records) and asks for one run per batch,
    each with a ``run_key``; with ``trigger_once`` it first leaves out the ids of the trigger's
    unfinished runs (read from their run config at ``op_name``)."""

    @dg.sensor(
        name=f"{spec.name}_sensor",
        job=job,
        minimum_interval_seconds=spec.interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Finds records matching trigger {spec.name!r} (keyset scan from the cursor, "
        f"at most {spec.max_per_tick} per tick) and requests one run per {spec.batch_size}.",
    )
    def trigger_sensor(context: dg.SensorEvaluationContext, record_store: RecordStoreResource):
        busy = in_flight_ids(context.instance, spec, op_name) if spec.trigger_once else set()
        # An outage mid-tick: "record store unreachable at <host:port/db>" is the tick's headline.
        with record_store.clear_errors(), record_store.engine().connect() as conn:
            found = scan_lib.scan(spec, conn, context.cursor, busy)
        if not found.batches:
            return dg.SensorResult(
                skip_reason=f"nothing due ({found.skipped_in_flight} in flight)",
                cursor=found.cursor,
            )
        return dg.SensorResult(
            run_requests=run_requests(spec, op_name, found.batches), cursor=found.cursor
        )

    return trigger_sensor
