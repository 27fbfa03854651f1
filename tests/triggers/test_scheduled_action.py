"""The scheduled outbox sweep as a real job run: pending notifications are delivered once."""

import dagster as dg

from dev.seed import seed_alerts
from orchestration.definitions import defs
from orchestration.triggers.catalog import ESCALATE_ALERTS
from orchestration.triggers.scheduled import SCHEDULED_ACTIONS
from orchestration.triggers.worker import process_batch
from resources.notifier import TriggersNotifierResource
from resources.record_store import RecordStoreResource
from tests.support.results import step_metadata
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import outbox


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
    assert step_metadata(first)["delivered"] == 3
    assert keys == {f"escalate_alerts:{i}": 1 for i in (1, 2, 3)}  # the second run sent nothing
    assert all(r.delivered_at is not None for r in outbox(engine))


def test_the_sweep_schedule_skips_while_a_sweep_is_unfinished():
    """One sweep at a time: a tick while a run of the job is created or started is skipped,
    naming that run; once it has ended, the next tick asks for a run with the action's input."""
    schedule = defs.get_schedule_def("deliver_trigger_notifications_schedule")
    job = defs.get_job_def("deliver_trigger_notifications")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance)
        [request] = schedule.evaluate_tick(context).run_requests or []
        [sweep] = [a for a in SCHEDULED_ACTIONS if a.name == "deliver_trigger_notifications"]
        assert request.run_config == {
            "ops": {"deliver_trigger_notifications_action": {"config": {"input": sweep.input}}}
        }
        for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED):
            run = instance.create_run_for_job(job, run_config=request.run_config, status=status)
            result = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
            assert not result.run_requests
            assert run.run_id in (result.skip_message or "")
            instance.report_run_canceled(run)
        other = instance.create_run_for_job(
            defs.get_job_def("escalate_alerts"), status=dg.DagsterRunStatus.STARTED,
            run_config={"ops": {"escalate_alerts_worker": {"config": {"record_ids": [1]}}}},
        )  # fmt: skip
        assert other.is_finished is False
        assert schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
