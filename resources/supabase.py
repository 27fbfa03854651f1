"""The Supabase Management API's SQL endpoint, the only way this project touches the database.

Migrations go through ``POST /v1/projects/{ref}/database/query`` rather than a direct connection:
deployments need no database credentials or network path, only a management token.
"""

import os
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from orchestration.environments import SUPABASE_DEFAULT_API_URL, EnvironmentConfigError, read_secret
from resources.environment import PlatformEnvironment
from resources.http_api import ApiClient, ApiError, RetryLog, RetrySettings

ACCESS_TOKEN_SECRET = "supabase-access-token"


class SqlError(ApiError):
    """The database refused the SQL (HTTP 400 from the query endpoint)."""


class SupabaseSqlClient:
    """Runs SQL text through the Management API and returns the rows of its last statement."""

    def __init__(self, api: ApiClient, project_ref: str) -> None:
        self.api = api
        self.project_ref = project_ref

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> "SupabaseSqlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def query(self, sql: str, *, idempotency_key: str | None = None) -> list[dict[str, Any]]:
        path = f"/v1/projects/{self.project_ref}/database/query"
        try:
            response = self.api.request(
                "POST", path, json={"query": sql}, idempotency_key=idempotency_key
            )
        except ApiError as exc:
            if exc.status == 400:  # the database refused the SQL
                raise SqlError(
                    f"SQL error from {self.api.service}: {exc.detail}",
                    service=exc.service,
                    method=exc.method,
                    path=exc.path,
                    status=exc.status,
                    detail=exc.detail,
                    allow_retries=False,
                ) from None
            raise
        rows = response.json()
        return rows if isinstance(rows, list) else []


class SupabaseManagementResource(dg.ConfigurableResource):
    """Supabase Management API access for the run's environment."""

    environment: PlatformEnvironment
    access_token_env_var: str = Field(
        default="SUPABASE_ACCESS_TOKEN",
        description="Name of the env var holding the management token (not the token itself).",
    )
    project_ref_env_var: str = Field(
        default="SUPABASE_PROJECT_REF",
        description="Name of the environment variable holding the Supabase project ref.",
    )
    timeout_seconds: float = Field(default=60.0, description="Per-request timeout (DDL is slow).")
    max_attempts: int = Field(default=5, description="Attempts per call, first one included.")
    initial_backoff_seconds: float = Field(default=0.5, description="First retry delay.")

    def api_url(self) -> str:
        """``SUPABASE_API_URL``; for ``test`` the sandbox (which serves both APIs) by default."""
        env = self.environment.environment
        if os.environ.get("SUPABASE_API_URL"):
            return os.environ["SUPABASE_API_URL"].rstrip("/")
        if env.name == "test":
            return env.api_url()
        return SUPABASE_DEFAULT_API_URL

    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run_id  # links API-call spans to the run (tracing)

    def client(self, on_retry: RetryLog | None = None) -> SupabaseSqlClient:
        env = self.environment.environment
        token = read_secret(self.access_token_env_var, ACCESS_TOKEN_SECRET, env)
        project_ref = os.environ.get(self.project_ref_env_var, "").strip()
        if not project_ref:
            if env.name != "test":
                raise EnvironmentConfigError(
                    f"{self.project_ref_env_var} is not set: name the Supabase project of "
                    f"environment '{env.name}'."
                )
            project_ref = "sandbox"
        return SupabaseSqlClient(
            ApiClient(
                service=f"Supabase Management API ({env.name})",
                base_url=self.api_url(),
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                secrets=[token],
                timeout_seconds=self.timeout_seconds,
                retry=RetrySettings(
                    max_attempts=self.max_attempts,
                    initial_backoff_seconds=self.initial_backoff_seconds,
                ),
                on_retry=on_retry,
                trace_attributes={"dagster.run_id": self._run_id} if self._run_id else None,
                auth_hint=(
                    f"Check {self.access_token_env_var}: it must hold secret "
                    f"'{env.secret_name(ACCESS_TOKEN_SECRET)}' for environment '{env.name}'."
                ),
            ),
            project_ref,
        )
