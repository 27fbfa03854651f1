"""`dagster job execute -j escalate_alerts` as an operator runs it; twice is the same as once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestration.triggers.seed import seed_alerts
from resources.record_store import make_engine, upgrade
from tests.triggers.helpers import WebhookReceiver, alert_states, outbox

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dagster_job_execute_escalate_alerts(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    upgrade(store_url)
    engine = make_engine(store_url)
    seed_alerts(engine, due=4, fresh=1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"ops": {"escalate_alerts_worker": {"config": {"record_ids": [1, 2, 3, 4, 5]}}}}
        )
    )
    with WebhookReceiver() as hook:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "RECORD_STORE_URL": store_url,
            "TRIGGERS_WEBHOOK_URL": hook.url,
        }
        cmd = [
            sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
            "-j", "escalate_alerts", "-c", str(config),
        ]  # fmt: skip
        for _ in range(2):
            proc = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        keys = hook.key_counts()
    assert [alert_states(engine)[i] for i in range(1, 6)] == ["escalated"] * 4 + ["pending"]
    assert keys == {f"escalate_alerts:{i}": 1 for i in range(1, 5)}
    assert len(outbox(engine)) == 4
    engine.dispose()
