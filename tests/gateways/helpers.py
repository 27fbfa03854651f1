"""Small helpers shared by the gateways tests."""

from __future__ import annotations

import dagster as dg

from orchestration.gateways.sensors import poll_devices_sensor
from resources.record_store import RecordStoreResource


def evaluate_sensor(instance: dg.DagsterInstance, store_url: str) -> dg.SensorExecutionData:
    """One real evaluation of ``poll_devices_sensor`` on ``instance`` against the store."""
    context = dg.build_sensor_context(
        instance=instance, resources={"record_store": RecordStoreResource(url=store_url)}
    )
    return poll_devices_sensor.evaluate_tick(context)
