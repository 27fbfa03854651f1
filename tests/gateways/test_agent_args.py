"""The gateway agent refuses every bad argument in its parser, before anything is written.

A real agent process per value against a real, migrated SQLite record store: exit 2, exactly one
stderr line naming the argument and its range, no traceback, and no row in ``gateways``
(``--id ""`` used to register an empty-id gateway; ``--concurrency 0`` registered, then failed).
The boundaries of each range are checked in-process through the same parser.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from orchestration.gateways import agent

HUGE = "1" + "0" * 5000  # int() of it raises past Python's 4,300-digit limit
BAD_NUMBERS = ["-1", "0", "-0.001", "nan", "NaN", "inf", "-inf", "1e999", "", " ", HUGE, "0x10",
               "\uff11", "1_0", "2 s", "1e3"]  # fmt: skip
BAD_IDS = ["", " ", "a b", "-a", ".a", "a/b", "a\nb", "é", "x" * 201, "a;b", "${X}"]
NUMERIC = {"--heartbeat": agent.HEARTBEAT_S, "--lease": agent.LEASE_S, "--poll": agent.POLL_S}


def _argv(store_url: str, **over: str) -> list[str]:
    args = {"--id": "g1", "--partition": "P1", "--store-url": store_url, **over}
    return [x for k, v in args.items() for x in (k, v)]


def _agent(argv: list[str]) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RECORD_STORE_URL", "PLATFORM_OPS_DEBUG")
    }
    return subprocess.run([sys.executable, "-m", "orchestration.gateways.agent", *argv],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def _gateway_rows(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM gateways")).scalar_one()
    engine.dispose()
    return count


def _refused(proc: subprocess.CompletedProcess, option: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and f"argument {option}" in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]  # a 5,000-digit value is not echoed
    return lines[0]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=lambda v: repr(v[:12]))
@pytest.mark.parametrize("option", [*NUMERIC, "--concurrency"])
def test_every_numeric_argument_refuses_a_bad_value_before_registering(
    sqlite_store_url, option, value
):
    # ``--poll=-inf``: the value reaches the type check (``--poll -inf`` is taken for an option
    # and refused by argparse itself, one line as well)
    proc = _agent([*_argv(sqlite_store_url), f"{option}={value}"])
    line = _refused(proc, option)
    assert "from" in line and "to" in line  # names the range
    assert _gateway_rows(sqlite_store_url) == 0


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
@pytest.mark.parametrize("option", ["--id", "--partition", "--domain"])
def test_every_id_argument_refuses_a_bad_value_before_registering(sqlite_store_url, option, value):
    if option == "--partition" and len(value) == 201:
        value = "x" * 101  # the partition column is 100 wide
    proc = _agent(_argv(sqlite_store_url, **{option: value}))
    _refused(proc, option)
    assert _gateway_rows(sqlite_store_url) == 0


# The other timing arguments, so that only the one under test decides (--lease > --heartbeat).
PARTNERS = {"--heartbeat": {"--lease": "86400"}, "--lease": {"--heartbeat": "0.05"}, "--poll": {}}


@pytest.mark.parametrize("option", NUMERIC)
def test_numeric_ranges_are_inclusive_and_exact(option):
    low, high = NUMERIC[option]
    for value, ok in [(low, True), (high, True), (low * 0.99, False), (high * 1.01, False)]:
        argv = _argv("sqlite://", **{option: f"{value:.6f}"}, **PARTNERS[option])
        if ok:
            assert getattr(agent.parse_args(argv), option[2:]) == pytest.approx(value)
        else:
            with pytest.raises(SystemExit) as exit_:
                agent.parse_args(argv)
            assert exit_.value.code == 2


def test_concurrency_bounds_and_id_widths():
    low, high = agent.CONCURRENCY
    for value in (low, high):
        args = agent.parse_args(_argv("sqlite://", **{"--concurrency": str(value)}))
        assert args.concurrency == value
    for value in (low - 1, high + 1):
        with pytest.raises(SystemExit):
            agent.parse_args(_argv("sqlite://", **{"--concurrency": str(value)}))
    assert agent.parse_args(_argv("sqlite://", **{"--id": "g" * 200})).id == "g" * 200
    args = agent.parse_args(_argv("sqlite://", **{"--partition": "p" * 100}))
    assert args.partition == "p" * 100
