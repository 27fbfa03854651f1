"""The catalog schema (issue #14, class 5): strict types, values execve can take, crons that fire,
every problem of a file in one error, nothing written when any exists, no secret quoted.

Real record stores (SQLite and PostgreSQL) where something could be written; the CLI in-process.
"""

from __future__ import annotations

import copy
import io
import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from orchestration.commands import catalog, cron
from orchestration.commands import models as m
from orchestration.commands.cli import main as cli
from tests.commands.helpers import seed

# --- crons -------------------------------------------------------------------------------------

NEVER_FIRE = [
    "0 0 30 2 *", "0 0 31 2 *", "0 0 31 4 *", "0 0 31 6 *", "0 0 31 9 *", "0 0 31 11 *",
    "0 0 30,31 2 *", "0 0 31 2,4,6,9,11 *", "0 0 31 4-6/2 *", "15 3 30-31 FEB *",
    "0 0 31 APR,JUN *", "*/5 * 30 2 *",
]  # fmt: skip
FIRES = {
    "0 0 29 2 *": "0 0 29 2 *",  # leap days: every 4 years (8 across 2100)
    "0 0 31 * *": "0 0 31 * *",  # months that have a 31st
    "0 0 31 */2 *": "0 0 31 */2 *",  # January, March, ...
    "0 0 30 2 1": "0 0 30 2 1",  # day OR weekday (cron semantics): Mondays in February
    "0 0 L 2 *": "0 0 L 2 *",
    "0 0 * * 5#3": "0 0 * * 5#3",
    "0 0 * MAR THU": "0 0 * MAR THU",
    "  */5   *  * * * ": "*/5 * * * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
NOT_CRON = ["R * * * *", "H * * * *", "0 H(0-3) * * *", "* * * * * *", "@reboot", "0 0 0 * *"]


@pytest.mark.parametrize("expr", NEVER_FIRE)
def test_a_cron_that_never_fires_is_refused_naming_it(expr):
    with pytest.raises(cron.InvalidCron, match="never fires") as err:
        cron.validate_cron(expr)
    assert repr(expr) in str(err.value)
    data = _valid()
    data["schedules"][0]["cron"] = ["* * * * *", expr]
    with pytest.raises(catalog.CatalogError) as err:
        catalog.parse_catalog(data)
    assert f"schedule 'nightly': cron[1]: cron {expr!r} never fires" in str(err.value)


@pytest.mark.parametrize(("expr", "stored"), FIRES.items())
def test_crons_that_fire_are_accepted_and_evaluate_at_dispatch(expr, stored):
    assert cron.validate_cron(expr) == stored
    # and the dispatcher can compute a slot for them, now and across the 2100 non-leap year
    for now in (datetime(2026, 3, 1, tzinfo=UTC), datetime(2101, 1, 1, tzinfo=UTC)):
        cron.latest_slot(stored, now.replace(year=now.year - 9), now)


@pytest.mark.parametrize("expr", NOT_CRON)
def test_croniter_extensions_and_other_shapes_are_refused(expr):
    with pytest.raises(cron.InvalidCron, match="invalid cron"):
        cron.validate_cron(expr)


# --- the schema, one problem at a time ---------------------------------------------------------


def _valid() -> dict:
    return {
        "environments": [
            {
                "name": "staging",
                "variables": {"PLAIN": "x", "TOKEN": {"value": "t", "secret": True}},
            }
        ],
        "commands": [{"name": "backup", "command": "echo hi", "timeout_seconds": 60}],
        "schedules": [
            {
                "name": "nightly",
                "command": "backup",
                "environments": ["staging"],
                "cron": "0 3 * * *",
            }
        ],
    }


BASE = """\
environments:
  - name: staging
    variables: {PLAIN: x}
commands:
  - name: backup
    command: echo hi
"""


def cmd(lines: str) -> str:
    """The base with more lines in its command entry (line 7 on)."""
    return BASE + lines + "\n"


def var(flow: str) -> str:
    """The base with other variables for staging (line 3)."""
    return BASE.replace("{PLAIN: x}", flow)


def sched(cron: str = "'@daily'", command: str = "backup", envs: str = "[staging]") -> str:
    """The base with one schedule (line 8)."""
    entry = f"{{name: s, command: {command}, environments: {envs}, cron: {cron}}}"
    return BASE + f"schedules:\n  - {entry}\n"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)
)

