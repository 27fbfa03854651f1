"""This area's jobs and sensors, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.gateways.jobs import poll_devices_job
from orchestration.gateways.sensors import poll_devices_sensor

defs = dg.Definitions(jobs=[poll_devices_job], sensors=[poll_devices_sensor])
