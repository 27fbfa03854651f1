"""This area's assets, jobs, schedules and sensors, merged into the code location by
``orchestration/definitions.py``.

Every trigger in ``catalog.TRIGGERS`` gets its job (``jobs.TRIGGER_JOBS``; the ``trace_summaries``
asset is the worker of ``refresh_trace_summaries``) and a sensor, or a schedule for cron triggers;
every scheduled action a job and a schedule. The notifier is bound here under
``triggers_notifier``.
"""

import dagster as dg

from orchestration.triggers.catalog import TRIGGERS
from orchestration.triggers.jobs import ACTION_JOBS, TRIGGER_JOBS
from orchestration.triggers.ops import NOTIFIER_KEY, trace_summaries
from orchestration.triggers.scheduled import SCHEDULED_ACTIONS
from orchestration.triggers.schedules import build_action_schedule, build_trigger_schedule
from orchestration.triggers.sensors import build_sensor
from resources.notifier import TriggersNotifierResource

defs = dg.Definitions(
    assets=[trace_summaries],
    jobs=[job for job, _op_name in TRIGGER_JOBS.values()] + list(ACTION_JOBS.values()),
    schedules=[
        *(build_trigger_schedule(s, *TRIGGER_JOBS[s.name]) for s in TRIGGERS.values() if s.cron),
        *(build_action_schedule(item, ACTION_JOBS[item.name]) for item in SCHEDULED_ACTIONS),
    ],
    sensors=[build_sensor(s, *TRIGGER_JOBS[s.name]) for s in TRIGGERS.values() if not s.cron],
    resources={NOTIFIER_KEY: TriggersNotifierResource()},
)
