"""The gateways part of the README demo: real agents, real devices on loopback, real runs.

``demo(env, workdir)`` seeds devices in two partitions whose address spaces overlap (the same
address string in P1 and P2) plus an edge domain, starts three gateway agents, runs
``dagster job execute -j poll_devices`` as an operator would, SIGKILLs one agent and runs again,
and returns the lines to print. Targets poll hourly, so a second demo creates no new tasks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import sqlalchemy as sa

from orchestration.gateways import registry
from orchestration.gateways.db import make_engine
from orchestration.gateways.models import poll_tasks, targets

REPO = Path(__file__).resolve().parents[2]
LEASE = 3.0
DEVICE_PORT = 18931


class _Device(BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if self.path.startswith("/down") else 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _agent(gateway_id: str, partition: str, domains: list[str], url: str, workdir: Path):
    cmd = [
        sys.executable, "-m", "orchestration.gateways.agent", "--id", gateway_id,
        "--partition", partition, "--store-url", url, "--heartbeat", "0.5", "--lease", str(LEASE),
    ]  # fmt: skip
    for d in domains:
        cmd += ["--domain", d]
    log = open(workdir / f"agent-{gateway_id}.log", "ab")  # noqa: SIM115 - lives with the process
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _poll_devices(env: dict[str, str], workdir: Path) -> str:
    cmd = [
        sys.executable, "-m", "dagster", "job", "execute", "-m", "orchestration.definitions",
        "-j", "poll_devices",
    ]  # fmt: skip
    started = time.monotonic()
    with open(workdir / "poll_devices.log", "ab") as log:
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    verdict = "SUCCESS" if code == 0 else f"FAILED (exit {code}, see {workdir}/poll_devices.log)"
    return f"poll_devices: {verdict} in {time.monotonic() - started:.1f}s"


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def demo(env: dict[str, str], workdir: Path) -> list[str]:
    from resources.record_store import upgrade

    workdir.mkdir(parents=True, exist_ok=True)
    url = env.get("RECORD_STORE_URL") or f"sqlite:///{workdir / 'record_store.sqlite'}"
    env = {**env, "RECORD_STORE_URL": url}
    upgrade(url)
    engine = make_engine(url)
    lines = [f"Gateways: record store {url}"]
    try:  # a fixed port keeps the targets' addresses, so a second demo finds them not yet due
        httpd = ThreadingHTTPServer(("127.0.0.1", DEVICE_PORT), _Device)
    except OSError:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Device)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    base = f"http://127.0.0.1:{port}"
    seeded = [
        ("P1", f"{base}/meter", "http", None),
        ("P2", f"{base}/meter", "http", None),  # same address, other partition: other device
        ("P1", f"127.0.0.1:{port}", "tcp", "site-a"),
        ("P2", f"{base}/down", "http", None),
    ]
    ids = [
        registry.upsert_target(engine, p, a, k, d, interval_seconds=3600) for p, a, k, d in seeded
    ]
    agents = {
        "gw-p1": _agent("gw-p1", "P1", [], url, workdir),
        "gw-p1-site-a": _agent("gw-p1-site-a", "P1", ["site-a"], url, workdir),
        "gw-p2": _agent("gw-p2", "P2", [], url, workdir),
    }
    try:

        def live() -> set[str]:
            with engine.connect() as conn:
                return {g.id for g in registry.live_gateways(conn, time.time())}

        _wait_for(lambda: set(agents) <= live(), 20)
        lines.append(f"  agents live: {', '.join(sorted(live()))}")
        lines.append("  " + _poll_devices(env, workdir))

        def settled() -> bool:
            with engine.connect() as conn:
                states = conn.execute(
                    sa.select(poll_tasks.c.state).where(poll_tasks.c.target_id.in_(ids))
                ).scalars()
                return all(s == "done" for s in states)

        _wait_for(settled, 15)
        lines.append("  " + _poll_devices(env, workdir) + "  (records device status)")
        with engine.connect() as conn:
            rows = conn.execute(sa.select(targets).where(targets.c.id.in_(ids))).all()
        for r in rows:
            where = r.partition + (f"/{r.domain}" if r.domain else "")
            lines.append(
                f"  {where:10} {r.check_kind:4} {r.address:32} {r.status:7} via {r.last_gateway_id}"
            )
        agents["gw-p1"].send_signal(signal.SIGKILL)
        agents["gw-p1"].wait()
        time.sleep(LEASE + 0.5)
        lines.append(
            f"  SIGKILL gw-p1; after its {LEASE:.0f}s lease: " + _poll_devices(env, workdir)
        )
        for g in registry.gateway_overview(engine):
            if g["id"] in agents:
                state = "live" if g["live"] else "lease expired"
                domains = ",".join(g["domains"]) or "-"
                lines.append(f"  gateway {g['id']:13} {g['partition']} {domains:7} {state}")
    finally:
        for proc in agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        httpd.shutdown()
        httpd.server_close()
    return lines


if __name__ == "__main__":  # python -m dev.demo.gateways
    print("\n".join(demo(dict(os.environ), REPO / ".demo" / "gateways")))
