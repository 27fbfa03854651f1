"""`dagster job execute -j escalate_alerts` as an operator runs it; twice is the same as once."""

import pytest
import yaml

from dev.seed import seed_alerts
from resources.record_store import make_engine, upgrade
from tests.job_cli import dagster_home, job_execute
from tests.support.webhook import WebhookReceiver
from tests.triggers.helpers import alert_states, outbox


@pytest.mark.slow
def test_dagster_job_execute_escalate_alerts(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(store_url)
    engine = make_engine(store_url)
    seed_alerts(engine, due=4, fresh=1)
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"ops": {"escalate_alerts_worker": {"config": {"record_ids": [1, 2, 3, 4, 5]}}}}
        )
    )
    with WebhookReceiver() as hook:
        env = {"RECORD_STORE_URL": store_url, "TRIGGERS_WEBHOOK_URL": hook.url}
        for _ in range(2):
            job_execute(home, "escalate_alerts", config, env)
        keys = hook.key_counts()
    assert [alert_states(engine)[i] for i in range(1, 6)] == ["escalated"] * 4 + ["pending"]
    assert keys == {f"escalate_alerts:{i}": 1 for i in range(1, 5)}
    assert len(outbox(engine)) == 4
    engine.dispose()
