"""`dagster dev` (webserver + daemon) as an operator starts it, for tests that talk to the UI.

Shared by the code-location test (GraphQL) and the browser test (Chromium): one place that knows
how to start it on loopback with a throwaway DAGSTER_HOME, wait until the code location has loaded
and stop the whole process group (webserver, daemon, code server, run workers) afterwards.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from resources.record_store import upgrade
from tests.support.wait import wait_until

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOBS_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev`: where it listens, its process and its combined output."""

    url: str
    proc: subprocess.Popen
    log_path: Path
    job_names: frozenset[str]

    def log_tail(self, chars: int = 4000) -> str:
        return _tail(self.log_path, chars)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """The ``data`` of a GraphQL answer (what the UI itself reads), for cross-checks."""
        r = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        r.raise_for_status()
        return r.json()["data"]


def _job_names(url: str) -> set[str]:
    r = httpx.post(f"{url}/graphql", json={"query": JOBS_QUERY}, timeout=5)
    nodes = r.json()["data"]["repositoriesOrError"]["nodes"]
    return {j["name"] for n in nodes for j in n["jobs"]}


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after ``grace`` seconds.

    Not a longer grace: after SIGTERM (or SIGINT) `dagster dev`'s children log their shutdown but
    have been seen to linger for minutes; the kill makes teardown bounded.
    """
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    # Children (code server, run workers) may outlive the leader; sweep the group either way.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def dagster_dev(
    home: Path, env: dict[str, str] | None = None, *, startup_timeout: float = 120
) -> Iterator[DagsterDev]:
    """Run `dagster dev -w workspace.yaml` with DAGSTER_HOME=``home`` (the repo's dagster.yaml).

    ``env`` is added to the process environment (sandbox URLs, keys). The record store defaults
    to a SQLite file in ``home`` so the daemon's sensors never touch the repo's own store; it is
    migrated here first, as a deployment's would be: the daemon evaluates sensors on parallel
    threads of one code server, and their concurrent first-use Alembic upgrades of a fresh
    SQLite file can crash that server (seen as a segfault in libsqlite3).
    Yields once the GraphQL API lists the code location's jobs; stops everything on exit.
    """
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RECORD_STORE_URL": f"sqlite:///{home / 'record_store.sqlite'}",
        **(env or {}),
    }
    upgrade(full_env["RECORD_STORE_URL"])
    log_path = home / "dagster-dev.log"
    cmd = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def serving() -> set[str]:
            try:
                return _job_names(url)
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                return set()

        try:
            names = wait_until(
                serving,
                startup_timeout,
                "dagster dev to serve its jobs",
                interval=1.0,
                alive=lambda: proc.poll() is None,
            )
        except AssertionError as exc:
            raise RuntimeError(f"{exc}:\n{_tail(log_path)}") from None
        yield DagsterDev(url=url, proc=proc, log_path=log_path, job_names=frozenset(names))
    finally:
        _stop(proc)
