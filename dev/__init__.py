"""Development-only code: the demo, the local platform sandbox, the BigQuery emulator launcher and
record seeders. Never shipped: not in the wheel (pyproject's package list) nor the image, and no
shipped module imports it (import-linter contract in pyproject.toml; tests/core/test_layout.py).
"""
