"""Failure notifications: one Slack-compatible webhook message per failed run, never a secret.

The run-failure sensor writes the message to the record store's outbox under the key
``run-failure:<run_id>`` (unique), then delivers pending messages. A sensor tick re-evaluated
after a crash, or a second daemon, finds the row already there: the message goes out once.
"""

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import sqlalchemy as sa

from orchestration.policies.recipes import NOTIFY_TAG
from orchestration.policies.resources import WEBHOOK_ENV, FailureNotifierConfig
from orchestration.tags import ENVIRONMENT_TAG
from resources.http_api import redact
from resources.notifier import OutboxDelivery, outbox
from resources.record_store import RecordStoreResource

CHANNEL = "run_failure"
# Values of these variables are scrubbed from anything we send, whatever the error text holds.
SECRET_ENV_VARS = ("CA_ROOT_API_KEY", "SUPABASE_ACCESS_TOKEN", WEBHOOK_ENV)


def _secrets(env: Mapping[str, str]) -> Iterable[str]:
    return [env[name] for name in SECRET_ENV_VARS if env.get(name)]


def failure_payload(
    run: dg.DagsterRun,
    failed_steps: list[str],
    error: str,
    ui_url: str,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Slack-compatible (``text`` + ``blocks``) summary of one failed run."""
    env = os.environ if env is None else env
    summary = redact(
        error.strip().splitlines()[0] if error.strip() else "no error message", _secrets(env)
    )
    summary = summary[:300]
    environment = run.tags.get(ENVIRONMENT_TAG, "unknown")
    link = f"{ui_url.rstrip('/')}/runs/{run.run_id}"
    steps = ", ".join(failed_steps) or "(run-level failure)"
    text = (
        f":red_circle: {run.job_name} failed in {environment}: {steps}: {summary} <{link}|open run>"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"run `{run.run_id}`"}],
            },
        ],
        "job": run.job_name,
        "environment": environment,
        # The job recipe's route (``ops``, ``release``): a receiver pages the right people.
        "route": run.tags.get(NOTIFY_TAG, "ops"),
        "run_id": run.run_id,
        "failed_steps": failed_steps,
        "error": summary,
        "url": link,
    }


def enqueue(engine: sa.Engine, run_id: str, payload: dict[str, Any]) -> bool:
    """Write the message unless this run already has one; True when newly written."""
    try:
        with engine.begin() as conn:
            conn.execute(
                outbox.insert().values(
                    dedupe_key=f"run-failure:{run_id}",
                    channel=CHANNEL,
                    payload=payload,
                    created_at=datetime.now(UTC),
                    attempts=0,
                )
            )
        return True
    except sa.exc.IntegrityError:
        return False


def failed_steps_of(instance: dg.DagsterInstance, run_id: str) -> tuple[list[str], str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    steps = []
    error = ""
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        steps.append(event.step_key or "")
        if not error and event.step_failure_data and event.step_failure_data.error:
            error = step_error_headline(event.step_failure_data.error)
    return steps, error


def step_error_headline(error: Any) -> str:  # Dagster's SerializableErrorInfo (not exported)
    """The step's own error. Once a step's retry policy is spent, Dagster reports the failure as
    ``Exceeded max_retries of N`` with the step's last error as its cause; an operator paged at
    night needs the cause ("HTTP 503 from POST /admin/bootstrap"), not the retry count."""
    while error.cls_name == "RetryRequestedFromPolicy" and error.cause is not None:
        error = error.cause
    return error.message


def notify_failure(
    context: dg.RunFailureSensorContext,
    record_store: RecordStoreResource,
    notifier: FailureNotifierConfig,
) -> None:
    run = context.dagster_run
    steps, error = failed_steps_of(context.instance, run.run_id)
    if not error:
        error = context.failure_event.message or ""
    payload = failure_payload(run, steps, error, notifier.ui_url)
    engine = record_store.engine()
    if enqueue(engine, run.run_id, payload):
        context.log.info(f"failure notification queued for run {run.run_id}")
    OutboxDelivery(
        webhook_url=notifier.webhook_url, channel=CHANNEL, log=context.log.info
    ).deliver_pending(engine)
