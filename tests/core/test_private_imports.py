"""Dagster's private modules are reached from one place only (issue: Dagster's public API).

Every ``.py`` under the shipped packages is parsed (not imported) and each import of a private
Dagster module is listed: ``import dagster._x``, ``from dagster._x import y``, ``from dagster
import _x``, ``importlib.import_module("dagster._x")``, anywhere in the file (inside functions
too), and the same for ``dagster_shared`` (Dagster's internal support package). The list must
equal ``EXPECTED``, and ``EXPECTED`` lives in ``orchestration/dagster_internals.py`` only, whose
docstring says why no public API serves each one. A new private import fails here: add it to
``dagster_internals.py`` with its reason, and to ``EXPECTED``, as a visible decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("orchestration", "assets", "resources")
INTERNALS = "orchestration/dagster_internals.py"

EXPECTED: set[tuple[str, str]] = {
    (INTERNALS, "dagster._core.storage.event_log.sqlite.sqlite_event_log.SqliteEventLogStorage"),
    (INTERNALS, "dagster_shared.serdes.errors.DeserializationError"),
}


def _private(module: str) -> bool:
    top, _, rest = module.partition(".")
    if top == "dagster_shared":
        return True
    return top == "dagster" and any(part.startswith("_") for part in rest.split(".") if part)


def private_imports(source: str) -> set[str]:
    """Every private Dagster module or name ``source`` imports, as a dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if _private(alias.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if _private(node.module) or _private(dotted):
                    found.add(dotted)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                name in {"import_module", "__import__"}
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and _private(first.value)
            ):
                found.add(first.value)
    return found


def _shipped_files() -> list[Path]:
    return sorted(path for package in SHIPPED for path in (REPO / package).rglob("*.py"))


def test_the_checker_sees_every_shape_of_private_import() -> None:
    source = (
        "import dagster as dg\n"
        "import dagster._core.instance\n"
        "from dagster import DagsterRun, _check\n"
        "from dagster._serdes import serialize_value as s\n"
        "from dagster_shared.serdes.errors import DeserializationError\n"
        "from .dagster_internals import thing\n"
        "def f():\n"
        "    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES\n"
        "    import importlib\n"
        "    return importlib.import_module('dagster._utils')\n"
    )
    assert private_imports(source) == {
        "dagster._core.instance",
        "dagster._check",
        "dagster._serdes.serialize_value",
        "dagster_shared.serdes.errors.DeserializationError",
        "dagster._core.storage.dagster_run.NOT_FINISHED_STATUSES",
        "dagster._utils",
    }
    assert private_imports("import dagster as dg\nfrom dagster import DagsterRun\n") == set()


def test_private_dagster_imports_are_exactly_the_listed_ones() -> None:
    files = _shipped_files()
    assert any(path.name == "run_coordinator.py" for path in files)  # the walk finds the tree
    found = {
        (path.relative_to(REPO).as_posix(), name)
        for path in files
        for name in private_imports(path.read_text(encoding="utf-8"))
    }
    unlisted = sorted(found - EXPECTED)
    assert not unlisted, (
        f"private Dagster imports outside the list: {unlisted}. Use the public API, or put the "
        f"import in {INTERNALS} with the reason in its docstring and add it to EXPECTED."
    )
    assert found == EXPECTED, f"listed but no longer imported: {sorted(EXPECTED - found)}"


def test_every_listed_private_import_lives_in_dagster_internals_with_a_reason() -> None:
    assert {path for path, _ in EXPECTED} == {INTERNALS}
    doc = ast.get_docstring(ast.parse((REPO / INTERNALS).read_text(encoding="utf-8"))) or ""
    for _, name in EXPECTED:
        assert name.rsplit(".", 1)[-1] in doc, f"{name}: no reason in {INTERNALS}'s docstring"
