"""The scheduled outbox sweep as a real job run: pending notifications are delivered once."""

import dagster as dg

from dev.seed import seed_alerts
from orchestration.definitions import defs
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.worker import process_batch
from resources.notifier import TriggersNotifierResource
from resources.record_store import RecordStoreResource
from tests.triggers.helpers import WebhookReceiver, outbox


def test_deliver_trigger_notifications_job_sweeps_the_outbox(store_url, engine):
    seed_alerts(engine, due=3)
    process_batch(ESCALATE_ALERTS, engine, [1, 2, 3])  # no deliverer: the rows stay pending
    assert all(r.delivered_at is None for r in outbox(engine))
    job = defs.get_job_def("deliver_trigger_notifications")
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        resources = {
            "record_store": RecordStoreResource(url=store_url),
            "triggers_notifier": TriggersNotifierResource(webhook_url=hook.url),
        }
        config = {"ops": {"deliver_trigger_notifications_action": {"config": {"input": {}}}}}
        first = job.execute_in_process(run_config=config, instance=instance, resources=resources)
        second = job.execute_in_process(run_config=config, instance=instance, resources=resources)
        keys = hook.key_counts()
    assert first.success and second.success
    (out,) = [e for e in first.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert out.event_specific_data.metadata["delivered"].value == 3
    assert keys == {f"escalate_alerts:{i}": 1 for i in (1, 2, 3)}  # the second run sent nothing
    assert all(r.delivered_at is not None for r in outbox(engine))
