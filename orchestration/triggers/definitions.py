"""This area's jobs, schedules and sensors, merged into the code location by definitions.py.

Every trigger in ``catalog.TRIGGERS`` gets a worker job and a sensor (or a schedule for cron
triggers); ``refresh_trace_summaries`` uses the ``trace_summaries`` asset as its worker. The
notifier is bound here under ``triggers_notifier``.
"""

import dagster as dg

from assets.trace_summaries import ASSET_NAME, refresh_trace_summaries_job, trace_summaries
from orchestration.triggers.catalog import REFRESH_TRACE_SUMMARIES, TRIGGERS
from orchestration.triggers.dagster_defs import NOTIFIER_KEY, build_trigger_defs
from orchestration.triggers.scheduled import SCHEDULED_ACTIONS, build_scheduled_action
from resources.notifier import TriggersNotifierResource

_parts = [
    build_trigger_defs(spec)
    for spec in TRIGGERS.values()
    if spec.name != REFRESH_TRACE_SUMMARIES.name
]
_parts.append(
    build_trigger_defs(REFRESH_TRACE_SUMMARIES, job=refresh_trace_summaries_job, op_name=ASSET_NAME)
)
_parts += [build_scheduled_action(item) for item in SCHEDULED_ACTIONS]

defs = dg.Definitions.merge(
    *_parts,
    dg.Definitions(assets=[trace_summaries], resources={NOTIFIER_KEY: TriggersNotifierResource()}),
)
