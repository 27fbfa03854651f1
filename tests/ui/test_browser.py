"""The Dagster UI in a real browser, as an operator uses it.

`dagster dev` (webserver + daemon) runs against the platform sandbox; Chromium opens the jobs
overview, the release job, every schedule and sensor, launches a release from the launchpad and
reads the run's logs. The expected names and descriptions come from the code location loaded in
this process, so a job, schedule or sensor the UI fails to show (or shows without its description)
fails the test. A screenshot of every step lands in the artifacts directory.
"""

import re
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_API_KEY, run_config
from tests.dagster_dev import DagsterDev, dagster_dev

LOCATION = "platform_ops"
RUN_TIMEOUT_MS = 180_000
RUN_STATUS_QUERY = """
query ($id: ID!) { runOrError(runId: $id) { ... on Run { status jobName tags { key value } } } }
"""

pytestmark = pytest.mark.slow


def _expected() -> dict:
    """Jobs, schedules and sensors (name → description) of the code location, loaded here."""
    from orchestration.definitions import defs

    repo = defs.get_repository_def()
    return {
        "jobs": {j.name: j.description for j in repo.get_all_jobs() if not j.name.startswith("__")},
        "schedules": {s.name: s.description for s in repo.schedule_defs},
        "sensors": {s.name: s.description for s in repo.sensor_defs},
    }


def _shot(page, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def _expect_text(page, text: str, timeout: int = 30_000) -> None:
    """Wait until ``text`` (whitespace-normalised substring) is visible on the page."""
    from playwright.sync_api import expect

    expect(page.get_by_text(text).first).to_be_visible(timeout=timeout)


def _check_jobs(page, dev: DagsterDev, shots: Path, jobs: dict[str, str | None]) -> None:
    from playwright.sync_api import expect

    page.goto(f"{dev.url}/jobs")
    for name in sorted(jobs):
        expect(page.locator(f'a[href="/locations/{LOCATION}/jobs/{name}"]').first).to_be_visible()
    _shot(page, shots, "01-jobs")
    # A job's page shows its description (the list only has it behind an info icon).
    for i, name in enumerate(["release", "quota_reset", "escalate_alerts"]):
        page.goto(f"{dev.url}/locations/{LOCATION}/jobs/{name}")
        _expect_text(page, jobs[name][:60])
        _shot(page, shots, f"02-job-{i}-{name}")


def _check_automation(page, dev: DagsterDev, shots: Path, expected: dict) -> None:
    page.goto(f"{dev.url}/automation")
    for name in sorted({**expected["schedules"], **expected["sensors"]}):
        _expect_text(page, name)
    _shot(page, shots, "03-automation")
    for kind in ("schedules", "sensors"):
        for name, description in sorted(expected[kind].items()):
            page.goto(f"{dev.url}/locations/{LOCATION}/{kind}/{name}")
            _expect_text(page, description[:60])
            _shot(page, shots, f"04-{kind}-{name}")


def _launch_release(page, dev: DagsterDev, shots: Path) -> str:
    """Fill the launchpad with the test environment's run config, launch, return the run id."""
    page.goto(f"{dev.url}/locations/{LOCATION}/jobs/release/playground")
    editor = page.locator(".CodeMirror").first
    editor.wait_for(state="visible")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    # insert_text, not type: CodeMirror would re-indent every typed newline.
    page.keyboard.insert_text(yaml.safe_dump(run_config("test"), sort_keys=False))
    _expect_text(page, "No errors")
    _shot(page, shots, "05-launchpad")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"), timeout=60_000)
    return page.url.rsplit("/runs/", 1)[1].split("?")[0]


def _wait_for_run(page, shots: Path) -> str:
    """Poll the run page until its status tag reads a terminal state; return that state."""
    from playwright.sync_api import expect

    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(status).to_be_visible(timeout=RUN_TIMEOUT_MS)
    shown = status.inner_text().strip()
    _shot(page, shots, "06-run")
    return shown


def _check_logs(page, shots: Path) -> None:
    """The run's event log: the step timeline and known log lines, found through the filter."""
    _expect_text(page, "run_bootstrap")  # the step in the Gantt chart
    log_filter = page.get_by_placeholder("Filter…")
    log_filter.fill('Finished execution of run for "release"')
    _expect_text(page, 'Finished execution of run for "release"')
    log_filter.fill("Org sync complete")
    _expect_text(page, "Org sync complete: 5 org(s) synced, 0 skipped")
    _shot(page, shots, "07-run-logs")


@pytest.mark.timeout(420)
def test_operator_walks_the_ui_and_launches_a_release(
    platform_env, browser_page, artifacts_dir, tmp_path
):
    expected = _expected()
    missing = sorted(
        f"{kind[:-1]} {name}"
        for kind in ("schedules", "sensors")
        for name, description in expected[kind].items()
        if not description
    )
    assert not missing, f"without a description: {missing}"
    page = browser_page
    started = time.monotonic()
    with dagster_dev(tmp_path / "dagster_home") as dev:
        try:
            assert set(expected["jobs"]) <= dev.job_names
            _check_jobs(page, dev, artifacts_dir, expected["jobs"])
            _check_automation(page, dev, artifacts_dir, expected)
            run_id = _launch_release(page, dev, artifacts_dir)
            shown = _wait_for_run(page, artifacts_dir)
            run = dev.graphql(RUN_STATUS_QUERY, {"id": run_id})["runOrError"]
            assert (shown, run["status"]) == ("Success", "SUCCESS"), dev.log_tail()
            assert run["jobName"] == "release"
            assert {"key": "platform/environment", "value": "test"} in run["tags"]
            _check_logs(page, artifacts_dir)
            assert TEST_API_KEY not in page.content()
        except Exception:
            _shot(page, artifacts_dir, "failure")
            raise
        finally:
            print(f"UI walk took {time.monotonic() - started:.1f}s; screenshots in {artifacts_dir}")
    # The release really ran against the sandbox: every seeded org synced once.
    orgs = platform_env.state()["orgs"]
    assert len(orgs) == 5
    assert all(o["syncs"] == 1 for o in orgs.values())
