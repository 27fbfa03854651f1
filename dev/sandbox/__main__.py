"""`python -m dev.sandbox serve`: the sandbox in the foreground for jobs, demos and subprocesses.

A parent process (a test, a dev script) needs to know when the sandbox is ready and on which port,
and to stop it cleanly: hence the single "listening" line, `--port-file`, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from dev.sandbox.server import DEFAULT_API_KEY, DEFAULT_SUPABASE_TOKEN, SandboxServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dev.sandbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sandbox until SIGTERM/SIGINT")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    serve.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    serve.add_argument("--state", default=None, help="state SQLite file (default: temp file)")
    serve.add_argument("--supabase-db-url", default=None, help="PostgreSQL URL for SQL queries")
    serve.add_argument("--api-key", default=os.environ.get("SANDBOX_API_KEY") or DEFAULT_API_KEY)
    serve.add_argument(
        "--supabase-token",
        default=os.environ.get("SANDBOX_SUPABASE_TOKEN") or DEFAULT_SUPABASE_TOKEN,
    )
    serve.add_argument("--supabase-project-ref", default="sandbox")
    serve.add_argument("--latency-ms", type=int, default=0)
    serve.add_argument("--seed-orgs", type=int, default=0, help="create org-0001..org-N")
    serve.add_argument("--port-file", default=None, help="write the bound port to this file")
    return parser


def _write_port_file(path: str, port: int) -> None:
    """Write then rename, so a polling parent never reads a half-written file."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(target)


def serve(args: argparse.Namespace) -> int:
    """Start, announce, block until a stop signal, then shut down cleanly."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    srv = SandboxServer(
        api_key=args.api_key,
        supabase_token=args.supabase_token,
        supabase_project_ref=args.supabase_project_ref,
        supabase_db_url=args.supabase_db_url,
        state_path=args.state,
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
    )
    if args.seed_orgs:
        srv.seed_orgs(args.seed_orgs)
    srv.start()
    try:
        print(f"sandbox listening on {srv.base_url}", flush=True)
        if args.port_file:
            _write_port_file(args.port_file, srv.port)
        while not stop.wait(0.5):
            pass
    finally:
        srv.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2  # pragma: no cover - argparse enforces the subcommand


if __name__ == "__main__":
    sys.exit(main())
