"""The local BigQuery emulator (``bqemulator``) as a real subprocess on loopback.

Tests and the demo run ``quota_cleanup`` against it with the official client. Two things it
needs are done here rather than by hand, because CI starts from a clean home directory:

* DuckDB's ``spatial`` extension is copied from the ``duckdb-extension-spatial`` wheel to
  ``~/.duckdb/extensions/<version>/<platform>/`` (the emulator would otherwise try to download it
  and there is no network);
* a free port: the emulator binds port 0 and we read the port it reports in its JSON log.

See ``../shared/BIGQUERY_EMULATOR.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dev.local_services import stop

EMULATOR_HOST_ENV = "BIGQUERY_EMULATOR_HOST"
DEFAULT_PROJECT = "local"
START_TIMEOUT_SECONDS = 60.0


def _duckdb_platform() -> str:
    """DuckDB's platform directory name (``linux_amd64`` here)."""
    try:
        import duckdb

        return str(duckdb.sql("SELECT platform FROM pragma_platform()").fetchone()[0])
    except Exception:  # pragma: no cover - duckdb always importable where the emulator runs
        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine(), platform.machine()
        )
        return f"{sys.platform.replace('darwin', 'osx')}_{arch}"


def bundled_spatial_extension() -> tuple[str, Path]:
    """(DuckDB version dir such as ``v1.5.5``, path of the wheel's ``spatial.duckdb_extension``)."""
    import duckdb_extension_spatial

    root = Path(duckdb_extension_spatial.__file__).parent / "extensions"
    found = sorted(root.glob("v*/spatial.duckdb_extension"))
    if not found:
        raise RuntimeError(
            f"duckdb-extension-spatial has no extension file under {root}; reinstall the "
            "pinned duckdb-extension-spatial package"
        )
    path = found[-1]
    return path.parent.name, path


def install_spatial_extension(home: Path | None = None) -> Path:
    """Place the bundled spatial extension where DuckDB looks for it; return its path.

    Idempotent: an identical file already in place is left alone.
    """
    version, source = bundled_spatial_extension()
    home = Path.home() if home is None else home
    target_dir = home / ".duckdb" / "extensions" / version / _duckdb_platform()
    target = target_dir / source.name
    if target.exists() and target.stat().st_size == source.stat().st_size:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)  # atomic: a concurrent starter never sees half a file
    return target


@dataclass(frozen=True)
class Emulator:
    """A running emulator: where to reach it and which project it serves by default."""

    endpoint: str
    project: str
    pid: int
    log_path: Path

    @property
    def host(self) -> str:
        """``host:port``, the form ``BIGQUERY_EMULATOR_HOST`` takes."""
        return self.endpoint.removeprefix("http://")

    def env(self) -> dict[str, str]:
        """Environment variables that point the jobs at this emulator."""
        return {EMULATOR_HOST_ENV: self.host}


def _rest_port_from_log(log_path: Path) -> int | None:
    """The REST port from the emulator's ``rest.listen`` JSON log line, once it is written."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if '"rest.listen"' not in line:
            continue
        try:
            return int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _executable() -> str:
    """The ``bqemulator`` script of this interpreter's environment (the venv), else PATH."""
    beside = Path(sys.executable).parent / "bqemulator"
    if beside.exists():
        return str(beside)
    found = shutil.which("bqemulator")
    if not found:
        raise RuntimeError("bqemulator is not installed in this environment")
    return found


@contextlib.contextmanager
def bigquery_emulator(
    workdir: Path,
    *,
    project: str = DEFAULT_PROJECT,
    home: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> Iterator[Emulator]:
    """Start ``bqemulator`` (ephemeral, loopback, free ports), yield it, stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    install_spatial_extension(home)
    log_path = workdir / "bqemulator.log"
    log_path.unlink(missing_ok=True)
    cmd = [
        _executable(), "start",
        "--rest-host", "127.0.0.1", "--rest-port", "0",
        "--grpc-host", "127.0.0.1", "--grpc-port", "0",
        "--project", project, "--ephemeral", "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    env = {**os.environ, **(extra_env or {})}
    if home is not None:
        env["HOME"] = str(home)
    log = open(log_path, "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"bqemulator exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"bqemulator did not listen within {timeout:.0f}s ({log_path})")
            port = _rest_port_from_log(log_path)
            if port is None:
                time.sleep(0.1)
        yield Emulator(
            endpoint=f"http://127.0.0.1:{port}", project=project, pid=proc.pid, log_path=log_path
        )
    finally:
        stop(proc)
        log.close()
