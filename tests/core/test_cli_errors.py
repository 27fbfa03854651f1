"""Every CLI ends an error with one line on stderr and a non-zero exit, never a traceback.

Real subprocesses of ``platform-ops``, ``platform-ops-commands`` and the gateway agent against
real faults: a PostgreSQL URL (with a password) on a closed loopback port, a SQLite store whose
directory cannot be created, a missing catalog, malformed YAML, bad arguments and URLs.
"""

import os
import socket
import subprocess
import sys

import pytest

from orchestration import cli_errors

PASSWORD = "s3cr3t-PW_x9"
PLATFORM_OPS = [sys.executable, "-m", "orchestration.cli"]
COMMANDS = [sys.executable, "-m", "orchestration.commands.cli"]
AGENT = [sys.executable, "-m", "orchestration.gateways.agent", "--id", "g1", "--partition", "P1"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    drop = ("RECORD_STORE_URL", "PLATFORM_OPS_DEBUG")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})}
    )


def assert_one_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exactly one stderr line, the exit code, no traceback, no password; returns the line."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and PASSWORD not in proc.stderr + proc.stdout
    assert PASSWORD[:4] not in proc.stderr  # not even in part
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pg_down() -> str:
    return f"postgresql://ops:{PASSWORD}@127.0.0.1:{closed_port()}/records"


@pytest.mark.parametrize("cli", ["commands", "agent"])
@pytest.mark.parametrize("via", ["--store-url", "RECORD_STORE_URL"])
def test_unreachable_postgres_is_one_line_without_the_password(pg_down, cli, via):
    base, tail = (COMMANDS, ["list-runs"]) if cli == "commands" else (AGENT, [])
    if via == "--store-url":
        proc = run([*base, "--store-url", pg_down, *tail])
    else:
        proc = run([*base, *tail], env={"RECORD_STORE_URL": pg_down})
    hidden = pg_down.replace(PASSWORD, "***")
    assert_one_line(
        proc, 1, f"record store unreachable at {hidden}", "Connection refused", "RECORD_STORE_URL"
    )


@pytest.mark.parametrize("cli", ["commands", "agent"])
def test_sqlite_store_whose_directory_cannot_be_created(tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'sub' / 'store.sqlite'}"
    base, tail = (COMMANDS, ["list-runs"]) if cli == "commands" else (AGENT, [])
    proc = run([*base, "--store-url", url, *tail])
    assert_one_line(proc, 2, f"record store unreachable at {url}", "Not a directory")


@pytest.mark.parametrize(
    "url, needle",
    [
        (f"postgresql://ops:{PASSWORD}@127.0.0.1:notaport/x", "invalid record store URL"),
        (f"postgress://ops:{PASSWORD}@127.0.0.1/x", "invalid record store URL"),
        ("not a url at all", "invalid record store URL"),
    ],
)
def test_malformed_store_url_is_an_input_error_without_the_password(url, needle):
    for argv in ([*COMMANDS, "--store-url", url, "list-runs"], [*AGENT, "--store-url", url]):
        assert_one_line(run(argv), 2, needle, "--store-url")


def test_missing_catalog_and_malformed_yaml(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    missing = tmp_path / "nope.yaml"
    line = assert_one_line(run([*COMMANDS, "--store-url", url, "sync-catalog", str(missing)]), 2)
    assert str(missing) in line
    bad = tmp_path / "bad.yaml"
    for text in ("commands: [1, 2\n", "a: {\n", "\tcommands:\n", "commands:\n  - x: 1\n - y\n"):
        bad.write_text(text)
        line = assert_one_line(run([*COMMANDS, "--store-url", url, "sync-catalog", str(bad)]), 2)
        assert str(bad) in line and "YAML" in line


@pytest.mark.parametrize(
    "argv",
    [
        [*COMMANDS, "retry", "not-a-number"],
        [*COMMANDS, "no-such-action"],
        [*COMMANDS, "run", "hello"],  # --env missing
        [*COMMANDS],
        [*PLATFORM_OPS, "archive", "records", "no_such_table"],
        [*PLATFORM_OPS, "archive", "show"],
        [*PLATFORM_OPS, "nope"],
        [*AGENT[:3], "--partition", "P1"],  # --id missing
        [*AGENT, "--store-url", "sqlite://", "--lease", "1", "--heartbeat", "2"],
        [*AGENT, "--store-url", "sqlite://", "--poll", "soon"],
    ],
    ids=lambda argv: " ".join(argv[2:]),
)
def test_invalid_argument_is_one_line_exit_2(argv):
    assert_one_line(run(argv), 2, "error:", "--help")


def test_debug_variable_adds_the_traceback(pg_down):
    proc = run([*COMMANDS, "--store-url", pg_down, "list-runs"], env={"PLATFORM_OPS_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("platform-ops-commands: error: record store")


def test_unexpected_error_is_one_line_with_the_debug_hint(capsys):
    def body() -> int:
        raise RuntimeError("something odd\nsecond line")

    assert cli_errors.run("tool", body) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "tool: error: unexpected RuntimeError: something odd "
        "(run with PLATFORM_OPS_DEBUG=1 for the traceback)"
    )


def test_safe_url_hides_the_password_parsable_or_not():
    assert PASSWORD not in cli_errors.safe_url(f"postgresql://u:{PASSWORD}@h:5432/d")
    assert PASSWORD not in cli_errors.safe_url(f"postgresql://u:{PASSWORD}@h:port/d")
    assert cli_errors.safe_url("sqlite:///x.db") == "sqlite:///x.db"
