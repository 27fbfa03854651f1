"""This area's resources: where failure notifications go."""

import os

import dagster as dg
from pydantic import Field

UI_URL_ENV = "DAGSTER_UI_URL"
WEBHOOK_ENV = "PLATFORM_OPS_FAILURE_WEBHOOK_URL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"  # also when the variable is set but empty (compose)


class FailureNotifierConfig(dg.ConfigurableResource):
    """Where failure notifications go (unset webhook: run log only) and the UI's address."""

    webhook_url: str | None = Field(
        default_factory=lambda: os.environ.get(WEBHOOK_ENV) or None,
        description=f"Slack-compatible incoming webhook; defaults to ${WEBHOOK_ENV}.",
    )
    ui_url: str = Field(
        default_factory=lambda: os.environ.get(UI_URL_ENV) or DEFAULT_UI_URL,
        description=f"Base URL of the Dagster UI for run links (${UI_URL_ENV}).",
    )
