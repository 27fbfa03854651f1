"""A run loads no heavy client it does not use (issue 17).

Every schedule tick, trigger request, command batch and gateway poll is a run that loads the code
location in a fresh process. Google's BigQuery client (with its storage client, pandas, pyarrow,
grpc and OpenTelemetry: ~150 MB and ~1 s), dagster-gcp, dagster_graphql and Alembic are imported
by the code that uses them, when it runs (see the modules' docstrings), so loading the location —
and running a light job through ``dagster job execute`` — must leave them out of ``sys.modules``.
Checked in fresh subprocesses: this process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from resources import record_store
from tests.conftest import TEST_API_KEY
from tests.job_cli import REPO, dagster_home, job_env, runs_of

# Module prefixes a light run must not import, and why each is heavy.
HEAVY = {
    "google.cloud.bigquery": "BigQuery client (quota_cleanup, archive sink)",
    "google.cloud.bigquery_storage_v1": "BigQuery storage client",
    "google.api_core": "Google API core (BigQuery errors)",
    "pandas": "pulled in by the BigQuery storage client",
    "pyarrow": "pulled in by pandas/BigQuery",
    "grpc": "pulled in by google.api_core",
    "opentelemetry": "tracing, only when PLATFORM_OPS_TRACING is set",
    "docker": "Docker client (dev and deploy only)",
    "dagster_gcp": "dagster-gcp (BigQueryResource on GCP)",
    "dagster_graphql": "GraphQL client of parent/child runs",
    "gql": "pulled in by dagster_graphql",
    "sqlalchemy.orm": "the ORM (the record store uses Core tables only)",
}
# Some runs need these (Dagster's run storage imports Alembic; an HTTP job builds an httpx
# client), so only loading the location must leave them out.
LOAD_ONLY = {
    "alembic": "migrations: only when the record store is behind",
    "httpx": "HTTP clients: built by the ops that call out (webhooks go over http.client)",
    "httpcore": "pulled in by httpx",
}

LOAD_AND_RESOLVE = """
import json, sys
import dagster as dg
from orchestration.definitions import defs

# What `dagster job execute` and the code server do before a step runs: load, validate, resolve
# every job and its run config schema; and each resource's config schema.
dg.Definitions.validate_loadable(defs)
for job in defs.resolve_all_job_defs():
    job.run_config_schema
for resource in defs.get_repository_def().get_top_level_resources().values():
    resource.config_schema
print(json.dumps(sorted(sys.modules)))
"""

# `dagster job execute` in this process (runpy), writing sys.modules to argv[1] at exit.
RECORDING_CLI = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "dagster"
runpy.run_module("dagster", run_name="__main__", alter_sys=True)
"""


def _heavy(modules: list[str], prefixes: dict[str, str]) -> dict[str, str]:
    """The heavy prefixes present in ``modules``, each with its first module as evidence."""
    found: dict[str, str] = {}
    for prefix in prefixes:
        hit = next((m for m in modules if m == prefix or m.startswith(prefix + ".")), None)
        if hit:
            found[prefix] = hit
    return found


def _report(found: dict[str, str], prefixes: dict[str, str]) -> str:
    return "; ".join(f"{p} ({prefixes[p]}) via {m}" for p, m in found.items())


def test_loading_the_code_location_imports_no_heavy_client():
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RESOLVE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "orchestration.definitions" in modules  # the probe did load the location
    prefixes = {**HEAVY, **LOAD_ONLY}
    found = _heavy(modules, prefixes)
    assert not found, "loading the code location imported: " + _report(found, prefixes)


# Libraries that modules bound in the code location import only when they call them; other
# modules still import them at load (resources.notifier: httpx; orchestration.triggers.spec:
# croniter), so this checks these modules alone. Once no module does, move them to HEAVY.
WHEN_CALLED = {
    "httpx": "HTTP client (~60 ms, ~6 MB with httpcore and h11)",
    "httpcore": "httpx's transport",
    "h11": "HTTP/1.1",
    "croniter": "cron evaluation (with dateutil)",
    "dateutil": "pulled in by croniter",
}
IMPORTING_WHEN_CALLED = (
    "resources.http_api",
    "resources.platform_api",
    "resources.supabase",
    "orchestration.gateways.checks",
    "orchestration.maintenance.platform_calls",
    "orchestration.commands.cron",
)


def test_modules_import_http_and_cron_libraries_only_when_they_call_them():
    code = f"import json, sys\nimport {', '.join(IMPORTING_WHEN_CALLED)}\n"
    code += "print(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    found = _heavy(modules, WHEN_CALLED)
    assert not found, "importing them imported: " + _report(found, WHEN_CALLED)


