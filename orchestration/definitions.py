"""The one code location: every area's definitions merged, resources bound once.

``dagster job execute -m orchestration.definitions -j <job>`` and ``dagster dev`` (workspace.yaml)
both load ``defs`` from here.
"""

from __future__ import annotations

import dagster as dg

from orchestration.release import jobs as release_jobs
from orchestration.resources import build_resources

defs = dg.Definitions.merge(
    release_jobs.defs,
    dg.Definitions(resources=build_resources()),
)
