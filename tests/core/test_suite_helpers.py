"""The suite's own house rules: one helper of each kind, and every PostgreSQL test selectable.

Copies drift: a second poll loop grows a tighter bound, a second receiver forgets keep-alive, a
second step-metadata reader picks the wrong step. These checks read the test tree (``ast``) so a
new copy fails here with the file and line, and the shared helper to use instead.

- one poll-until-true: ``tests/support/wait.wait_until`` (no other ``while`` loop that sleeps,
  except the listed observation loops, which sample states rather than wait for one);
- one webhook receiver: ``tests/support/webhook.WebhookReceiver`` (no other request handler with
  ``do_POST``, except the listed ones that test something a receiver cannot: TLS, raw faults);
- one step-metadata reader: ``tests/support/results.step_metadata`` (``STEP_OUTPUT`` read nowhere
  else);
- one ``engine`` fixture (tests/conftest.py) and one way to start the sandbox
  (``tests/support/sandbox.running_sandbox``; the sandbox's own tests construct it directly);
- ``-m postgres`` selects every test that reaches the server (collected here and compared).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
SUPPORT = TESTS / "support"

# Loops that sample a state while something runs (asserting on each sample), not waits for one.
OBSERVATION_LOOPS: dict[str, str] = {
    "deploy/test_stack.py": "samples both releases' states: never both in progress",
}
# POST handlers that are not webhook receivers.
OTHER_HANDLERS: dict[str, str] = {
    "policies/otlp_collector.py": "an OTLP/HTTP collector (protobuf spans), not a webhook",
}
SANDBOX_CONSTRUCTORS = {"sandbox/test_sandbox.py": "tests SandboxServer's own arguments"}


def _modules() -> list[tuple[str, ast.Module]]:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if SUPPORT in path.parents or path == Path(__file__):
            continue
        found.append((path.relative_to(TESTS).as_posix(), ast.parse(path.read_text())))
    return found


def _calls(node: ast.AST, name: str) -> bool:
    """Whether ``node`` calls ``name`` (a bare name or an attribute ending in it)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                return True
    return False


def test_every_exception_still_names_a_file_that_needs_it():
    """An exception whose file went away or no longer needs it is removed, not kept as a hole."""
    modules = dict(_modules())
    for listed, needs in (
        (
            OBSERVATION_LOOPS,
            lambda m: any(isinstance(n, ast.While) and _calls(n, "sleep") for n in ast.walk(m)),
        ),
        (OTHER_HANDLERS, lambda m: "do_POST" in ast.unparse(m)),
        (SANDBOX_CONSTRUCTORS, lambda m: _calls(m, "SandboxServer")),
    ):
        for rel in listed:
            assert rel in modules and needs(modules[rel]), f"stale exception: tests/{rel}"


def test_one_poll_loop():
    offenders = [
        f"tests/{rel}:{node.lineno}"
        for rel, module in _modules()
        if rel not in OBSERVATION_LOOPS
        for node in ast.walk(module)
        if isinstance(node, ast.While) and _calls(node, "sleep")
    ]
    assert offenders == [], f"poll loops: use tests.support.wait.wait_until instead: {offenders}"


def test_one_webhook_receiver():
    offenders = [
        f"tests/{rel}:{node.lineno} ({node.name})"
        for rel, module in _modules()
        if rel not in OTHER_HANDLERS
        for node in ast.walk(module)
        if isinstance(node, ast.ClassDef)
        and any(isinstance(f, ast.FunctionDef) and f.name == "do_POST" for f in node.body)
    ]
    assert offenders == [], f"receivers: use tests.support.webhook.WebhookReceiver: {offenders}"


def test_one_step_metadata_reader():
    offenders = [
        f"tests/{rel}:{node.lineno}"
        for rel, module in _modules()
        for node in ast.walk(module)
        if isinstance(node, ast.Constant) and node.value == "STEP_OUTPUT"
    ]
    assert offenders == [], f"use tests.support.results.step_metadata: {offenders}"


def test_one_engine_fixture_and_one_way_to_start_the_sandbox():
    engines, sandboxes = [], []
    for rel, module in _modules():
        for node in ast.walk(module):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name == "engine"
                and rel != "conftest.py"
                and any("fixture" in ast.unparse(d) for d in node.decorator_list)
            ):
                engines.append(f"tests/{rel}:{node.lineno}")
            if (
                rel not in SANDBOX_CONSTRUCTORS
                and isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "SandboxServer"
            ):
                sandboxes.append(f"tests/{rel}:{node.lineno}")
    assert engines == [], f"a second `engine` fixture: use the one in tests/conftest.py: {engines}"
    assert sandboxes == [], (
        f"start the sandbox with tests.support.sandbox.running_sandbox: {sandboxes}"
    )


def _collected(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.slow
def test_minus_m_postgres_selects_every_test_that_reaches_the_server():
    """Every test whose fixtures reach ``pg_url`` or the postgres side of ``store_url`` is marked.

    Compared against a second reading that does not go through the marking: pytest's own
    ``--fixtures-per-test`` listing (a test using ``pg_url``, ``pg_schema_url`` or
    ``pg_store_url``) plus every test with a parameter id ``postgres``.
    """
    marked = _collected("-m", "postgres")
    everything = _collected()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures-per-test", "-q", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    reaching: set[str] = set()
    name = current = None
    for line in proc.stdout.splitlines():
        if header := re.fullmatch(r"-+ fixtures used by (.+?) -+", line):
            name, current = header[1], None
        elif name and line.startswith("-") and "(tests/" in line:
            path = line.split("(", 1)[1].split(":", 1)[0]
            current, name = f"{path}::{name}", None
        elif current and line.split(" ", 1)[0] in {"pg_url", "pg_schema_url", "pg_store_url"}:
            reaching.add(current)
    expected = reaching & everything
    expected |= {
        test_id
        for test_id in everything
        if "[" in test_id and "postgres" in re.split(r"[-\]]", test_id.split("[", 1)[1])
    }
    assert expected, "found no PostgreSQL test at all: the reading above is broken"
    assert expected - marked == set(), "\n".join(sorted(expected - marked))
