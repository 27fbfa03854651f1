"""The house rules: shipped code ships alone, and dependencies point one way.

- ``import orchestration.definitions`` (what every run, the code server and the daemon load) pulls
  in no development module: not the demo, the sandbox, the seeders or the tests.
- The wheel built from the project holds only the shipped packages.
- import-linter's contracts in ``pyproject.toml`` hold, and they bite: a copy of the tree with one
  forbidden import added is reported broken (so a contract that checks nothing would fail here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("orchestration", "assets", "resources")
DEVELOPMENT = ("dev", "tests", "sandbox", "bench", "scripts")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_loading_the_code_location_imports_no_development_module(tmp_path: Path) -> None:
    probe = (
        "import json, sys\n"
        "import orchestration.definitions\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "orchestration.definitions" in loaded
    development = [m for m in loaded if m.split(".")[0] in DEVELOPMENT]
    assert development == []


def test_the_demo_command_parses_its_arguments_from_any_directory(tmp_path: Path) -> None:
    """``python -m dev.demo`` (scripts/demo.sh): help works, a bad --orgs is one line, exit 2."""
    ok = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "--orgs" in ok.stdout and "--fresh" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "dev.demo", "--orgs", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--orgs" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_the_wheel_holds_only_shipped_packages(tmp_path: Path) -> None:
    """Built from a copy of the tree (dev/ and tests/ included, as in a clone): setuptools writes
    build/ and *.egg-info next to the sources, which must not happen in the checkout."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in (*SHIPPED, "dev", "tests"):
        shutil.copytree(REPO / package, tree / package, ignore=skip)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("platform_ops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == set(SHIPPED)
    assert "orchestration/definitions.py" in names
    unwanted = [
        n for n in names
        if any(part in n for part in ("demo", "sandbox", "seed", "local_services", "emulator",
                                      "test_", "conftest"))
    ]  # fmt: skip
    assert unwanted == []


def test_import_contracts_hold() -> None:
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("resources/injected.py", "import orchestration.tags\n", "resources stand alone"),
        ("assets/injected.py", "import orchestration.tags\n", "resources stand alone"),
        ("orchestration/injected.py", "import dev.seed\n", "never import development"),
    ],
)
def test_import_contracts_catch_a_wrong_direction(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    skip = shutil.ignore_patterns("__pycache__")
    for package in (*SHIPPED, "dev", "tests"):
        shutil.copytree(REPO / package, root / package, ignore=skip)
    (root / module).write_text(line)
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert contract in proc.stdout and "BROKEN" in proc.stdout
    assert module.removesuffix(".py").replace("/", ".") in proc.stdout
