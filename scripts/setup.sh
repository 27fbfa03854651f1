#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with its dev/emulator extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet -e '.[dev]'

# The UI test (tests/ui) drives Debian's Chromium through Playwright; Playwright's own browser
# download (`playwright install`) is not used.
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends chromium \
    || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; }
fi

# Development code (dev/: the demo, the sandbox, the emulator launcher, seeders) and tests are not
# part of the installed package; the repo root on the venv's path makes them importable from
# any working directory (subprocesses such as `python -m dev.sandbox serve` included).
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PWD" > "$SITE/platform_ops_dev.pth"

# Byte-compile the project once: where PYTHONDONTWRITEBYTECODE is set (as on these machines and in
# the image), every `dagster job execute` would otherwise compile the ~110 project modules again.
.venv/bin/python -m compileall -q orchestration assets resources dev
