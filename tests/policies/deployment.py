"""The code location as a deployment loads it: ``orchestration.definitions`` imported afresh.

Resources such as ``FailureNotifierConfig`` and ``RecordStoreResource`` take their defaults from
the environment when the definitions are built, i.e. when the code server imports the module with
the deployment's variables set. The suite imports ``orchestration.definitions`` once, early, with
none of them; a test proving "set the variable, get the behaviour" must therefore build the
definitions again with its variables set, as a code server started with them would.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType

import dagster as dg
import pytest

_DEFINITIONS = re.compile(r"orchestration(\.\w+)?\.definitions")


def _definition_modules() -> dict[str, ModuleType]:
    return {name: mod for name, mod in sys.modules.items() if _DEFINITIONS.fullmatch(name)}


@contextmanager
def definitions_loaded_with(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str | None]
) -> Iterator[dg.Definitions]:
    """``orchestration.definitions.defs`` built with ``env`` set (None: unset) in this process.

    Only the definitions modules are imported again (jobs, ops and resource classes stay the
    same objects); the suite's own copies are put back afterwards, so other tests are unaffected.
    """
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    saved = _definition_modules()
    _forget(saved)
    try:
        yield importlib.import_module("orchestration.definitions").defs
    finally:
        _forget(_definition_modules())
        for name, module in saved.items():
            sys.modules[name] = module
            parent, _, attr = name.rpartition(".")
            setattr(sys.modules[parent], attr, module)


def _forget(modules: Mapping[str, ModuleType]) -> None:
    """Drop modules from ``sys.modules`` and from their package's attributes: ``from package
    import definitions`` takes the attribute when there is one, and would skip the import."""
    for name in modules:
        del sys.modules[name]
        parent, _, attr = name.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], attr):
            delattr(sys.modules[parent], attr)
