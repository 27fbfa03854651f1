"""Dagster wiring for the platform's background operations."""
