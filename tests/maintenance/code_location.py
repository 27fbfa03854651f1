"""A code location of just this area (plus the global resources) for scheduler/daemon tests."""

import dagster as dg

from orchestration.maintenance import definitions as maintenance
from orchestration.resources import build_resources

defs = dg.Definitions.merge(maintenance.defs, dg.Definitions(resources=build_resources()))
