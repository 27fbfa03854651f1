"""This area's jobs, schedules and sensors, merged into the code location by definitions.py."""

import dagster as dg

defs = dg.Definitions()
