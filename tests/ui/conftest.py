"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, screenshots on disk."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium reaches for the (closed) network on start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SETUP_HINT = "run `bash scripts/setup.sh` (installs the playwright package and Debian's chromium)"


@pytest.fixture
def artifacts_dir() -> Path:
    """Where screenshots land: $TEST_ARTIFACTS_DIR/ui, by default test-artifacts/ui in the repo."""
    root = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts")
    path = root / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser_page() -> Iterator["Page"]:
    """A Chromium page in a fresh profile; a missing browser is a failure, not a skip."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is not installed: {SETUP_HINT}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: {SETUP_HINT}")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(30_000)
        try:
            page = context.new_page()
            # Dagster's first-visit "Join the Dagster community" dialog covers the page whenever
            # it decides to show up; dismiss it each time it does.
            page.add_locator_handler(
                page.get_by_role("button", name="Skip"), lambda skip: skip.click()
            )
            yield page
        finally:
            context.close()
