"""Test devices (tiny HTTP/TCP servers on 127.0.0.1) and gateway agent subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server: DeviceServer = self.server.owner  # type: ignore[attr-defined]
        server.hits.append(self.path)
        path = self.path.split("?", 1)[0]
        if path.startswith("/slow/"):
            time.sleep(float(path.rsplit("/", 1)[1]))
        if path.startswith("/held"):
            server.gate.wait(HOLD_LIMIT_S)
        code = 503 if self.path.startswith("/down") else 200
        body = b"ok" if code == 200 else b"down"
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent asking was killed while its check was held

    def log_message(self, *args):
        pass


HOLD_LIMIT_S = 300.0  # a held check is released by the test; this only ends a forgotten one
# An agent's lease: short enough that a killed or frozen agent's work fails over within seconds,
# long enough that a loaded machine's stalls (> 1 s happen) do not lapse a live agent's lease.
LEASE_S = 4.0
HEARTBEAT_S = 0.3


class DeviceServer:
    """An HTTP device: ``/…`` answers 200, ``/down…`` 503, ``/slow/<s>`` after s seconds, and
    ``/held…`` only once the test opens ``gate``: a check that cannot finish before the test
    says so (a gateway killed or frozen "mid-check" really is, however slow the machine)."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.hits: list[str] = []
        self.gate = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> DeviceServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate.set()  # let held handlers finish, so shutdown does not wait for them
        self.httpd.shutdown()
        self.httpd.server_close()


class AgentProcess:
    """``python -m orchestration.gateways.agent`` as a real subprocess, output in a log file."""

    def __init__(
        self,
        gateway_id: str,
        partition: str,
        store_url: str,
        logdir: Path,
        domains: tuple[str, ...] = (),
        heartbeat: float = HEARTBEAT_S,
        lease: float = LEASE_S,
        poll: float = 0.1,
        concurrency: int = 8,
    ) -> None:
        self.id = gateway_id
        self.log_path = logdir / f"agent-{gateway_id}.log"
        cmd = [
            sys.executable, "-m", "orchestration.gateways.agent", "--id", gateway_id,
            "--partition", partition, "--store-url", store_url, "--heartbeat", str(heartbeat),
            "--lease", str(lease), "--poll", str(poll), "--concurrency", str(concurrency),
        ]  # fmt: skip
        for d in domains:
            cmd += ["--domain", d]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ}
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
