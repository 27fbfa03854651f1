"""The Supabase Management API's SQL endpoint, the only way this project touches the database.

Migrations go through ``POST /v1/projects/{ref}/database/query`` rather than a direct connection:
deployments need no database credentials or network path, only a management token.
"""

import os
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.environment import PlatformEnvironment
from resources.environments import SUPABASE, EnvironmentConfigError, EnvVarName, read_secret
from resources.http_api import ApiClient, ApiError, RetryLog, RetrySettings
from resources.identifiers import PROJECT_REF_RULE, api_path, is_project_ref

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
        path = api_path("v1", "projects", self.project_ref, "database", "query")
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
    access_token_env_var: EnvVarName = Field(
        default="SUPABASE_ACCESS_TOKEN",
        description="Name of the env var holding the management token (not the token itself).",
    )
    project_ref_env_var: EnvVarName = Field(
        default="SUPABASE_PROJECT_REF",
        description="Name of the environment variable holding the Supabase project ref.",
    )
    timeout_seconds: float = Field(default=60.0, description="Per-request timeout (DDL is slow).")
    max_attempts: int = Field(default=5, description="Attempts per call, first one included.")
    initial_backoff_seconds: float = Field(default=0.5, description="First retry delay.")

    def endpoint(self) -> str:
        """The base URL the client calls: fixed for prod, else ``SUPABASE_API_URL``, else the
        default (for ``test``: the sandbox, which serves both APIs). The preflight reports this
        same value."""
        return self.environment.environment.endpoint(SUPABASE)

    def api_url(self) -> str:
        return self.endpoint()

    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run_id  # links API-call spans to the run (tracing)
        # Fail at resource init, before any op: prod refuses every endpoint override.
        self.environment.environment.refuse_endpoint_overrides()

    def project_ref(self) -> str:
        """The project ref from its variable, checked: it becomes a segment of every path."""
        env = self.environment.environment
        project_ref = os.environ.get(self.project_ref_env_var, "").strip()
        if not project_ref:
            if env.name != "test":
                raise EnvironmentConfigError(
                    f"{self.project_ref_env_var} is not set: name the Supabase project of "
                    f"environment '{env.name}'."
                )
            return "sandbox"
        if not is_project_ref(project_ref):
            raise EnvironmentConfigError(
                f"{self.project_ref_env_var} does not hold a Supabase project ref "
                f"({PROJECT_REF_RULE}, e.g. the 20 lowercase letters in the project's URL); "
                "the value is not shown. Nothing was sent."
            )
        return project_ref

    def client(self, on_retry: RetryLog | None = None) -> SupabaseSqlClient:
        env = self.environment.environment
        base_url = self.api_url()
        token = read_secret(self.access_token_env_var, ACCESS_TOKEN_SECRET, env)
        project_ref = self.project_ref()
        return SupabaseSqlClient(
            ApiClient(
                service=f"Supabase Management API ({env.name})",
                base_url=base_url,
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
