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
    shown = pg_down.replace(f"ops:{PASSWORD}@", "")  # the userinfo is never shown
    assert_one_line(
        proc, 1, f"record store unreachable at {shown}", "Connection refused", "RECORD_STORE_URL"
    )


@pytest.mark.parametrize("cli", ["commands", "agent"])
def test_sqlite_store_whose_directory_cannot_be_created(tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'sub' / 'store.sqlite'}"
    base, tail = (COMMANDS, ["list-runs"]) if cli == "commands" else (AGENT, [])
    proc = run([*base, "--store-url", url, *tail])
    assert_one_line(proc, 2, f"directory {blocker / 'sub'} of the SQLite record store")


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


# --- FX2: no piece of a record-store password in any line, whatever the URL's shape ------------

PW_BASE = "Hunter2Secret"
# The password with each character a URL or a DSN treats specially, percent-escaped, unicode.
PASSWORDS = [PW_BASE] + [
    f"Hun{c}ter2Secret" for c in ["@", ":", "/", "%40", "?", "#", " ", "&", "@@", "'"]
] + ["Hünter2Sécret€", "pässwörd-Ünïcødé"]  # fmt: skip


def url_shapes(pw: str, port: int) -> list[str]:
    """Every place a password can sit in a store URL (or be the whole value)."""
    return [
        f"postgresql://u:{pw}@127.0.0.1:{port}/db",
        f"postgresql+psycopg2://u:{pw}@127.0.0.1:{port}/db",
        f"postgresql://u:{pw}@127.0.0.1:notaport/db",
        f"postgresql://u@127.0.0.1:{port}/db?password={pw}",
        f"postgresql://127.0.0.1:{port}/db?user=u&password={pw}",
        f"postgresql://127.0.0.1:{port}/db?PASSWORD={pw}&sslmode=disable",
        f"postgresql://u@127.0.0.1:{port}/db?passfile={pw}",
        f"postgresql+psycopg2://u:{pw}@/db?host=127.0.0.1&port={port}",
        f"postgress://u:{pw}@127.0.0.1:{port}/db",
        pw,
        f"host=127.0.0.1 port={port} user=u password={pw}",
    ]


def password_pieces(pw: str) -> set[str]:
    from urllib.parse import unquote

    return {form[i : i + 4] for form in (pw, unquote(pw)) for i in range(len(form) - 3)}


def assert_no_piece(text: str, pw: str, what: str) -> None:
    leaked = sorted(p for p in password_pieces(pw) if p in text)
    assert not leaked, f"{what}: {leaked} of the password in {text!r}"


def record_store_error(url: str) -> str:
    """The sensor / run headline: ``RecordStoreError`` from a real connection attempt."""
    from resources.record_store import RecordStoreError, RecordStoreResource

    store = RecordStoreResource(url=url, auto_upgrade=False)
    try:
        with store.clear_errors(), store.engine().connect():
            pass
    except RecordStoreError as exc:
        return str(exc)
    except Exception as exc:  # not a connection error (a bad DSN option): shown too, as clean
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{url!r} connected")


def cli_line(url: str, capsys, monkeypatch) -> str:
    """The CLI's error line (``cli_errors.run``) for a store at ``url``, in-process."""
    from resources.db import make_engine

    monkeypatch.setattr(cli_errors, "_store_url", None)

    def body() -> int:
        cli_errors.store_url(url)
        make_engine(url).connect()
        return 0

    assert cli_errors.run("tool", body) in (1, 2)
    return capsys.readouterr().err


def test_no_piece_of_the_password_in_any_display_path(capsys, monkeypatch):
    from resources import db

    port = closed_port()
    for pw in PASSWORDS:
        for url in url_shapes(pw, port):
            for what, text in [
                ("where", db.where(url)),
                ("show_url", db.show_url(url)),
                ("safe_url", cli_errors.safe_url(url)),
                ("RecordStoreError", record_store_error(url)),
                ("cli line", cli_line(url, capsys, monkeypatch)),
            ]:
                assert_no_piece(text, pw, f"{what} of {url!r}")
                assert "\n" not in text.strip() or what == "RecordStoreError", text


def test_what_is_shown_of_a_store_url():
    from resources import db

    assert db.show_url("postgresql://u:pw@db.internal:6432/records?password=x") == (
        "postgresql://db.internal:6432/records"
    )
    assert db.where("postgresql://u:p@ss@10.0.0.5:5433/platform") == "10.0.0.5:5433/platform"
    assert db.show_url("postgresql+psycopg2://u:x@/db?host=10.1.1.1&port=1") == (
        "postgresql+psycopg2://10.1.1.1:1/db"
    )
    assert db.show_url("sqlite:////var/x.sqlite?mode=ro") == "sqlite:////var/x.sqlite"
    assert db.where("sqlite:////var/x.sqlite") == "sqlite file /var/x.sqlite"
    for not_a_url in ("Hunter2Secret", "", "host=h password=p", "postgresql:/h/db"):
        assert "not a URL" in db.show_url(not_a_url)
    assert db.url_hint("postgresql://u:a@b@h/db").endswith("%40")
    assert db.url_hint("postgresql://u:a%40b@h/db") == ""


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{PW_BASE}@127.0.0.1:{{port}}/db",
        "postgresql://u:Hun@ter2Secret@127.0.0.1:{port}/db",
        f"postgresql://u@127.0.0.1:{{port}}/db?password={PW_BASE}",
        f"postgresql://127.0.0.1:{{port}}/db?user=u&password={PW_BASE}",
        PW_BASE,
        f"postgresql://u:{PW_BASE}@127.0.0.1:notaport/db",
    ],
)
@pytest.mark.parametrize("cli", ["commands", "agent"])
def test_store_url_password_never_printed_by_a_real_cli(url, cli):
    url = url.format(port=closed_port())
    base, tail = (COMMANDS, ["list-runs"]) if cli == "commands" else (AGENT, [])
    proc = run([*base, *tail], env={"RECORD_STORE_URL": url})
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (1, 2)
    pw = "Hun@ter2Secret" if "Hun@" in url else PW_BASE
    assert_no_piece(proc.stderr + proc.stdout, pw, cli)


