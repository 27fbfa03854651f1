"""A loopback webhook receiver for benchmarks, in its own process (it must not share the
deliverer's GIL): uvicorn + httptools on uvloop, HTTP/1.1 keep-alive, a raw ASGI app.

    .venv/bin/python bench/webhook_receiver.py --port 0 --delay 0.005

Answers each POST with 200 after ``--delay`` seconds (an ``asyncio.sleep``: the answers of
concurrent requests overlap, as a real service's would). Prints ``listening on <port>`` once it
accepts connections. ``GET /stats`` returns JSON: posts, distinct Idempotency-Keys, keys POSTed
more than once, the most requests in flight at once; ``POST /reset`` clears them.

:func:`start` runs it as a subprocess and returns its URL and a way to read the stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


class Receiver:
    """The ASGI app: counts keys and concurrency; the answer comes after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.reset()

    def reset(self) -> None:
        self.keys: Counter[str] = Counter()
        self.posts = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def stats(self) -> dict:
        return {
            "posts": self.posts,
            "distinct": len(self.keys),
            "repeated": sum(1 for n in self.keys.values() if n > 1),
            "max_in_flight": self.max_in_flight,
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        body = b""
        if scope["method"] == "POST" and scope["path"] == "/reset":
            self.reset()
        elif scope["method"] == "POST":
            key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
            self.posts += 1
            self.keys[key] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
        else:
            body = json.dumps(self.stats()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start(delay: float) -> Running:
    """The receiver in a subprocess, once it answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until it listens (or dies)
    if not line.startswith("listening"):
        proc.kill()
        raise RuntimeError(f"webhook receiver did not start: {line!r}")
    running = Running(proc, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            running.stats()
            return running
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    import uvicorn
    import uvloop

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.005)
    args = p.parse_args()
    port = args.port or _free_port()
    config = uvicorn.Config(
        Receiver(args.delay),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=1024,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"listening on {port}", flush=True)
        await task

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
