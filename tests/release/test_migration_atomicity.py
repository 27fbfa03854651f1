"""Migrations apply whole or not at all (issue #14, class 6).

A file that could end the job's transaction (COMMIT, ROLLBACK, SAVEPOINT, ...) or that PostgreSQL
will not run in a transaction block is refused before any migration SQL is sent; a file in the
migrations directory that is not named NNNN_name.sql is an error naming it. Checked on the real
sandbox, with its SQL run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import httpx
import pytest

from orchestration.definitions import defs
from orchestration.release import migrations as migrations_lib
from orchestration.release import sql_scan
from orchestration.release.sql_scan import SqlScanError, refused_statements, split_statements
from tests.conftest import TEST_API_KEY, TEST_SUPABASE_TOKEN, run_config
from tests.support.sandbox import running_sandbox

# (SQL text, [(line, first words) of every statement refused]).
REFUSED = [
    ("commit;", [(1, "COMMIT")]),
    ("COMMIT", [(1, "COMMIT")]),
    ("CREATE TABLE a (id INT);\nCOMMIT WORK;", [(2, "COMMIT WORK")]),
    ("CREATE TABLE a (id INT);\n\n  end;", [(3, "END")]),
    ("Rollback", [(1, "ROLLBACK")]),
    ("begin;\nCREATE TABLE a (id INT);\ncommit;", [(1, "BEGIN"), (3, "COMMIT")]),
    ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE;", [(1, "BEGIN TRANSACTION ISOLATION LEVEL")]),
    ("\tStArT\n  TrAnSaCtIoN ;", [(1, "START TRANSACTION")]),
    ("abort;", [(1, "ABORT")]),
    ("END TRANSACTION", [(1, "END TRANSACTION")]),
    ("COMMIT AND CHAIN;", [(1, "COMMIT AND CHAIN")]),
    (
        "savepoint s1; ROLLBACK TO SAVEPOINT s1; release savepoint s1;",
        [(1, "SAVEPOINT S1"), (1, "ROLLBACK TO SAVEPOINT S1"), (1, "RELEASE SAVEPOINT S1")],
    ),
    ("PREPARE TRANSACTION 'x';", [(1, "PREPARE TRANSACTION")]),
    (
        "COMMIT PREPARED 'x'; ROLLBACK PREPARED 'y'",
        [(1, "COMMIT PREPARED"), (1, "ROLLBACK PREPARED")],
    ),
    ("-- lead comment\n/* block */ COMMIT/* between */;", [(2, "COMMIT")]),
    ("SELECT 1;COMMIT;SELECT 2", [(1, "COMMIT")]),
    ("VACUUM ANALYZE t;", [(1, "VACUUM ANALYZE T")]),
    ("vacuum", [(1, "VACUUM")]),
    ("create index concurrently i on t (x);", [(1, "CREATE INDEX CONCURRENTLY I")]),
    (
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);",
        [(1, "CREATE UNIQUE INDEX CONCURRENTLY")],
    ),
    ("DROP INDEX CONCURRENTLY i;", [(1, "DROP INDEX CONCURRENTLY I")]),
    ("REINDEX TABLE CONCURRENTLY t;", [(1, "REINDEX TABLE CONCURRENTLY T")]),
    ("REINDEX DATABASE d;", [(1, "REINDEX DATABASE D")]),
    ("CREATE DATABASE d;", [(1, "CREATE DATABASE D")]),
    ("DROP DATABASE IF EXISTS d;", [(1, "DROP DATABASE IF EXISTS")]),
    ("CREATE TABLESPACE s LOCATION '/x';", [(1, "CREATE TABLESPACE S LOCATION")]),
    ("ALTER SYSTEM SET work_mem = '64MB';", [(1, "ALTER SYSTEM SET WORK_MEM")]),
    ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY;", [(1, "ALTER TABLE P DETACH")]),
    ("CLUSTER;", [(1, "CLUSTER")]),
    ("DISCARD ALL;", [(1, "DISCARD ALL")]),
    ("COPY t FROM STDIN;", [(1, "COPY T FROM STDIN")]),
    # A COMMIT after a function whose body is dollar-quoted is still top level.
    ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;\nCOMMIT;", [(2, "COMMIT")]),
    # After a BEGIN ATOMIC body closes, the next statement is top level again.
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nrollback;",
        [(2, "ROLLBACK")],
    ),
]

LEGIT = [
    "CREATE TABLE a (id INT);",
    "SELECT 'commit; rollback; begin';",
    "SELECT E'it\\'s; commit';",
    "SELECT 'it''s; commit';",
    'SELECT 1 AS "commit; end";',
    "-- commit;\nSELECT 1;",
    "/* begin; commit; /* nested commit; */ rollback; */ SELECT 1;",
    "DO $$ BEGIN\n  PERFORM 1;\n  -- commit here would be refused by plpgsql\nEND $$;",
    "DO $body$\nBEGIN\n  RAISE NOTICE 'x; commit';\nEND\n$body$ LANGUAGE plpgsql;",
    "DO $a$ BEGIN PERFORM $b$ commit; $b$; END $a$;",
    "CREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  -- COMMIT? no.\n  RETURN NEW;\nEND;\n$$"
    " LANGUAGE plpgsql;",
    "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n"
    "  SELECT CASE WHEN true THEN 1 ELSE 2 END;\nEND;",
    "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;",
    "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); END;",
    "CREATE RULE r AS ON INSERT TO t DO INSTEAD (INSERT INTO a VALUES (1); INSERT INTO b"
    " VALUES (2));",
    "CREATE INDEX i ON t (x);",
    "CREATE TABLE commits (rollback_reason TEXT, begin_at TIMESTAMP, end_at TIMESTAMP);",
    "SELECT a$b$c FROM t;",
    "SELECT $1;",
    "ALTER TABLE t ADD COLUMN savepoint_name TEXT;",
    "UPDATE t SET x = CASE WHEN y THEN 1 END;",
    "CLUSTER t USING i;",
    "ANALYZE t;",
]

UNSURE = [
    ("SELECT 'unterminated;\nCOMMIT;", 1, "unterminated string literal"),
    ("SELECT 1;\nSELECT $$ body;\nCOMMIT;", 2, "unterminated $$ body"),
    ("SELECT 1; /* open /* nested */ COMMIT;", 1, "unterminated /* comment"),
    ('SELECT "open;\nCOMMIT;', 1, "unterminated quoted identifier"),
    ("SELECT 1;\n\nSELECT $tag$ x $other$;", 3, "unterminated $tag$ body"),
]


@pytest.mark.parametrize(("sql", "expected"), REFUSED)
def test_transaction_control_and_non_transactional_statements_are_found(sql, expected):
    assert [(r.line, r.text) for r in refused_statements(sql)] == expected


@pytest.mark.parametrize("sql", LEGIT)
def test_legit_statements_and_quoted_keywords_pass(sql):
    assert refused_statements(sql) == []


@pytest.mark.parametrize(("sql", "line", "what"), UNSURE)
def test_text_that_cannot_be_split_safely_is_refused(sql, line, what):
    with pytest.raises(SqlScanError) as caught:
        split_statements(sql)
    assert (caught.value.line, caught.value.what) == (line, what)


@pytest.mark.parametrize("keyword", ["COMMIT", "ROLLBACK", "END", "BEGIN", "SAVEPOINT x"])
def test_a_keyword_is_found_at_every_position_and_hidden_in_every_quote(keyword):
    """The same keyword as a statement after N statements (found, on its line), and inside
    every kind of quote at the same places (ignored)."""
    hides = ["'{k};'", "E'\\'{k};'", '"{k};"', "$${k};$$", "$q${k};$q$", "/* {k}; */", "-- {k};\n"]
    for before in range(4):
        head = "SELECT 1;\n" * before
        found = refused_statements(f"{head}{keyword};\nSELECT 2;")
        assert [(r.line, r.text.split()[0]) for r in found] == [(before + 1, keyword.split()[0])]
        for hide in hides:
            text = f"{head}SELECT {hide.format(k=keyword)};\nSELECT 2;"
            assert refused_statements(text) == [], text


def _write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


GOOD = {
    "0001_first.sql": "CREATE TABLE atom_first (id INTEGER PRIMARY KEY);",
    "0002_second.sql": "CREATE TABLE atom_second (id INTEGER PRIMARY KEY);",
}


@pytest.mark.parametrize(
    "bad_name",
    [
        "0003_x.SQL",
        "3_x.sql",
        "0003-x.sql",
        "0003_x.sql.bak",
        "0003_X Y.sql",
        "0003_X.sql",
        "00003_x.sql",
        "0003_.sql",
        "0003_x.sq",
        "x.sql",
        ".0003_x.sql.swp",
        "notes.txt",
    ],
)
def test_every_misnamed_file_is_an_error_naming_it(tmp_path, bad_name):
    directory = _write(tmp_path / "m", {**GOOD, bad_name: "CREATE TABLE atom_bad (id INT);"})
    with pytest.raises(migrations_lib.MigrationError) as caught:
        migrations_lib.discover(directory)
    assert bad_name in str(caught.value) and "Nothing was applied" in str(caught.value)


def test_all_directory_problems_in_one_error_and_the_ignore_list(tmp_path):
    directory = _write(
        tmp_path / "m",
        {**GOOD, "0003_x.SQL": "x", "3_y.sql": "x", "0002_again.sql": "x", "0004_empty.sql": " "},
    )
    (directory / "0005_dir.sql").mkdir()
    with pytest.raises(migrations_lib.MigrationError) as caught:
        migrations_lib.discover(directory)
    message = str(caught.value)
    for name in ("0003_x.SQL", "3_y.sql", "0005_dir.sql", "0002_again.sql", "0004_empty.sql"):
        assert name in message
    ok = _write(tmp_path / "ok", {**GOOD, "README.md": "# how", ".gitkeep": ""})
    assert [m.filename for m in migrations_lib.discover(ok)] == list(GOOD)


def test_check_atomic_lists_every_offending_file_and_line():
    files = [
        migrations_lib.Migration("0001", "a", "0001_a.sql", "CREATE TABLE a (id INT);\ncommit;"),
        migrations_lib.Migration("0002", "b", "0002_b.sql", "DO $$ BEGIN PERFORM 1; END $$;"),
        migrations_lib.Migration("0003", "c", "0003_c.sql", "SELECT 1;\n\n  VACUUM;"),
        migrations_lib.Migration("0004", "d", "0004_d.sql", "SELECT 'open"),
    ]
    with pytest.raises(migrations_lib.MigrationError) as caught:
        migrations_lib.check_atomic(files)
    message = str(caught.value)
    assert "0001_a.sql line 2: COMMIT" in message
    assert "0003_c.sql line 3: VACUUM" in message
    assert "0004_d.sql line 1: unterminated string literal" in message
    assert "0002_b.sql" not in message
    assert "\n" not in message  # one line


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_sandbox(request, tmp_path, monkeypatch):
    """The platform sandbox whose Management API runs SQL on SQLite, or on PostgreSQL."""
    db_url = request.getfixturevalue("pg_schema_url") if request.param == "postgres" else None
    with running_sandbox(tmp_path, orgs=0, supabase_db_url=db_url) as server:
        monkeypatch.setenv("CA_API_URL", server.base_url)
        monkeypatch.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
        monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", TEST_SUPABASE_TOKEN)
        monkeypatch.delenv("SUPABASE_API_URL", raising=False)
        monkeypatch.delenv("SUPABASE_PROJECT_REF", raising=False)
        yield server


def _sql(server, sql) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/projects/sandbox/database/query",
        json={"query": sql},
        headers={"Authorization": f"Bearer {TEST_SUPABASE_TOKEN}"},
    )


def _table_exists(server, table) -> bool:
    response = _sql(server, f"SELECT count(*) AS n FROM {table}")
    if response.is_success:
        return True
    assert response.status_code == 400 and table in response.text, response.text
    return False


def _migrate(instance, directory):
    config = run_config(ops={"apply_migrations": {"config": {"migrations_dir": str(directory)}}})
    result = defs.get_job_def("migrate").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False
    )
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failures[0].event_specific_data.error.message if failures else ""
    return result, message


def _apply_requests(server):
    return [r for r in server.requests if (r["idempotency_key"] or "").startswith("migrate:")]


# The file: its own COMMIT, then an error. Sent as is, the first table stayed committed
# while the step said "rolled back", and the next release failed on "already exists".
SELF_COMMITTING = (
    "CREATE TABLE atom_partial (id INTEGER PRIMARY KEY);\n"
    "COMMIT;\n"
    "CREATE TABLE atom_partial_broken (id INTEGER;\n"
)


@pytest.mark.parametrize(
    "bad_file",
    [
        {"0003_self_commit.sql": SELF_COMMITTING},
        {"0003_savepoint.sql": "SAVEPOINT s;\nCREATE TABLE atom_partial (id INT);"},
        {"0003_index.sql": "CREATE INDEX CONCURRENTLY atom_i ON atom_first (id);"},
        {"0003_fine.sql": "CREATE TABLE atom_partial (id INT);", "0004_x.SQL": "SELECT 1;"},
        {"0003_fine.sql": "CREATE TABLE atom_partial (id INT);", "4_x.sql": "SELECT 1;"},
    ],
    ids=["commit", "savepoint", "concurrently", "upper-suffix", "short-version"],
)
def test_a_bad_file_anywhere_applies_nothing(instance, sql_sandbox, tmp_path, bad_file):
    directory = _write(tmp_path / "migrations", {**GOOD, **bad_file})
    result, message = _migrate(instance, directory)
    assert not result.success
    bad_name = next(n for n, sql in bad_file.items() if n != "0003_fine.sql")
    assert bad_name in message
    assert "\n" not in message.strip()
    # Nothing of any file was sent or applied: not the good ones before it, not its own start.
    assert _apply_requests(sql_sandbox) == []
    for table in ("atom_first", "atom_second", "atom_partial"):
        assert not _table_exists(sql_sandbox, table), table
    tracked = _sql(sql_sandbox, "SELECT version FROM platform_ops_schema_migrations")
    if any(not migrations_lib.FILENAME_RE.match(name) for name in bad_file):
        # A misnamed file fails discovery: nothing is sent, not even the tracking table.
        assert tracked.status_code == 400, tracked.text
    else:
        # Refused after reading what is applied (which creates the tracking table): empty.
        assert tracked.is_success and tracked.json() == [], tracked.text

    # Once the file is fixed, every migration applies, each once.
    for name in bad_file:
        (directory / name).unlink()
    (directory / "0003_fixed.sql").write_text("CREATE TABLE atom_partial (id INTEGER);")
    fixed, message = _migrate(instance, directory)
    assert fixed.success, message
    assert all(_table_exists(sql_sandbox, t) for t in ("atom_first", "atom_second", "atom_partial"))
    tracked = _sql(
        sql_sandbox, "SELECT version FROM platform_ops_schema_migrations ORDER BY version"
    )
    assert [row["version"] for row in tracked.json()] == ["0001", "0002", "0003"]
    assert len(_apply_requests(sql_sandbox)) == 3


def test_a_failed_migration_says_what_is_known(instance, sql_sandbox, tmp_path):
    """A SQL error: the tracking row is checked, not assumed; the next run applies it cleanly."""
    directory = _write(
        tmp_path / "migrations",
        {
            **GOOD,
            "0003_broken.sql": "CREATE TABLE atom_partial (id INTEGER PRIMARY KEY);\n"
            "CREATE TABLE atom_partial_broken (id INTEGER;\n",
        },
    )
    result, message = _migrate(instance, directory)
    assert not result.success
    assert "0003_broken.sql failed" in message
    assert "tracking row, which is absent: that transaction did not commit" in message
    assert "nothing of it was committed unless it ended that transaction itself" in message
    assert "rolled back" not in message
    assert not _table_exists(sql_sandbox, "atom_partial")
    (directory / "0003_broken.sql").write_text("CREATE TABLE atom_partial (id INTEGER);")
    assert _migrate(instance, directory)[0].success  # no "already exists"


def test_failure_outcome_states_only_what_is_known():
    migration = migrations_lib.Migration("0007", "x", "0007_x.sql", "SELECT 1;")
    unknown = migrations_lib.failure_outcome(None, migration)
    assert "could not be checked" in unknown and "0007" in unknown
    assert "committed it despite the error" in migrations_lib.failure_outcome(True, migration)
    assert "nothing of it was committed" in migrations_lib.failure_outcome(False, migration)


# -- The scanner reads tokens as PostgreSQL does (FX1: a COMMIT hidden behind x😀$$) -------------

# Identifier characters PostgreSQL accepts (any char >= U+0080 is a letter; `$` and digits
# continue an identifier), from every Unicode plane, and the dollar delimiters written after them.
IDENT_CHARS = [
    "x", "_", "x1", "x$", "\u0080", "\u00a0", "\u00df", "\u00e9", "\u0416", "\u0131", "\u4e2d",
    "\ufeff", "\uffff", "\U00010000", "\U0001d11e", "\U0001f600", "\U0010ffff",
]  # fmt: skip
DELIMS = ["$$", "$t$", "$\u00e9$", "$\U0001f600$", "$_1$"]


def _hidden_behind(ident: str, delim: str) -> str:
    """A COMMIT between two `ident+delim` words: a lexer that opens a body at `delim` skips it."""
    return f"SELECT 1 AS a{ident}{delim};\nCOMMIT;\nSELECT 1 AS b{ident}{delim};"


def test_no_identifier_character_opens_a_dollar_body():
    for ident in IDENT_CHARS:
        for delim in DELIMS:
            for shape in (
                _hidden_behind(ident, delim),
                _hidden_behind(ident, delim).replace("a", "", 1),
            ):
                found = [(r.line, r.text) for r in refused_statements(shape)]
                assert found == [(2, "COMMIT")], shape


# Shapes where this lexer once disagreed with PostgreSQL's (each hides a COMMIT from it).
_FN = "CREATE FUNCTION {} RETURNS int {} AS $$ SELECT 1 $$ LANGUAGE sql;\nCOMMIT;"
DISAGREED = [
    ("-- only CR ends it\r", "SELECT 1; -- c\rCOMMIT;"),
    ("E string continued", "SELECT E'a'\n'\\' $$'; COMMIT; SELECT '$$';"),
    ("B string continued", "SELECT B'1'\n  -- c\n'0'; COMMIT;"),
    ("function named begin", _FN.format("begin()", "")),
    ("parameter named begin", _FN.format("f(begin int)", "")),
    ("SET ... = begin", _FN.format("f()", "SET search_path = begin\n")),
    (
        "trigger named begin",
        "CREATE TABLE begin (id int);\nCREATE TRIGGER begin AFTER INSERT ON begin FOR EACH ROW"
        " EXECUTE FUNCTION suppress_redundant_updates_trigger();\nCOMMIT;",
    ),
    ("emoji before $$", _hidden_behind("\U0001f600", "$$")),
    ("NBSP before $$", _hidden_behind("\u00a0", "$$")),
    ("number then $$", "SELECT 1$$x$$;\nCOMMIT;"),
    ("$1 then $$", "SELECT 1 WHERE $1$$x$$ IS NULL;\nCOMMIT;"),
]

LEGIT_FX1 = [
    "SELECT 'a'\n'b';",
    "SELECT B'1'\n'0', X'1F';",
    "SELECT U&'d\\0061t\\+000061', U&\"c;ommit\";",
    "SELECT 'C:\\dir\\file';",
    "CREATE FUNCTION begin() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;",
    "SELECT 1 AS caf\u00e9$$ FROM t;",
    "SELECT 0x1F, 1_000, 1.5e-3, .5;",
    "SELECT \u0421OMMIT;",  # Cyrillic Es (U+0421): an identifier to PostgreSQL, not COMMIT
]


@pytest.mark.parametrize(("label", "sql"), DISAGREED)
def test_shapes_postgresql_reads_differently_are_found(label, sql):
    assert [r.text.split()[0] for r in refused_statements(sql)] == ["COMMIT"], label


@pytest.mark.parametrize("sql", LEGIT_FX1)
def test_postgresql_token_shapes_that_hide_nothing_pass(sql):
    assert refused_statements(sql) == []


@pytest.mark.parametrize(
    ("sql", "line", "what"),
    [
        ("SELECT 1;\n\\commit\n", 2, "psql meta-command, not SQL"),
        ("SELECT 1;\n  \\i other.sql\nCOMMIT;", 2, "psql meta-command, not SQL"),
        ("SELECT 1 \\g", 1, "psql meta-command, not SQL"),
        ("SELECT 1;\nSELECT 'a\\'; COMMIT; --';", 2, "standard_conforming_strings"),
    ],
)
def test_text_that_is_not_sql_or_reads_two_ways_is_refused(sql, line, what):
    with pytest.raises(SqlScanError) as caught:
        split_statements(sql)
    assert caught.value.line == line and what in caught.value.what


# Words that a BEGIN ATOMIC body may hold where they open or close nothing (FY1: a scanner that
# counted every CASE/END missed the COMMIT after `SELECT 1 AS case; END;`).
ATOMIC_WORDS = [
    "case", "CASE", "Case", "end", "END", "begin", "atomic", '"case"', '"end"', 'U&"end"',
]  # fmt: skip
ATOMIC_STATEMENTS = [
    "SELECT 1 AS {w}",
    "SELECT tw.{w} FROM tw",
    "SELECT 1 {w}",
    "SELECT x AS {w} FROM (SELECT 1 AS x) AS {w}",
    "SELECT 1; SELECT 1 AS {w}",
]
ATOMIC_BODIES = [
    *(st.format(w=w) for st in ATOMIC_STATEMENTS for w in ATOMIC_WORDS),
    "SELECT CASE WHEN true THEN CASE WHEN false THEN 1 END ELSE 2 END",
    "SELECT CASE 1 WHEN 1 THEN 2 END AS end",
    "SELECT CASE WHEN true THEN 1 END; SELECT 1 AS case",
    "SELECT length('end; case; commit;') /* end; case */ -- end; case\n",
    "SELECT length($$ case end; $$ || $t$ end; $t$)",
    "SELECT 1;; ;SELECT 1 AS case",
    "IF true THEN SELECT 1; END IF; SELECT 1",  # plpgsql: a syntax error in an atomic body
    "LOOP SELECT 1; END LOOP; SELECT 1",
    "SELECT 1 AS begin; SELECT 1 AS case",
    "SELECT (SELECT 1 AS end)",
]
ATOMIC_HEADS = [
    "CREATE FUNCTION fa_{n}() RETURNS SETOF int LANGUAGE sql\nBEGIN ATOMIC\n  ",
    "create or replace procedure pa_{n}() language sql begin atomic ",
]
ATOMIC_TAILS = [";\nEND;\nCOMMIT;", ";\nend\n;\nCOMMIT;", "; END; END;", "; END;\nROLLBACK;"]
ATOMIC_SETUP = 'CREATE TABLE IF NOT EXISTS tw ("case" int, "end" int, begin int, atomic int);\n'


def _atomic_shapes() -> list[str]:
    """Every body x head x tail: each hides a COMMIT (or END/ROLLBACK) after a valid body."""
    shapes = []
    for body in ATOMIC_BODIES:
        for head in ATOMIC_HEADS:
            for tail in ATOMIC_TAILS:
                shapes.append(ATOMIC_SETUP + head.format(n=len(shapes)) + body + tail)
    return shapes


def test_a_begin_atomic_body_ends_where_the_server_ends_it():
    """The probe's shapes, and each word as a label, after a dot or quoted: the statement after
    the body's END is top level, so its COMMIT is found, on its line."""
    for body in (b for b in ATOMIC_BODIES if not b.startswith(("IF", "LOOP"))):
        head = "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n"
        sql = f"{head}  {body};\nEND;\nCOMMIT;"
        found = [(r.line, r.text) for r in refused_statements(sql)]
        assert found == [(5 + body.count("\n"), "COMMIT")], sql


