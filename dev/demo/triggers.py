"""The triggers' part of the README demo: seed due records, run each trigger job, print results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import yaml

from dev.seed import seed_alerts, seed_packages, seed_traces
from orchestration.triggers.catalog import TRIGGERS
from orchestration.triggers.jobs import TRIGGER_JOBS
from orchestration.triggers.models import alerts, edge_packages, notification_outbox, traces
from orchestration.triggers.scan import scan
from resources.record_store import DEFAULT_URL, make_engine, upgrade

REPO = Path(__file__).resolve().parents[2]


def _counts(engine: sa.Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {
            name: dict(conn.execute(sa.select(col, sa.func.count()).group_by(col)).all())
            for name, col in (
                ("alerts", alerts.c.state),
                ("edge_packages", edge_packages.c.state),
                ("traces stale", traces.c.summary_stale),
                ("notifications delivered", notification_outbox.c.delivered_at.is_not(None)),
            )
        }


def demo(env: dict[str, str], workdir: Path) -> list[str]:
    """Seed a few due records (only if none are due), then run each trigger's job once.

    Runs ``dagster job execute -j <trigger>`` with the ids the trigger's scan finds, in ``env``
    (its ``DAGSTER_HOME`` and ``RECORD_STORE_URL``; webhook via ``TRIGGERS_WEBHOOK_URL`` if set).
    When nothing is due it seeds a fresh set first, so every demo run shows transitions; records
    already transitioned are never transitioned again (the counts show it).
    """
    url = env.get("RECORD_STORE_URL") or os.environ.get("RECORD_STORE_URL") or DEFAULT_URL
    upgrade(url)
    engine = make_engine(url)
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"triggers: record store {url.split('?')[0]}"]
    with engine.connect() as conn:
        due = {name: scan(spec, conn, None).batches for name, spec in TRIGGERS.items()}
    if not any(due.values()):
        seed_alerts(engine, due=12, fresh=3, resolved=5)
        seed_packages(engine, expired=4, active=2)
        seed_traces(engine, stale=6, fresh=2)
        lines.append("  seeded 12 due alerts, 4 expired packages, 6 stale traces")
        with engine.connect() as conn:
            due = {name: scan(spec, conn, None).batches for name, spec in TRIGGERS.items()}
    run_env = {**os.environ, **env, "RECORD_STORE_URL": url}
    for name, batches in due.items():
        ids = [i for b in batches for i in b.ids]
        if not ids:
            lines.append(f"  {name}: nothing due")
            continue
        _job, op = TRIGGER_JOBS[name]  # the op (or asset) whose config takes the ids
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"ops": {op: {"config": {"record_ids": ids}}}}))
        cmd = [
            sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
            "-j", name, "-c", str(config),
        ]  # fmt: skip
        log = workdir / f"{name}.log"
        with open(log, "wb") as out:
            code = subprocess.call(cmd, cwd=REPO, env=run_env, stdout=out, stderr=subprocess.STDOUT)
        verdict = "SUCCESS" if code == 0 else f"FAILED (exit {code}, log {log})"
        lines.append(f"  {name}: {len(ids)} record(s) due -> {verdict}")
    for table, counts in _counts(engine).items():
        lines.append(f"  {table}: {counts}")
    engine.dispose()
    return lines


if __name__ == "__main__":
    print("\n".join(demo(dict(os.environ), REPO / ".demo" / "triggers")))
