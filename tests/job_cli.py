"""`dagster job execute` as an operator runs it, for the end-to-end tests of every area.

A throwaway DAGSTER_HOME with the repo's dagster.yaml, the CLI in a subprocess from the repo
root, and a way to open that instance afterwards to check the runs it recorded.
"""

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]


def dagster_home(
    tmp_path: Path, name: str = "dagster_home", source: Path = REPO / "dagster.yaml"
) -> Path:
    """A new DAGSTER_HOME holding ``source`` as its dagster.yaml (default: the repo's, SQLite)."""
    home = tmp_path / name
    home.mkdir()
    shutil.copyfile(source, home / "dagster.yaml")
    return home


def job_execute_cmd(job: str, config: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions"]
    cmd += ["-j", job]
    return cmd + (["-c", str(config)] if config is not None else [])


def job_env(home: Path, extra: Mapping[str, str] | None = None, *, inherit: bool = True) -> dict:
    """The subprocess environment: this one (or a bare PATH/HOME) + DAGSTER_HOME + ``extra``."""
    base = dict(os.environ) if inherit else {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return {**base, "DAGSTER_HOME": str(home), **(extra or {})}


def job_execute(
    home: Path,
    job: str,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    """Run ``dagster job execute -j job`` and fail with its output tail if it exits non-zero."""
    proc = subprocess.run(
        job_execute_cmd(job, config),
        cwd=REPO,
        env=job_env(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@contextlib.contextmanager
def instance_at(home: Path, **env: str) -> Iterator[dg.DagsterInstance]:
    """The instance in ``home`` (DAGSTER_HOME and ``env`` set only while it is open)."""
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", *env)}
    os.environ.update({"DAGSTER_HOME": str(home), **env})
    try:
        with dg.DagsterInstance.get() as instance:
            yield instance
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runs_of(home: Path, job: str) -> Sequence[dg.DagsterRun]:
    with instance_at(home) as instance:
        return instance.get_runs(dg.RunsFilter(job_name=job))
