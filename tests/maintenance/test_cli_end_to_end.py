"""``dagster job execute`` of every maintenance job as an operator (and the README demo) runs it."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from dev.demo.maintenance import SEED_AGES_DAYS, demo
from tests.conftest import TEST_API_KEY
from tests.job_cli import dagster_home, job_env


@pytest.mark.slow
def test_day_of_maintenance_through_the_cli(sandbox, tmp_path):
    home = dagster_home(tmp_path)
    env = job_env(
        home, {"CA_API_URL": sandbox.base_url, "CA_ROOT_API_KEY": TEST_API_KEY}, inherit=False
    )
    before = dt.datetime.now(dt.UTC)
    lines = demo(env, tmp_path / "demo")
    after = dt.datetime.now(dt.UTC)
    # Each run's slot is the UTC day (month) it ran: read the clock around the demo, so a demo
    # that crosses midnight is judged by the days its runs took.
    days = {before.date().isoformat(), after.date().isoformat()}
    months = {before.strftime("%Y-%m"), after.strftime("%Y-%m")}
    text = "\n".join(lines)
    for job in ("quota_reset", "quota_cleanup", "stale_cleanup", "alerts", "quota_monthly"):
        assert any(line.strip().startswith(f"{job} ") and " SUCCESS " in line for line in lines), (
            text
        )
    old = sum(1 for age in SEED_AGES_DAYS if age > 90)
    assert f"rows_deleted={old}" in text
    assert f"{len(SEED_AGES_DAYS)} before, {len(SEED_AGES_DAYS) - old} after" in text
    assert TEST_API_KEY not in text

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = instance.get_runs()
        assert len(runs) == 5 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        slot = {r.job_name: r.tags["platform/slot"] for r in runs}
        assert slot["quota_monthly"] in months
        assert {slot[j] for j in slot if j != "quota_monthly"} <= days
        # Each run was for its partition (the partition view shows it), not a config date.
        assert all(r.tags["dagster/partition"] == r.tags["platform/slot"] for r in runs)

    effects = sandbox.state()["effects"]
    assert effects["reset-daily"] == {slot["quota_reset"]: 1}
    assert effects["process-all"] == {slot["alerts"]: 1}
    assert effects["reset-monthly"] == {slot["quota_monthly"]: 1}
    assert sum(effects["cleanup-stale"].values()) == 1
