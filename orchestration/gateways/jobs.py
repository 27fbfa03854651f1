"""The poll_devices job: one gateway-coordination tick per run, requested by poll_devices_sensor."""

import dagster as dg

from orchestration.gateways.ops import poll_devices_tick
from orchestration.policies.recipes import job_settings

POLL_JOB = "poll_devices"


@dg.job(
    **job_settings(
        POLL_JOB,
        description="One gateway-coordination tick: poll tasks for due targets routed by "
        "partition and domain, failover of tasks whose gateway lease expired, device status "
        "recorded.",
        # A tick is idempotent (leases, fencing tokens): safe under the step retry policy.
        recipe="api_call",
        kind="gateways",
    )
)
def poll_devices_job() -> None:
    poll_devices_tick()
