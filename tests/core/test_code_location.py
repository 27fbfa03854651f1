"""The code location loads the way operators load it: workspace.yaml and `dagster dev`."""

import os
import subprocess

import pytest

from tests.dagster_dev import BIN, REPO, dagster_dev


@pytest.mark.slow
def test_workspace_validates(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful for code location platform_ops" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_dagster_dev_serves_the_jobs(tmp_path):
    """Webserver + daemon from `dagster dev`; the GraphQL API lists the release jobs."""
    with dagster_dev(tmp_path / "dagster_home") as dev:
        assert dev.proc.poll() is None, dev.log_tail()
        assert {"release", "migrate", "bootstrap", "org_sync_all"} <= dev.job_names
