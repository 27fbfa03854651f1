"""The operator CLI in-process, and `dagster job execute` of the commands jobs as a subprocess."""

import io
from pathlib import Path

import dagster as dg
import pytest

from orchestration.commands import store
from orchestration.commands.cli import main
from resources.record_store import make_engine
from tests.commands.helpers import count_runs
from tests.job_cli import dagster_home, instance_at, job_execute

REPO = Path(__file__).resolve().parents[2]


def _cli(url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--store-url", url, *args], out=out)
    return code, out.getvalue()


def test_cli_manages_the_catalog_and_requests_runs(sqlite_store_url, tmp_path, capsys):
    url = sqlite_store_url
    assert _cli(url, "set-environment", "staging")[0] == 0
    assert _cli(url, "set-variable", "staging", "PASS", "pw-123", "--secret")[0] == 0
    assert _cli(url, "set-command", "hello", "--command", "echo $PASS")[0] == 0
    code, _ = _cli(url, "set-schedule", "s", "--command", "hello", "--env", "prod",
                   "--cron", "* * * * *")  # fmt: skip
    assert code == 2 and "unknown environment 'prod'" in capsys.readouterr().err
    code, _ = _cli(url, "set-schedule", "s", "--command", "hello", "--env", "staging",
                   "--cron", "0 25 * * *")  # fmt: skip
    assert code == 2 and "invalid cron" in capsys.readouterr().err
    assert _cli(url, "set-schedule", "s", "--command", "hello", "--env", "staging",
                "--cron", "*/5 * * * *")[0] == 0  # fmt: skip

    code, out = _cli(url, "run", "hello", "--env", "staging", "--in", "30")
    run_id = int(out.strip())
    row = store.get_run(make_engine(url), run_id)
    assert (row["status"], row["requested_by"]) == ("pending", "cli")
    assert (row["not_before"] - row["created_at"]).total_seconds() == pytest.approx(30, abs=1)
    code, _ = _cli(url, "retry", str(run_id))
    assert code == 2 and "only failed" in capsys.readouterr().err
    code, out = _cli(url, "list-runs", "--command", "hello")
    assert f"{run_id:>7}  pending" in out
    code, out = _cli(url, "show-run", str(run_id))
    assert "hello in staging pending" in out

    catalog = tmp_path / "c.yaml"
    catalog.write_text("commands:\n  - {name: a, command: 'true'}\n  - {name: a, command: x}\n")
    assert _cli(url, "sync-catalog", str(catalog))[0] == 2
    assert "duplicate command name 'a'" in capsys.readouterr().err
    assert count_runs(make_engine(url)) == 1


@pytest.mark.slow
def test_dagster_job_execute_run_command_now_twice_is_one_command_run_each(
    sqlite_store_url, tmp_path
):
    """As an operator runs it; then a re-execution of the same run does not run it again."""
    url = sqlite_store_url
    assert _cli(url, "set-environment", "staging")[0] == 0
    assert _cli(url, "set-variable", "staging", "WHO", "$(id); reboot")[0] == 0
    assert _cli(url, "set-command", "hello", "--command", 'echo "hello $WHO"')[0] == 0
    home = dagster_home(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  request_command_run:\n    config: {command: hello, environment: staging}\n"
    )
    job_execute(home, "run_command_now", config, {"RECORD_STORE_URL": url})
    engine = make_engine(url)
    (row,) = store.list_runs(engine, store.RunFilter())
    assert row["status"] == "succeeded"
    final = store.events_for(engine, row["id"])[-1]
    assert final["stdout_tail"] == "hello $(id); reboot\n"

    with instance_at(home, RECORD_STORE_URL=url) as instance:
        (run,) = instance.get_runs(dg.RunsFilter(job_name="run_command_now"))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert row["dagster_run_id"] == run.run_id
        # re-execute the whole run: same root run → the same command run, not run again
        from tests.commands import jobs_for_test

        with dg.execute_job(
            dg.reconstructable(jobs_for_test.run_command_now), instance=instance,
            reexecution_options=dg.ReexecutionOptions(parent_run_id=run.run_id),
        ) as again:  # fmt: skip
            assert again.success
            assert again.output_for_node("request_command_run", "command_run_id") == row["id"]
    assert count_runs(engine) == 1
    assert [e["kind"] for e in store.events_for(engine, row["id"])] == ["started", "succeeded"]
