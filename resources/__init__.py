"""Dagster resources: the project's only doors to external systems."""