@pytest.mark.parametrize(
    ("sql", "line", "what"),
    [
        (
            "SELECT 1;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC\n"
            "  CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\nEND;",
            3,
            "a BEGIN ATOMIC body inside another one",
        ),
        (
            "SELECT 1;\n\nCREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC SELECT 1 AS x;\nCOMMIT;",
            3,
            "a BEGIN ATOMIC body with no END",
        ),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC", 1, "with no END"),
    ],
)
def test_a_begin_atomic_body_that_could_read_two_ways_is_refused(sql, line, what):
    with pytest.raises(SqlScanError) as caught:
        split_statements(sql)
    assert caught.value.line == line and what in caught.value.what
    assert "use a $$-quoted function body instead" in caught.value.what


def _differential_shapes() -> list[str]:
    shapes = [sql for _, sql in DISAGREED] + LEGIT_FX1[:2] + _atomic_shapes()
    for ident in IDENT_CHARS:
        for delim in DELIMS[:3]:
            shapes.append(_hidden_behind(ident, delim))
            shapes.append(f"SELECT 1 AS a{ident} {delim}x{delim};\nCOMMIT;")  # a real body
    return shapes


def test_differential_a_file_that_passes_the_scan_commits_nothing_on_postgresql(pg_schema_url):
    """Against the real server, through the sandbox's runner (what the Management API does): each
    shape is applied the way the job applies a file, followed by an error. Either the scan refuses
    it, or nothing of it is committed (its marker table is absent); and PostgreSQL does commit
    some of these shapes, so the check is not vacuous."""
    from dev.sandbox.sql_runner import PostgresRunner, SqlError

    runner = PostgresRunner(pg_schema_url)
    runner.run(migrations_lib.CREATE_TRACKING_SQL)
    committed_by_server, passed_scan = 0, 0
    for n, shape in enumerate(_differential_shapes()):
        body = f"CREATE TABLE marker_{n} (id int);\n{shape}\nSELECT 1/0;"
        migration = migrations_lib.Migration(f"{n:04d}", "x", f"{n:04d}_x.sql", body)
        try:
            refused = bool(refused_statements(body))
        except SqlScanError:
            refused = True
        with pytest.raises(SqlError):
            runner.run(migrations_lib.apply_sql(migration))
        exists = runner.run(f"SELECT to_regclass('marker_{n}') IS NOT NULL AS e;")[0]["e"]
        committed_by_server += exists
        passed_scan += not refused
        assert refused or not exists, f"passed the scan but PostgreSQL committed: {shape!r}"
    assert committed_by_server >= len(IDENT_CHARS) and passed_scan > 0


