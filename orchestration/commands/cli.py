"""Operator CLI for the command scheduler, against the record store at $RECORD_STORE_URL.

    python -m orchestration.commands.cli sync-catalog config/commands.example.yaml
    python -m orchestration.commands.cli run backup --env staging [--in 300]
    python -m orchestration.commands.cli retry 42
    python -m orchestration.commands.cli list-runs [--command C] [--env E] [--status S]
    python -m orchestration.commands.cli show-run 42
    python -m orchestration.commands.cli set-command NAME --command "..." [--timeout 600]
    python -m orchestration.commands.cli set-environment NAME [--disable]
    python -m orchestration.commands.cli set-variable ENV NAME VALUE [--secret]
    python -m orchestration.commands.cli set-schedule NAME --command C --env E --cron "0 3 * * *"

``run`` and ``retry`` create the command run and print its id; the dispatch sensor launches it on
its next tick (within a minute). To run in the foreground of a Dagster run instead, use the
``run_command_now`` / ``retry_command_run`` jobs. Invalid input changes nothing (exit code 2);
every error is one line on stderr (``orchestration.cli_errors``): exit 2 for a bad argument,
file, catalog or store URL, 1 for an unreachable record store or an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from orchestration import cli_errors
from orchestration.commands import actions, catalog, store
from orchestration.commands import models as m
from resources.record_store import DEFAULT_URL, make_engine, upgrade


def _engine(url: str | None) -> sa.Engine:
    url = cli_errors.store_url(url or os.environ.get("RECORD_STORE_URL", DEFAULT_URL))
    upgrade(url)
    return make_engine(url)


# Every number an operator types is checked in the parser, before the store is opened.
_DELAY = cli_errors.bounded_number(0, 366 * 86_400, integer=True)  # `run --in`: up to a year
_RUN_ID = cli_errors.bounded_number(1, 10**12 - 1, unit="(a command run id)", integer=True)
_LIMIT = cli_errors.bounded_number(1, 10_000, unit="rows", integer=True)
_TIMEOUT = cli_errors.bounded_number(1, catalog.MAX_TIMEOUT_SECONDS, integer=True)


def _parser() -> argparse.ArgumentParser:
    p = cli_errors.OneLineArgumentParser(
        prog="platform-ops-commands", description=__doc__.split("\n")[0]
    )
    p.add_argument("--store-url", help="record store URL (default $RECORD_STORE_URL)")
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("sync-catalog", help="make the database match a YAML catalog")
    s.add_argument("file")
    s = sub.add_parser("run", help="run a command now (next dispatch tick) or in N seconds")
    s.add_argument("command")
    s.add_argument("--env", required=True)
    s.add_argument("--in", dest="in_seconds", type=_DELAY, default=0)
    s = sub.add_parser("retry", help="retry a failed, timed-out or cancelled command run")
    s.add_argument("run_id", type=_RUN_ID)
    s = sub.add_parser("list-runs", help="latest command runs")
    s.add_argument("--command")
    s.add_argument("--env")
    s.add_argument("--status", choices=[m.PENDING, m.QUEUED, m.RUNNING, *m.TERMINAL])
    s.add_argument("--limit", type=_LIMIT, default=50)
    s = sub.add_parser("show-run", help="one command run with its events and output tails")
    s.add_argument("run_id", type=_RUN_ID)
    s = sub.add_parser("set-command", help="create or update one command")
    s.add_argument("name")
    s.add_argument("--command", required=True)
    s.add_argument("--timeout", type=_TIMEOUT, default=3600)
    s.add_argument("--workdir")
    s.add_argument("--no-shell", action="store_true", help="split into argv, no /bin/sh")
    s.add_argument("--disable", action="store_true")
    s = sub.add_parser("set-environment", help="create or enable/disable one environment")
    s.add_argument("name")
    s.add_argument("--disable", action="store_true")
    s = sub.add_parser("set-variable", help="set one variable of an environment")
    s.add_argument("environment")
    s.add_argument("name")
    s.add_argument("value")
    s.add_argument("--secret", action="store_true")
    s = sub.add_parser("set-schedule", help="create or update one schedule")
    s.add_argument("name")
    s.add_argument("--command", required=True)
    s.add_argument("--env", action="append", required=True, help="repeat for several")
    s.add_argument("--cron", action="append", required=True, help="repeat for several")
    s.add_argument("--disable", action="store_true")
    return p


def _set_variable(engine: sa.Engine, env: str, name: str, value: str, secret: bool) -> str:
    return catalog.set_variable(engine, env, name, value, secret)  # the catalog's own checks


# The operator's own mistakes (exit 2); everything else is classified by cli_errors.
INPUT_ERRORS = (catalog.CatalogError, actions.ActionError, store.UnknownCommandRun)


def main(argv: Sequence[str] | None = None, out=None) -> int:
    return cli_errors.run(
        "platform-ops-commands", lambda: _main(argv, out), input_errors=INPUT_ERRORS
    )


def _main(argv: Sequence[str] | None, out) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    # A catalog file is read and checked before the store is opened: a bad file creates nothing.
    loaded = catalog.load_catalog(args.file) if args.action == "sync-catalog" else None
    engine = _engine(args.store_url)

    def say(text: str) -> None:
        print(text, file=out)

    _dispatch(args, engine, say, loaded)
    return 0


def _dispatch(
    args: argparse.Namespace, engine: sa.Engine, say, loaded: catalog.Catalog | None = None
) -> None:
    """Run one subcommand; its errors propagate to ``cli_errors.run``."""
    if args.action == "sync-catalog":
        synced = catalog.apply(engine, loaded or catalog.load_catalog(args.file), prune=True)
        say(f"catalog synced: {synced.summary()}")
    elif args.action == "run":
        run_id = actions.request_run(
            engine, args.command, args.env, in_seconds=args.in_seconds, requested_by="cli"
        )
        say(str(run_id))
    elif args.action == "retry":
        say(str(actions.retry_run(engine, args.run_id, requested_by="cli")))
    elif args.action == "list-runs":
        f = store.RunFilter(args.command, args.env, args.status, args.limit)
        for r in store.list_runs(engine, f):
            say(
                f"{r['id']:>7}  {r['status']:<9}  {r['command']:<24} {r['environment']:<12} "
                f"attempt {r['attempt']}  slot {store.fmt_time(r['slot'])}  "
                f"started {store.fmt_time(r['started_at'])}  exit {r['exit_code']}"
            )
    elif args.action == "show-run":
        r = store.get_run(engine, args.run_id)
        say(
            f"command run {r['id']}: {r['command_name']} in {r['environment_name']} "
            f"{r['status']} attempt {r['attempt']} exit {r['exit_code']} "
            f"duration {r['duration_seconds']} dagster run {r['dagster_run_id']}"
        )
        for e in store.events_for(engine, args.run_id):
            say(f"  {store.fmt_time(e['at'])} {e['kind']} {e['message'] or ''}")
            for stream in ("stdout_tail", "stderr_tail"):
                if e[stream]:
                    say(f"  --- {stream}\n{e[stream]}")
    elif args.action == "set-command":
        spec = catalog.CommandSpec(
            args.name, args.command, enabled=not args.disable, timeout_seconds=args.timeout,
            working_dir=args.workdir, use_shell=not args.no_shell,
        )  # fmt: skip
        res = catalog.apply(engine, catalog.Catalog(commands=[spec]), prune=False)
        say(res.summary())
    elif args.action == "set-environment":
        with engine.connect() as conn:
            env_id = conn.execute(
                sa.select(m.environments.c.id).where(m.environments.c.name == args.name)
            ).scalar()
        if env_id is None:
            spec = catalog.EnvironmentSpec(args.name, enabled=not args.disable)
            res = catalog.apply(engine, catalog.Catalog(environments=[spec]), prune=False)
            say(res.summary())
        else:  # keep its variables
            with engine.begin() as conn:
                conn.execute(
                    m.environments.update()
                    .where(m.environments.c.id == env_id)
                    .values(enabled=not args.disable)
                )
            say(f"environment {args.name} {'disabled' if args.disable else 'enabled'}")
    elif args.action == "set-variable":
        say(_set_variable(engine, args.environment, args.name, args.value, args.secret))
    elif args.action == "set-schedule":
        spec = catalog.ScheduleSpec(
            args.name, args.command, args.env, args.cron, enabled=not args.disable
        )
        res = catalog.apply(engine, catalog.Catalog(schedules=[spec]), prune=False)
        say(res.summary())


if __name__ == "__main__":
    raise SystemExit(main())
