"""Policies fixtures: the BigQuery emulator fixtures of the maintenance tests, shared by import."""

from tests.maintenance.conftest import bq_client, bq_emulator, bq_env  # noqa: F401