def test_an_absent_tracking_row_claims_only_what_is_known():
    """The tracking row being absent proves the job's transaction did not commit, not that a
    statement the scan missed did not commit on its own: the message says so."""
    migration = migrations_lib.Migration("0007", "x", "0007_x.sql", "SELECT 1;")
    absent = migrations_lib.failure_outcome(False, migration)
    assert "that transaction did not commit" in absent
    assert "passed the transaction-control check" in absent
    assert "check that none of the objects it creates exist" in absent
    assert not absent.rstrip(".").endswith("nothing of it was committed")


# -- Calls that run SQL in another session, which commits on its own (FY1 defect 6) ------------

OTHER_SESSION_CALLS = [
    ("SELECT dblink_exec('dbname=test', 'CREATE TABLE x()')", "dblink_exec"),
    ("SELECT public.dblink_exec('dbname=test', 'CREATE TABLE x()')", "dblink_exec"),
    ("SELECT \"public\".\"dblink_exec\"('', 'CREATE TABLE x()')", "dblink_exec"),
    ("SELECT \"dblink_exec\"('', 'x')", "dblink_exec"),
    ("select DBLINK_EXEC('', 'x')", "dblink_exec"),
    ("SELECT * FROM dblink('dbname=test', 'DELETE FROM t RETURNING 1') AS r(x int)", "dblink"),
    ("SELECT dblink_connect('c', 'dbname=test')", "dblink_connect"),
    ("SELECT dblink_send_query('c', 'CREATE TABLE x()')", "dblink_send_query"),
    ("CREATE EXTENSION IF NOT EXISTS dblink", "dblink"),
    ("SELECT pg_background_launch('CREATE TABLE x()')", "pg_background_launch"),
    ("SELECT pg_background_result(pg_background_launch('x')) AS (r text)", "pg_background_result"),
    ("SELECT U&\"d\\0062link_exec\"('', 'x')", "dblink_exec"),
    ("SELECT U&\"d\\+000062link_exec\"('', 'x')", "dblink_exec"),
    ("SELECT U&\"d!0062link_exec\" UESCAPE '!' ('', 'x')", "dblink_exec"),
    ("DO $$ BEGIN PERFORM dblink_exec('', 'CREATE TABLE x()'); END $$", "dblink_exec"),
    ("DO $$ BEGIN EXECUTE E'SELECT d\\x62link_exec(1)'; END $$", "dblink_exec"),
    ("DO $$ BEGIN EXECUTE E'SELECT d\\142link_exec(1)'; END $$", "dblink_exec"),
    ("DO $$ BEGIN EXECUTE E'SELECT d\\\\x62link_exec(1)'; END $$", "dblink_exec"),
    ("DO $q$ BEGIN EXECUTE 'SELECT pg_background_launch(''x'')'; END $q$", "pg_background_launch"),
    (
        "CREATE FUNCTION r() RETURNS int AS $$ SELECT dblink_exec('', 'x') $$ LANGUAGE sql",
        "dblink_exec",
    ),
    ("-- dblink_exec is not used here", "dblink_exec"),
]


