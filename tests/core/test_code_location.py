"""The code location loads the way operators load it: workspace.yaml and `dagster dev`."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    query = "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"
    try:
        deadline = time.monotonic() + 120
        names: set[str] = set()
        while time.monotonic() < deadline and not names:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=5)
                nodes = r.json()["data"]["repositoriesOrError"]["nodes"]
                names = {j["name"] for n in nodes for j in n["jobs"]}
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert {"release", "migrate", "bootstrap", "org_sync_all"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
