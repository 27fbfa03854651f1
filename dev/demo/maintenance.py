"""The README demo's day of maintenance: each job once, with ``dagster job execute``.

Starts a BigQuery emulator of its own (seeded with quota rows on both sides of the 90-day
window), then runs quota_reset, quota_cleanup, stale_cleanup, alerts and quota_monthly for
today's partition (``--tags '{"dagster/partition": ...}'``, as a schedule tick would) against
the sandbox named in ``env`` (``CA_API_URL``…) with the Dagster instance of
``env["DAGSTER_HOME"]``, and returns lines describing what each run did. Run twice, the platform
jobs replay (the sandbox's effect counters stay at 1 per slot): the keys derive from the slot.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dev.bigquery_emulator import Emulator, bigquery_emulator

REPO = Path(__file__).resolve().parents[2]
DATASET = "organizations"
TABLE = "org_quota_usage"
SEED_AGES_DAYS = [0, 1, 30, 89, 90, 91, 120, 400]

# job, partitioned by ("day" or "month"), sandbox effect kind (None: not a platform call)
DAY_OF_MAINTENANCE = [
    ("quota_reset", "day", "reset-daily"),
    ("quota_cleanup", "day", None),
    ("stale_cleanup", "day", "cleanup-stale"),
    ("alerts", "day", "process-all"),
    ("quota_monthly", "month", "reset-monthly"),
]


def _bq_client(emulator: Emulator):  # -> bigquery.Client (imported lazily: heavy)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=emulator.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator.endpoint},
    )


def seed_quota_rows(emulator: Emulator, today: dt.date) -> int:
    """Create the quota table in the emulator with one row per age in SEED_AGES_DAYS."""
    from google.cloud import bigquery

    client = _bq_client(emulator)
    try:
        client.create_dataset(DATASET, exists_ok=True)
        schema = [
            bigquery.SchemaField("org_slug", "STRING"),
            bigquery.SchemaField("usage_date", "DATE"),
        ]
        ref = f"{emulator.project}.{DATASET}.{TABLE}"
        client.create_table(bigquery.Table(ref, schema=schema), exists_ok=True)
        values = ", ".join(
            f"('demo-{age}', DATE '{(today - dt.timedelta(days=age)).isoformat()}')"
            for age in SEED_AGES_DAYS
        )
        client.query(f"INSERT INTO `{ref}` (org_slug, usage_date) VALUES {values}").result()
        return count_rows(emulator)
    finally:
        client.close()


def count_rows(emulator: Emulator) -> int:
    client = _bq_client(emulator)
    try:
        ref = f"{emulator.project}.{DATASET}.{TABLE}"
        return int(next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{ref}`").result()))["n"])
    finally:
        client.close()


def _last_run_summary(home: str, job: str) -> tuple[str, dict[str, object], str]:
    """(status, step output metadata, first failure line) of the latest run of ``job``."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=job), limit=1)
        if not runs:
            return "NOT RECORDED", {}, ""
        run = runs[0]
        metadata: dict[str, object] = {}
        failure = ""
        for record in instance.get_records_for_run(run.run_id).records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if event.event_type_value == "STEP_OUTPUT":
                metadata.update({k: v.value for k, v in event.event_specific_data.metadata.items()})
            elif event.event_type_value == "STEP_FAILURE":
                failure = event.event_specific_data.error.message.strip().splitlines()[0]
        return run.status.value, metadata, failure


def demo(env: dict[str, str], workdir: Path) -> list[str]:
    """Run each maintenance job once for today's partition; return lines to print."""
    workdir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    slots = {"day": now.date().isoformat(), "month": now.strftime("%Y-%m")}
    lines = [f"Maintenance: a day of jobs for partition {slots['day']} (month {slots['month']})"]
    with bigquery_emulator(workdir / "bqemulator") as emulator:
        before = seed_quota_rows(emulator, now.date())
        lines.append(
            f"  BigQuery emulator at {emulator.endpoint}: {before} quota rows seeded, ages "
            f"{SEED_AGES_DAYS} days"
        )
        run_env = {**env, **emulator.env()}
        for job, partitioned_by, _effect in DAY_OF_MAINTENANCE:
            tags = json.dumps({"dagster/partition": slots[partitioned_by]})
            cmd = [
                sys.executable, "-m", "dagster", "job", "execute",
                "-m", "orchestration.definitions", "-j", job, "--tags", tags,
            ]  # fmt: skip
            started = time.monotonic()
            with open(workdir / f"{job}.log", "wb") as log:
                code = subprocess.call(
                    cmd, cwd=REPO, env=run_env, stdout=log, stderr=subprocess.STDOUT
                )
            seconds = time.monotonic() - started
            status, md, failure = _last_run_summary(env["DAGSTER_HOME"], job)
            shown = {k: v for k, v in md.items() if k not in ("environment", "bigquery_job_id")}
            detail = ", ".join(f"{k}={v}" for k, v in shown.items()) or failure
            verdict = status if code == 0 else f"{status} (exit {code})"
            lines.append(f"  {job:<14} {verdict} in {seconds:.1f}s  {detail}")
        after = count_rows(emulator)
        lines.append(f"  BigQuery quota rows: {before} before, {after} after (older than 90d gone)")
    api = env.get("CA_API_URL")
    if api:
        try:
            effects = httpx.get(f"{api}/_sandbox/state", timeout=10).json().get("effects", {})
        except (httpx.HTTPError, ValueError):
            effects = {}
        applied = ", ".join(
            f"{kind} {sum(effects.get(kind, {}).values())}x"
            for _job, _partitioned_by, kind in DAY_OF_MAINTENANCE
            if kind
        )
        lines.append(
            f"  Sandbox effects applied so far: {applied} (once per slot: a re-run replays)"
        )
    return lines
