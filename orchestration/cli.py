"""``platform-ops``: the operator's command line next to the Dagster UI.

``platform-ops home [--postgres]`` writes ``$DAGSTER_HOME/dagster.yaml`` from the repo's instance
files; ``archive`` reads archived runs back; ``release unlock`` frees a dead release's lock. The
README's demo is development code (``python -m dev.demo``, not shipped). An error is
one line on stderr, exit 2 for a bad input (a damaged archive file), 1 otherwise
(``orchestration.cli_errors``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from orchestration import cli_errors

REPO = Path(__file__).resolve().parents[1]


def dagster_home(path: Path | None = None) -> Path:
    return Path(path or os.environ.get("DAGSTER_HOME") or REPO / ".dagster_home").resolve()


def write_home(home: Path, *, postgres: bool) -> Path:
    """Install the SQLite (default) or PostgreSQL instance settings into ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    source = REPO / ("dagster.postgres.yaml" if postgres else "dagster.yaml")
    if postgres and not os.environ.get("DAGSTER_PG_URL"):
        raise SystemExit(
            "DAGSTER_PG_URL is not set: export it (e.g. postgresql://user:pass@host:5432/dagster) "
            "before using PostgreSQL storage."
        )
    shutil.copyfile(source, home / "dagster.yaml")
    return home


def main(argv: list[str] | None = None) -> int:
    return cli_errors.run("platform-ops", lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = cli_errors.OneLineArgumentParser(prog="platform-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    home = sub.add_parser("home", help="write $DAGSTER_HOME/dagster.yaml")
    home.add_argument("--postgres", action="store_true", help="PostgreSQL storage (DAGSTER_PG_URL)")
    home.add_argument(
        "--dir", type=Path, default=None, help="default: $DAGSTER_HOME or .dagster_home"
    )
    arch = sub.add_parser("archive", help="read archived runs back")
    arch_sub = arch.add_subparsers(dest="archive_command", required=True)
    show = arch_sub.add_parser("show", help="print an archived run and its event log")
    show.add_argument("run_id")
    show.add_argument("--dir", type=Path, default=None, help="default: $PLATFORM_OPS_ARCHIVE_DIR")
    show.add_argument("--json", action="store_true", help="one JSON object per event")
    records = arch_sub.add_parser(
        "records", help="print archived trigger_history / command_runs rows (JSON lines)"
    )
    records.add_argument("table", choices=["trigger_history", "command_runs"])
    records.add_argument("--id", type=int, action="append", help="only these ids (repeatable)")
    records.add_argument("--dir", type=Path, default=None, help="default: archive directory")
    release = sub.add_parser("release", help="operate on releases")
    release_sub = release.add_subparsers(dest="release_command", required=True)
    unlock = release_sub.add_parser(
        "unlock",
        help="free an environment whose release died (marks its run canceled); refused while "
        "its process runs on this machine",
    )
    unlock.add_argument("environment")
    unlock.add_argument("--store-url", help="record store URL (default $RECORD_STORE_URL)")
    unlock.add_argument(
        "--force",
        action="store_true",
        help="free a holder whose process cannot be checked from here (another machine or "
        "container): only once you made sure its process is gone",
    )
    args = parser.parse_args(argv)

    if args.command == "release":
        return _release_unlock(args.environment, args.store_url, force=args.force)

    if args.command == "archive" and args.archive_command == "records":
        return _archive_records(args.table, args.dir, args.id)
    if args.command == "archive":
        return _archive_show(args.run_id, args.dir, as_json=args.json)

    path = write_home(dagster_home(args.dir), postgres=args.postgres)
    print(f"DAGSTER_HOME={path}  ({'PostgreSQL' if args.postgres else 'SQLite'} storage)")
    return 0


def _release_unlock(environment: str, store_url: str | None, *, force: bool) -> int:
    """A refusal (holder alive here, or unknown without ``--force``) is ``UnlockRefused``: one
    line and exit 2 through ``cli_errors``, nothing changed."""
    import dagster as dg

    from orchestration.release.guard import unlock_release
    from resources.environments import ENVIRONMENTS
    from resources.record_store import DEFAULT_URL, RecordStoreResource, ensure_upgraded

    if environment not in ENVIRONMENTS:
        raise cli_errors.CliInputError(
            f"unknown environment {environment!r}: choose one of {', '.join(ENVIRONMENTS)}"
        )
    store = RecordStoreResource(
        url=cli_errors.store_url(store_url or os.environ.get("RECORD_STORE_URL", DEFAULT_URL))
    )
    with store.clear_errors():
        ensure_upgraded(store.url)
    with dg.DagsterInstance.get() as instance:
        print(unlock_release(store.engine(), instance, environment, force=force))
    return 0


def _archive_show(run_id: str, directory: Path | None, *, as_json: bool) -> int:
    import json

    from orchestration.policies.archive import (
        RUN_ID_RULE,
        default_archive_dir,
        find_archive,
        is_run_id,
        read_archive,
    )
    from resources.identifiers import display

    if not is_run_id(run_id):  # a glob or path character would look up another file
        raise cli_errors.CliInputError(
            f"not a run id: {display(run_id)} (a run id matches {RUN_ID_RULE}, e.g. the UUID "
            "on the run's page in the UI)"
        )
    root = Path(directory or default_archive_dir())
    path = find_archive(root, run_id)
    if path is None:
        print(f"No archive for run {run_id} under {root}", file=sys.stderr)
        return 1
    archived = read_archive(path)  # a damaged file: ArchiveError, one line from cli_errors
    run = archived.run
    print(f"run {run.run_id}  job {run.job_name}  status {run.status.value}  ({path})")
    print(f"tags: {json.dumps(dict(run.tags), sort_keys=True)}")
    for entry in archived.events:
        kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
        if as_json:
            print(json.dumps({"ts": entry.timestamp, "type": kind, "step": entry.step_key,
                              "message": entry.user_message}))  # fmt: skip
        else:
            step = f" [{entry.step_key}]" if entry.step_key else ""
            print(f"{entry.timestamp:.3f} {kind}{step} {entry.user_message}")
    return 0


def _archive_records(table: str, directory: Path | None, ids: list[int] | None) -> int:
    import json

    from orchestration.policies.archive import default_archive_dir
    from orchestration.policies.record_archive import read_records

    root = Path(directory or default_archive_dir())
    wanted = set(ids or [])
    found = 0
    for row in read_records(root, table):  # a damaged file: one line from cli_errors, exit 2
        if not wanted or row["id"] in wanted:
            found += 1
            print(json.dumps(row, sort_keys=True))
    if not found:
        print(f"No archived {table} rows under {root / 'records' / table}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
