"""The one code location: every area's definitions merged, resources bound once.

``dagster job execute -m orchestration.definitions -j <job>`` and ``dagster dev`` (workspace.yaml)
both load ``defs`` from here. Each area exposes ``defs`` from its own ``definitions`` module.
"""

import dagster as dg

from orchestration.commands import definitions as commands
from orchestration.gateways import definitions as gateways
from orchestration.maintenance import definitions as maintenance
from orchestration.policies import definitions as policies
from orchestration.release import definitions as release
from orchestration.resources import build_resources
from orchestration.triggers import definitions as triggers

defs = dg.Definitions.merge(
    release.defs,
    maintenance.defs,
    triggers.defs,
    commands.defs,
    gateways.defs,
    policies.defs,
    dg.Definitions(resources=build_resources()),
)