def _recorded_run(home: Path, job: str, env: dict, modules_file: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-c", RECORDING_CLI, str(modules_file), "job", "execute"]
    cmd += ["-m", "orchestration.definitions", "-j", job, *args]
    proc = subprocess.run(
        cmd, cwd=REPO, env=job_env(home, env), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = runs_of(home, job)
    assert [r.status.value for r in runs] == ["SUCCESS"], runs
    return json.loads(modules_file.read_text())


@pytest.mark.slow
def test_a_trigger_run_through_the_cli_imports_no_heavy_client(tmp_path):
    """escalate_alerts over due alerts, as a sensor's run does it (log-only notifications)."""
    from dev.seed import seed_alerts

    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    record_store.upgrade(store_url)
    engine = record_store.make_engine(store_url)
    seed_alerts(engine, due=3, fresh=0)
    config = tmp_path / "run.yaml"
    ops = {"escalate_alerts_worker": {"config": {"record_ids": [1, 2, 3]}}}
    config.write_text(yaml.safe_dump({"ops": ops}))
    modules = _recorded_run(
        dagster_home(tmp_path),
        "escalate_alerts",
        {"RECORD_STORE_URL": store_url, "TRIGGERS_WEBHOOK_URL": ""},
        tmp_path / "modules.json",
        "-c",
        str(config),
    )
    with engine.connect() as conn:
        queued = conn.execute(sa.text("SELECT COUNT(*) FROM notification_outbox")).scalar()
    engine.dispose()
    assert queued == 3  # the run did its work
    found = _heavy(modules, HEAVY)
    assert not found, "an escalate_alerts run imported: " + _report(found, HEAVY)


@pytest.mark.slow
def test_a_platform_run_through_the_cli_imports_no_heavy_client(sandbox, tmp_path):
    """quota_reset for today's partition against the sandbox, as its schedule's run does it."""
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date().isoformat()
    env = {"CA_API_URL": sandbox.base_url, "CA_ROOT_API_KEY": TEST_API_KEY}
    tags = json.dumps({"dagster/partition": today})
    modules = _recorded_run(
        dagster_home(tmp_path), "quota_reset", env, tmp_path / "modules.json", "--tags", tags
    )
    assert sandbox.state()["effects"]["reset-daily"] == {today: 1}
    found = _heavy(modules, HEAVY)
    assert not found, "a quota_reset run imported: " + _report(found, HEAVY)


# --- the record store's quick "already current" check agrees with Alembic's --------------------


def _versions(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_quick_head_check_reads_the_real_migrations_like_alembic():
    from alembic.script import ScriptDirectory

    graph = record_store._graph()
    assert graph is not None, "the migration files no longer spell their revisions as literals"
    script = ScriptDirectory.from_config(record_store.alembic_config("sqlite://"))
    assert set(graph) == {r.revision for r in script.walk_revisions()}
    heads = set(graph) - {d for down, _ in graph.values() for d in down}
    assert heads == set(script.get_heads())


@pytest.mark.parametrize(
    "drop",
    [(), ("release_0001",), ("commands_0002",), ("commands_0002", "policies_0001"), "all"],
)
def test_quick_head_check_agrees_with_alembic_on_a_store(sqlite_store_url, drop):
    """A current store, stores one or two areas behind, an empty version table: same answer."""
    engine = record_store.make_engine(sqlite_store_url)
    with engine.begin() as conn:
        table = record_store.VERSION_TABLE
        if drop == "all":
            conn.execute(sa.text(f"DELETE FROM {table}"))
        for revision in drop if drop != "all" else ():
            conn.execute(sa.text(f"DELETE FROM {table} WHERE version_num = :r"), {"r": revision})
            down = record_store._graph()[revision][0]  # type: ignore[index]
            for parent in down:  # the store is then at the parent, as before that migration
                conn.execute(sa.text(f"INSERT INTO {table} VALUES (:r)"), {"r": parent})
    with engine.connect() as conn:
        current = record_store._stored_revisions(conn)
    quick = record_store._covers_heads(record_store._graph(), current)  # type: ignore[arg-type]
    assert quick is not None
    assert quick == record_store._at_heads_by_alembic(engine, sqlite_store_url)
    assert quick == (drop == ())
    engine.dispose()


def test_quick_head_check_defers_to_alembic_when_it_cannot_tell(tmp_path):
    """Files it cannot read as literals, a branch label as a reference, an unknown stored
    revision: no quick answer (Alembic decides)."""
    computed = _versions(tmp_path / "computed", {"a.py": "revision = make_id()\n"})
    assert record_store._graph(computed) is None
    labelled = _versions(
        tmp_path / "labelled",
        {
            "a.py": 'revision = "a"\ndown_revision = None\nbranch_labels = ("core",)\n',
            "b.py": 'revision = "b"\ndown_revision = None\ndepends_on = "core@head"\n',
        },
    )
    assert record_store._graph(labelled) is None
    typed = _versions(
        tmp_path / "typed",
        {
            "a.py": 'revision: str = "a"\ndown_revision: str | None = None\n',
            "b.py": 'revision: str = "b"\ndown_revision = "a"\ndepends_on = None\n',
        },
    )
    graph = record_store._graph(typed)
    assert graph == {"a": ((), ()), "b": (("a",), ())}
    assert record_store._covers_heads(graph, {"b"}) is True
    assert record_store._covers_heads(graph, {"a"}) is False
    assert record_store._covers_heads(graph, {"zz"}) is None
    # A stored revision below another stored one: a table Alembic refuses; no quick "current".
    assert record_store._covers_heads(graph, {"a", "b"}) is None
    # Files that are not Python, or not plain literals of plain types: Alembic decides.
    broken = _versions(tmp_path / "broken", {"a.py": "revision = (\n"})
    assert record_store._graph(broken) is None
    unhashable = _versions(tmp_path / "unhashable", {"a.py": 'revision = "a"\nx = {[]: 1}\n'})
    assert record_store._graph(unhashable) is None


def test_quick_head_check_leaves_a_tampered_version_table_to_alembic(sqlite_store_url):
    """An ancestor stored beside its descendant (Alembic: "overlaps"): the quick check does not
    answer "current"; the store's answer is Alembic's."""
    engine = record_store.make_engine(sqlite_store_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {record_store.VERSION_TABLE} VALUES ('commands_0001')"))
    with engine.connect() as conn:
        current = record_store._stored_revisions(conn)
    assert {"commands_0001", "commands_0002"} <= current
    assert record_store._covers_heads(record_store._graph(), current) is None  # type: ignore[arg-type]
    assert record_store._at_heads(engine, sqlite_store_url) is False
    engine.dispose()
