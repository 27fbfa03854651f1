"""This area's jobs, schedules and sensors, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.gateways.ops import poll_devices_tick
from orchestration.gateways.sensors import POLL_JOB, poll_devices_sensor
from orchestration.policies.recipes import recipe
from orchestration.tags import KIND_TAG


@dg.job(
    name=POLL_JOB,
    description="One gateway-coordination tick: poll tasks for due targets routed by partition "
    "and domain, failover of tasks whose gateway lease expired, device status recorded.",
    executor_def=dg.in_process_executor,
    # A tick is idempotent (leases, fencing tokens): safe under the step retry policy.
    **recipe("api_call").job_kwargs(**{KIND_TAG: "gateways"}),
)
def poll_devices_job() -> None:
    poll_devices_tick()


defs = dg.Definitions(jobs=[poll_devices_job], sensors=[poll_devices_sensor])