# (yaml text, fragments that must all be in the error)
CASES = [
    (cmd('    shell: "false"'), ["line 7: command 'backup': shell: must be true or false"]),
    (cmd('    enabled: "false"'), ["command 'backup': enabled: must be true or false"]),
    (cmd("    enabled: 1"), ["enabled: must be true or false", "got int 1"]),
    (cmd("    timeout_seconds: 1.9"), ["timeout_seconds: must be a whole number",
                                              "got float 1.9"]),
    (cmd("    timeout_seconds: true"), ["must be a whole", "got bool True"]),
    (cmd("    timeout_seconds: 1.0"), ["timeout_seconds: must be a whole", "got float 1.0"]),
    (cmd('    timeout_seconds: "60"'), ["timeout_seconds: must be a whole", "(got str)"]),
    (cmd("    timeout_seconds: 0"), ["timeout_seconds: must be greater than 0"]),
    (cmd("    timeout_seconds: -5"), ["timeout_seconds: must be greater than 0"]),
    (cmd("    timeout_seconds: 604801"), ["timeout_seconds: must be at most 604800"]),
    (cmd("    timeout_seconds: 99999999999"), ["must be at most 604800"]),
    (cmd("    timeout: 5"), ["command 'backup': timeout: unknown key; allowed: name,"]),
    (cmd("    shell: false\n    command: \"echo 'open\""),
     ["command: with shell: false it must split into arguments"]),
    (cmd('    command: "   "'), ["command 'backup': command: empty command line"]),
    (cmd('    command: "echo a\\0b"'), ["command 'backup': command: contains a NUL byte"]),
    (cmd('    working_dir: "/tmp\\0"'), ["working_dir: contains a NUL byte"]),
    (cmd('    description: "x\\ud800"'), ["description: contains a character that is not"]),
    (cmd("    working_dir: [a]"), ["working_dir: must be text"]),
    (cmd("    timeout_seconds: 5\n    timeout_seconds: 6"),
     ["command 'backup': duplicate key 'timeout_seconds' on lines 7 and 8"]),
    (BASE + "schedule: []\n", ["line 7: catalog: schedule: unknown key; allowed: commands,"]),
    (var("{PORT: 8080}"),
     ["environment 'staging': variables.PORT.value: must be text (quote it"]),
    (var("{DEBUG: true}"), ["variables.DEBUG.value: must be text"]),
    (var("{A=B: x}"), ["invalid variable name 'A=B'"]),
    (var('{"1X": x}'), ["invalid variable name '1X'"]),
    (var('{"X\\n": x}'), ["invalid variable name 'X\\n'"]),
    (var('{"X\\0": x}'), ["variables.'X\\x00': contains a NUL byte"]),
    (var("{COMMAND_RUN_ID: x}"), ["is set by the runner itself"]),
    (var("{T: {value: a, from_env: B}}"),
     ["variables.T: needs exactly one of value or from_env"]),
    (var("{T: {secret: true}}"), ["needs exactly one of value or from_env"]),
    (var("{T: {value: a, secret: 'yes'}}"),
     ["variables.T.secret: must be true or false"]),
    (var("{T: {value: a, secert: true}}"),
     ["variables.T.secert: unknown key; allowed: value, from_env, secret"]),
    (var("{T: {from_env: NOT_SET_ANYWHERE_B1}}"),
     ["variables.T: reads $NOT_SET_ANYWHERE_B1, which is not set"]),
    (var("[PLAIN]"), ["environment 'staging': variables: must be a mapping"]),
    (BASE.replace("name: staging", 'name: "staging\\n"'), ["invalid name 'staging\\n'"]),
    (BASE.replace("name: backup", f"name: {'b' * 201}"), ["invalid name 'bbbb"]),
    (sched("'0 0 30 2 *'"),
     ["line 8: schedule 's': cron[0]: cron '0 0 30 2 *' never fires"]),
    (sched("'* * * * * *'"),
     ["schedule 's': cron[0]: invalid cron '* * * * * *': expected 5 fields"]),
    (sched("'61 * * * *'"),
     ["invalid cron '61 * * * *': fields are minute 0-59"]),
    (sched(f"'{'1,' * 100}1 * * * *'"),
     ["cron[0]: cron longer than 200 characters"]),
    (sched(command="ghost"),
     ["schedule 's': command: unknown command 'ghost' (not in this catalog)"]),
    (sched(envs="[]"),
     ["schedule 's': environments: needs at least one"]),
    (sched(envs="[prod]"),
     ["environments: unknown environment 'prod'"]),
    (BASE + "schedules:\n  - {name: s, command: backup, environments: [staging]}\n",
     ["schedule 's': cron: is required"]),
    (BASE + "commands:\n  - {name: backup, command: x}\n",
     ["line 1: catalog: duplicate key 'commands' on lines 4 and 7"]),
    (BASE.replace("command: echo hi", "command: echo hi\n  - {name: backup, command: y}"),
     ["duplicate command name 'backup' (lines 5, 7)"]),
    ("commands: [\n", ["line 2, column 1: not valid YAML"]),
    ("commands:\n  - name: a\n   command: b\n", ["line 3", "not valid YAML"]),
    ("", ["the file is empty"]),
    ("- a\n- b\n", ["the catalog must be a mapping"]),
    (BOMB, ["once YAML aliases are expanded"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "fragments"), CASES)
def test_each_bad_value_gets_a_clear_error_naming_entry_and_field(text, fragments, tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(catalog.CatalogError) as err:
        catalog.load_catalog(path)
    message = str(err.value)
    assert message.startswith(f"invalid catalog {path}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_the_base_of_the_table_is_valid(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(BASE)
    assert [c.name for c in catalog.load_catalog(path).commands] == ["backup"]


# --- a file with many problems; nothing changed -----------------------------------------------

SECRET = "Zq9xWv7kPmLr4Tn2"
FIVE = f"""\
environments:
  - name: staging
    variables:
      TOKEN: {{value: "{SECRET[:8]}\\0{SECRET[8:]}", secret: true}}
commands:
  - name: backup
    command: tar czf /tmp/b.tgz /srv
    shell: "false"
    timeout_seconds: 1.9
schedules:
  - name: nightly
    command: backupp
    environments: [staging]
    cron: ["0 3 * * *", "0 0 30 2 *"]
"""


def _counts(engine: sa.Engine) -> dict[str, int]:
    tables = (m.commands, m.environments, m.variables, m.schedules, m.schedule_crons,
              m.schedule_environments, m.command_runs)  # fmt: skip
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in tables
        }


def _snapshot(engine: sa.Engine) -> dict:
    tables = (m.commands, m.environments, m.variables, m.schedules, m.schedule_crons)
    with engine.connect() as conn:
        return {t.name: sorted(map(tuple, conn.execute(sa.select(t)))) for t in tables}


def _no_part_of_secret(text: str, secret: str = SECRET) -> None:
    pieces = [secret[i : i + 4] for i in range(len(secret) - 3)]
    assert not [p for p in pieces if p in text], text


def test_five_problems_are_reported_together_and_nothing_is_written(store_url, engine, tmp_path):
    seed(engine, _valid())
    before, rows = _snapshot(engine), _counts(engine)
    path = tmp_path / "five.yaml"
    path.write_text(FIVE)
    with pytest.raises(catalog.CatalogError) as err:
        catalog.sync_file(engine, path)
    assert err.value.problems == [
        "line 4: environment 'staging': variables.TOKEN.value: contains a NUL byte (\\0), which no "
        "process can receive: remove it",
        "line 8: command 'backup': shell: must be true or false, unquoted (got str)",
        "line 9: command 'backup': timeout_seconds: must be a whole number, unquoted (e.g. 600) "
        "(got float 1.9)",
        "line 12: schedule 'nightly': command: unknown command 'backupp' (not in this catalog)",
        "line 14: schedule 'nightly': cron[1]: cron '0 0 30 2 *' never fires (no such date, e.g. "
        "February 30 or April 31): fix the day or month",
    ]
    assert str(err.value).startswith(f"invalid catalog {path}: 5 problem(s), nothing was changed:")
    _no_part_of_secret(str(err.value))
    assert _snapshot(engine) == before and _counts(engine) == rows
    # the CLI says the same, on stderr, with exit code 2, and changes nothing either
    code = cli(["--store-url", store_url, "sync-catalog", str(path)], out=io.StringIO())
    assert code == 2
    assert _snapshot(engine) == before and _counts(engine) == rows


# --- every string field: NUL and lone surrogates at start, middle, end --------------------------

STRING_FIELDS = [
    ("environments", 0, "name"),
    ("environments", 0, "variables", "PLAIN"),
    ("environments", 0, "variables", "TOKEN", "value"),
    ("commands", 0, "name"),
    ("commands", 0, "command"),
    ("commands", 0, "working_dir"),
    ("commands", 0, "description"),
    ("schedules", 0, "name"),
    ("schedules", 0, "command"),
    ("schedules", 0, "environments", 0),
    ("schedules", 0, "cron"),
]
BAD_CHARS = {"NUL": "\x00", "surrogate": "\ud800"}


def _with(data: dict, path: tuple, value: str) -> dict:
    data = copy.deepcopy(data)
    data["commands"][0].update(working_dir="/tmp", description="nightly backup")
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _placed(original: str, char: str) -> dict[str, str]:
    middle = len(original) // 2
    return {
        "start": char + original,
        "middle": original[:middle] + char + original[middle:],
        "end": original + char,
    }


@pytest.mark.parametrize("char", BAD_CHARS)
@pytest.mark.parametrize("path", STRING_FIELDS, ids=lambda p: ".".join(map(str, p)))
def test_every_string_field_refuses_what_execve_cannot_take(path, char):
    base = _with(_valid(), ("commands", 0, "name"), "backup")
    original = base
    for key in path:
        original = original[key]
    for where, bad in _placed(original, BAD_CHARS[char]).items():
        data = _with(base, path, bad)
        with pytest.raises(catalog.CatalogError) as err:
            catalog.parse_catalog(data)
        message = str(err.value)
        expected = "contains a NUL byte" if char == "NUL" else "is not valid UTF-8"
        assert expected in message, (where, message)
        assert "\x00" not in message and "\ud800" not in message  # quoted as escapes, if at all
    # the untouched base is fine (the loop above is about the one field)
    catalog.parse_catalog(base)


def test_a_secret_is_never_quoted_whatever_is_wrong_with_it(monkeypatch):
    bad_values = {
        "nul": {"value": SECRET[:5] + "\x00" + SECRET[5:], "secret": True},
        "surrogate": {"value": SECRET + "\udcff", "secret": True},
        "number": {"value": 73918264550917, "secret": True},
        "list": {"value": [SECRET], "secret": True},
        "both": {"value": SECRET, "from_env": "SRC_B1", "secret": True},
    }
    monkeypatch.setenv("SRC_B1", SECRET + "\udcff")  # undecodable bytes in the syncing process
    for label, var in [*bad_values.items(), ("from_env", {"from_env": "SRC_B1", "secret": True})]:
        data = _valid()
        data["environments"][0]["variables"]["TOKEN"] = var
        with pytest.raises(catalog.CatalogError) as err:
            catalog.parse_catalog(data)
        message = str(err.value)
        assert "variables.TOKEN" in message, (label, message)
        _no_part_of_secret(message)
        assert "73918264550917"[:6] not in message


# --- the CLI's set-* paths go through the same checks -------------------------------------------


def _cli(url: str, *args: str) -> int:
    return cli(["--store-url", url, *args], out=io.StringIO())


def test_cli_set_paths_refuse_what_the_file_refuses(store_url, engine, capsys):
    seed(engine, _valid())
    before, rows = _snapshot(engine), _counts(engine)
    bad = [
        catalog.CommandSpec("backup", "echo hi", timeout_seconds=True),
        catalog.CommandSpec("backup", "echo hi", timeout_seconds=1.9),  # type: ignore[arg-type]
        catalog.CommandSpec("backup", "echo hi", use_shell="false"),  # type: ignore[arg-type]
        catalog.CommandSpec("backup", "echo hi", enabled="false"),  # type: ignore[arg-type]
        catalog.CommandSpec("backup", "echo \x00hi"),
        catalog.CommandSpec("backup", "echo 'open", use_shell=False),
        catalog.CommandSpec("backup", "echo hi", timeout_seconds=catalog.MAX_TIMEOUT_SECONDS + 1),
        catalog.ScheduleSpec("nightly", "backup", ["staging"], ["0 0 31 4 *"]),
        catalog.ScheduleSpec("nightly", "backup", ["staging"], ["R * * * *"]),
        catalog.ScheduleSpec("nightly", "ghost", ["staging"], ["@daily"]),
        catalog.EnvironmentSpec("stag\x00ing"),
        catalog.EnvironmentSpec("staging", variables=[catalog.Variable("A=B", "x")]),
    ]
    for spec in bad:
        section = {catalog.CommandSpec: "commands", catalog.ScheduleSpec: "schedules",
                   catalog.EnvironmentSpec: "environments"}[type(spec)]  # fmt: skip
        with pytest.raises(catalog.CatalogError):
            catalog.apply(engine, catalog.Catalog(**{section: [spec]}), prune=False)
    assert _snapshot(engine) == before
    # through the CLI itself (argv in-process can carry what a shell could not)
    secret = SECRET[:6] + "\x00" + SECRET[6:]
    assert _cli(store_url, "set-variable", "staging", "TOKEN", secret, "--secret") == 2
    assert _cli(store_url, "set-variable", "staging", "A=B", "x") == 2
    assert _cli(store_url, "set-variable", "staging", "COMMAND_NAME", "x") == 2
    assert _cli(store_url, "set-command", "backup", "--command", "echo\x00") == 2
    assert _cli(store_url, "set-command", "backup", "--command", "a 'b", "--no-shell") == 2
    assert _cli(store_url, "set-command", "backup", "--command", "x", "--timeout", "0") == 2
    assert _cli(store_url, "set-schedule", "nightly", "--command", "backup", "--env", "staging",
                "--cron", "0 0 30 2 *") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "never fires" in err and "contains a NUL byte" in err and "set by the runner" in err
    _no_part_of_secret(err)
    assert _snapshot(engine) == before and _counts(engine) == rows
    # and the good forms still work
    assert _cli(store_url, "set-variable", "staging", "TOKEN", SECRET, "--secret") == 0
    assert _cli(store_url, "set-schedule", "nightly", "--command", "backup", "--env", "staging",
                "--cron", "@daily") == 0  # fmt: skip
    with engine.connect() as conn:
        crons = conn.execute(sa.select(m.schedule_crons.c.cron)).scalars().all()
    assert crons == ["0 0 * * *"]


# --- FX2: loading is bounded and every failure names the file and the line ------------------------

GOOD = "commands:\n  - name: backup\n    command: echo hi\n    timeout_seconds: 600\n"


def _load_error(text: str, tmp_path) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(catalog.CatalogError) as err:  # never RecursionError / ValueError
        catalog.load_catalog(path)
    message = str(err.value)
    assert str(path) in message, message
    return message


# style -> (text nested ``d`` levels, how many YAML nodes its deepest path has, deepest tried:
# block styles grow quadratically with their indentation).
NESTINGS = {
    "flow seq": (lambda d: "commands: " + "[" * d + "]" * d + "\n", lambda d: d + 1, 50_000),
    "flow map": (lambda d: "commands: " + "{a: " * d + "1" + "}" * d + "\n", lambda d: d + 2,
                 50_000),
    "block map": (lambda d: "".join("  " * i + "k:\n" for i in range(d)) + "  " * d + "v\n",
                  lambda d: d + 1, 1_000),
    "block seq": (lambda d: "commands:\n" + "".join("  " * i + "-\n" for i in range(1, d))
                  + "  " * d + "- x\n", lambda d: d + 2, 1_000),
}  # fmt: skip


@pytest.mark.parametrize("style", NESTINGS)
def test_nesting_depth_is_bounded_at_every_depth_around_the_limit(style, tmp_path):
    limit = catalog.MAX_YAML_DEPTH
    text, nodes, deepest = NESTINGS[style]
    for depth in [*range(limit - 4, limit + 4), deepest // 5, deepest]:
        message = _load_error(text(depth), tmp_path)
        deep = f"nested more than {limit} levels deep" in message
        assert deep == (nodes(depth) > limit), (depth, message[:300])
        if deep:
            assert re.search(r"line \d+, column \d+: refused: nested", message), message[:300]


def test_aliases_cannot_stack_nesting_past_the_limit(tmp_path):
    level = "[" * 40 + "x" + "]" * 40
    text = f"a0: &a0 {level}\n" + "".join(
        f"a{i}: &a{i} {'[' * 40}*a{i - 1}{']' * 40}\n" for i in range(1, 6)
    )
    message = _load_error(text, tmp_path)
    assert "nested more than" in message and "aliases" in message, message


def test_integers_are_bounded_before_conversion_at_every_length(tmp_path):
    limit = catalog.MAX_INT_CHARS
    for digits in [*range(1, limit + 4), 4_300, 4_301, 5_000, 100_000]:
        for form in ("9" * digits, "-" + "9" * digits, "0x" + "f" * digits, "9_" * digits + "9"):
            text = GOOD.replace("600", form)
            if len(form.replace("_", "")) <= limit:
                try:
                    catalog.loads_catalog(text)
                except catalog.CatalogError as err:
                    assert "timeout_seconds" in str(err), str(err)
                continue
            message = _load_error(text, tmp_path)
            assert f"line 4, column 22: refused: a number of {len(form.replace('_', ''))}" in (
                message
            ), message[:300]
            assert len(message) < 600


# What PyYAML refuses anywhere in a file (its reader's non-printable set).
UNREADABLE = [chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127, 0x80, 0x84, 0x9F]] + [
    "\ufffe",
    "\uffff",
]


@pytest.mark.parametrize("char", UNREADABLE, ids=lambda c: f"U+{ord(c):04X}")
def test_a_character_yaml_refuses_is_named_with_its_line_and_column(char, tmp_path):
    lines = GOOD.splitlines(keepends=True)
    for row, line in enumerate(lines):
        for col in range(len(line)):  # every offset of the file
            text = "".join(lines[:row]) + line[:col] + char + line[col:] + "".join(lines[row + 1 :])
            message = _load_error(text, tmp_path)
            assert f"line {row + 1}, column {col + 1}: not valid YAML: character " in message
            assert f"U+{ord(char):04X}" in message


@pytest.mark.parametrize(
    ("value", "why"),
    [("2024-02-30", "day is out of range"), ("2023-13-01", "month must be in 1..12"),
     ("2024-01-01 25:00:00", "hour must be in 0..23")],
)  # fmt: skip
def test_a_value_the_yaml_constructor_cannot_build_is_named_with_its_line(value, why, tmp_path):
    text = GOOD + f"    description: {value}\n"
    message = _load_error(text, tmp_path)
    assert "line 5, column 18: refused: timestamp value that cannot be read" in message, message
    assert why in message
