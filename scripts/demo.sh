#!/usr/bin/env bash
# README command 1: install, then run the main jobs on the embedded defaults and print the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m dev.demo "$@"
