"""The maintenance code location plus the outbox sweep (``deliver_trigger_notifications``) and
its every-minute schedule: the daemon test's one daemon then also launches a run that uses the
record store, so the store's automatic upgrade is proven under a real daemon.

A module of its own: ``code_location.py`` is what the schedule tests compare with the shipped
maintenance schedules, one more schedule there would change their answer.
"""

import dagster as dg

from orchestration.maintenance import definitions as maintenance
from orchestration.resources import build_resources
from orchestration.triggers.jobs import ACTION_JOBS
from orchestration.triggers.ops import NOTIFIER_KEY
from orchestration.triggers.scheduled import SCHEDULED_ACTIONS
from orchestration.triggers.schedules import build_action_schedule
from resources.notifier import TriggersNotifierResource

(SWEEP,) = (item for item in SCHEDULED_ACTIONS if item.name == "deliver_trigger_notifications")
SWEEP_JOB = ACTION_JOBS[SWEEP.name]

defs = dg.Definitions.merge(
    maintenance.defs,
    dg.Definitions(
        jobs=[SWEEP_JOB],
        schedules=[build_action_schedule(SWEEP, SWEEP_JOB)],
        resources={**build_resources(), NOTIFIER_KEY: TriggersNotifierResource()},
    ),
)
