"""Local stand-ins the demo and the end-to-end tests start as real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

SANDBOX_API_KEY = "sandbox-root-key"
SANDBOX_SUPABASE_TOKEN = "sandbox-supabase-token"


def wait_for_port_file(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args!r} did not report a port within {timeout:.0f}s")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def sandbox_process(
    state_dir: Path, *, seed_orgs: int = 0, supabase_db_url: str | None = None
) -> Iterator[str]:
    """Run ``python -m dev.sandbox serve`` on a free loopback port; yield its base URL."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port_file = state_dir / "sandbox.port"
    port_file.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "dev.sandbox", "serve", "--host", "127.0.0.1", "--port", "0",
        "--port-file", str(port_file), "--state", str(state_dir / "sandbox-state.sqlite"),
        "--api-key", SANDBOX_API_KEY, "--supabase-token", SANDBOX_SUPABASE_TOKEN,
    ]  # fmt: skip
    if seed_orgs:
        cmd += ["--seed-orgs", str(seed_orgs)]
    if supabase_db_url:
        cmd += ["--supabase-db-url", supabase_db_url]
    log = open(state_dir / "sandbox.log", "ab")  # noqa: SIM115 - closed below
    # ``dev`` is not installed: the repo root on PYTHONPATH makes ``-m dev.sandbox`` importable
    # whatever the caller's working directory or how the venv was made.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port = wait_for_port_file(port_file, proc)
        url = f"http://127.0.0.1:{port}"
        httpx.get(f"{url}/_sandbox/health", timeout=5).raise_for_status()
        yield url
    finally:
        stop(proc)
        log.close()


def sandbox_env(url: str) -> dict[str, str]:
    """Process environment that points every job at a sandbox (both APIs live there)."""
    return {
        "CA_API_URL": url,
        "CA_ROOT_API_KEY": SANDBOX_API_KEY,
        "SUPABASE_ACCESS_TOKEN": SANDBOX_SUPABASE_TOKEN,
        "SUPABASE_PROJECT_REF": "sandbox",
    }