@pytest.mark.parametrize("cli", ["commands", "agent"])
@pytest.mark.parametrize("missing", ["nodir", "no/such/dirs", "a-file/sub"])
def test_explicit_sqlite_url_in_a_missing_directory_creates_nothing(tmp_path, cli, missing):
    (tmp_path / "a-file").write_text("not a directory")
    before = sorted(tmp_path.rglob("*"))
    url = f"sqlite:///{tmp_path / missing / 'store.sqlite'}"
    base, tail = (COMMANDS, ["list-runs"]) if cli == "commands" else (AGENT, [])
    proc = run([*base, "--store-url", url, *tail])
    line = assert_one_line(proc, 2, f"directory {tmp_path / missing}", "nothing was created")
    assert "does not exist" in line or "is not a directory" in line
    assert sorted(tmp_path.rglob("*")) == before


def test_only_the_default_sqlite_store_gets_its_directory_created():
    from resources import db
    from resources.record_store import DEFAULT_URL

    assert f"sqlite:///{db.DEFAULT_SQLITE_PATH}" == DEFAULT_URL


def test_bad_record_store_setting_is_an_input_error():
    proc = run([*COMMANDS, "--store-url", "sqlite://", "list-runs"],
               env={"RECORD_STORE_LOCK_TIMEOUT_MS": "soon"})  # fmt: skip
    assert_one_line(proc, 2, "RECORD_STORE_LOCK_TIMEOUT_MS", "whole number")


# --- FX2: the catalog file's loading errors through the real CLI -------------------------------

BAD_CATALOGS = {
    "deep flow": ("commands: " + "[" * 5000 + "]" * 5000 + "\n", "line 1", "nested more than"),
    "deep block": ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 200)), "line 6",
                   "nested more than"),
    "5000 digits": ("commands:\n  - name: a\n    command: echo\n    timeout_seconds: "
                    + "9" * 5000 + "\n", "line 4", "5000 characters"),
    "NUL": ('commands:\n  - name: a\n    command: "echo\x00x"\n', "line 3, column 19", "U+0000"),
    "bad date": ("commands:\n  - name: a\n    command: echo\n    description: 2024-02-30\n",
                 "line 4", "day is out of range"),
}  # fmt: skip


def _rows(url: str) -> dict:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        rows = {n: conn.execute(sa.text(f'SELECT * FROM "{n}"')).fetchall() for n in names}
    engine.dispose()
    return rows


@pytest.mark.parametrize("case", BAD_CATALOGS, ids=str)
def test_catalog_loading_errors_are_one_line_naming_file_and_line(sqlite_store_url, tmp_path,
                                                                   case):  # fmt: skip
    text, where, problem = BAD_CATALOGS[case]
    good = tmp_path / "good.yaml"
    good.write_text("commands:\n  - name: keep\n    command: echo kept\n")
    synced = run([*COMMANDS, "--store-url", sqlite_store_url, "sync-catalog", str(good)])
    assert synced.returncode == 0, synced.stderr
    before = _rows(sqlite_store_url)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = run([*COMMANDS, "--store-url", sqlite_store_url, "sync-catalog", str(bad)])
    line = assert_one_line(proc, 2, str(bad), where, problem, "nothing was changed")
    assert len(line) < 500 and "unexpected" not in line
    assert _rows(sqlite_store_url) == before


@pytest.mark.parametrize(
    "args",
    [
        ["retry", "0"],
        ["retry", "9" * 5000],
        ["show-run", "-3"],
        ["list-runs", "--limit", "0"],
        ["list-runs", "--limit", "1e9"],
        ["run", "backup", "--env", "staging", "--in", "-1"],
        ["run", "backup", "--env", "staging", "--in", "nan"],
        ["set-command", "c", "--command", "true", "--timeout", "0"],
        ["set-command", "c", "--command", "true", "--timeout", "604801"],
    ],
    ids=" ".join,
)
def test_commands_cli_numbers_are_checked_before_the_store_is_opened(tmp_path, args):
    """Each number is refused by the parser: one line, exit 2, and no store file is created."""
    store = tmp_path / "store.sqlite"
    proc = run([*COMMANDS, "--store-url", f"sqlite:///{store}", *args])
    assert_one_line(proc, 2, "error:", "must be")
    assert not store.exists()


def test_sync_catalog_reads_the_file_before_opening_the_store(tmp_path):
    """A bad catalog against a new store URL creates no store (nothing changed, nothing made)."""
    store = tmp_path / "store.sqlite"
    bad = tmp_path / "catalog.yaml"
    bad.write_text("commands:\n  - name: x\n    command: true\n    shell: 'false'\n")
    proc = run([*COMMANDS, "--store-url", f"sqlite:///{store}", "sync-catalog", str(bad)])
    assert_one_line(proc, 2, str(bad))
    assert not store.exists()