@pytest.mark.parametrize(("call", "name"), OTHER_SESSION_CALLS)
def test_a_call_that_runs_sql_in_another_session_is_refused_on_its_line(call, name):
    """Each shape after 0..3 lines, alone and after a statement on its own line: refused, naming
    the function and the line, with the reason; nothing else in the file is refused."""
    for before in range(4):
        head = "CREATE TABLE a (id int);\n" * before
        found = [(r.line, r.text, r.why) for r in refused_statements(f"{head}{call};\nSELECT 1;")]
        assert found == [(before + 1, name, sql_scan.OTHER_SESSION)], call


def test_names_that_only_look_like_other_session_calls_pass():
    for sql in ("SELECT 1 AS db_link;", "CREATE TABLE background (id int);", "SELECT 'pg_back';"):
        assert refused_statements(sql) == [], sql


def test_check_atomic_names_the_file_line_and_why_for_another_session():
    files = [
        migrations_lib.Migration(
            "0001", "a", "0001_a.sql", "CREATE TABLE a (id int);\nSELECT dblink_exec('', 'x');"
        )
    ]
    with pytest.raises(migrations_lib.MigrationError) as caught:
        migrations_lib.check_atomic(files)
    message = str(caught.value)
    assert "0001_a.sql line 2: dblink_exec (runs SQL outside the migration's transaction" in message
    assert "\n" not in message
