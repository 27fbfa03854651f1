"""The platform API (``X-CA-Root-Key``) as a Dagster resource and a typed client.

The resource holds configuration only; ``client()`` returns an :class:`PlatformApiClient` bound to
the run's environment and log, so ops read as one call per endpoint in PLATFORM_API.md.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from orchestration.environments import PLATFORM, EnvVarName, read_secret
from orchestration.errors import FinalFailure
from resources.environment import PlatformEnvironment
from resources.http_api import ApiClient, RetryLog, RetrySettings
from resources.identifiers import ORG_SLUG_RULE, api_path, display, is_org_slug

API_KEY_SECRET = "ca-root-api-key"


class InvalidOrgSlug(FinalFailure):
    """An org slug from the API that breaks the slug rule: reported, never sent."""


class OrgListingError(FinalFailure):
    """The org listing itself cannot be followed (a cursor that repeats)."""


def check_org_slug(slug: object) -> str:
    """``slug`` if it follows the slug rule, else :class:`InvalidOrgSlug` naming it safely."""
    if is_org_slug(slug):
        return slug  # type: ignore[return-value]
    raise InvalidOrgSlug(
        f"org slug {display(slug)} does not match {ORG_SLUG_RULE}: not sent (the listing "
        "returned it; fix the org's slug on the platform)"
    )


class PlatformApiClient:
    """One method per platform endpoint; every POST takes the idempotency key its caller derives."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> "PlatformApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bootstrap(self, *, idempotency_key: str) -> dict[str, Any]:
        return self.api.post_json(
            "/admin/bootstrap", {"mode": "smart"}, idempotency_key=idempotency_key
        )

    def list_orgs_page(
        self, *, status: str = "active", limit: int = 1000, cursor: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"status": status, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self.api.get_json("/admin/orgs", params=params)

    def iter_orgs(self, *, status: str = "active", page_size: int = 1000) -> Iterator[str]:
        """Every org slug with ``status``, following ``next_cursor`` to the end.

        Slugs are yielded as listed, unchecked: the caller reports bad ones by name. An entry
        without a string ``org_slug`` yields a placeholder that no slug rule accepts.
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = self.list_orgs_page(status=status, limit=page_size, cursor=cursor)
            for org in page.get("orgs", []):
                slug = org.get("org_slug") if isinstance(org, dict) else None
                yield slug if isinstance(slug, str) else f"<no string org_slug: {display(org)}>"
            cursor = page.get("next_cursor")
            if not cursor:
                return
            if cursor in seen:  # a server bug would otherwise page forever
                raise OrgListingError(
                    f"GET /admin/orgs returned next_cursor {display(cursor)} a second time; the "
                    "listing would never end. Nothing was synced from it."
                )
            seen.add(cursor)

    def sync_org(self, org_slug: str, *, idempotency_key: str) -> dict[str, Any]:
        """Refuses a slug outside the rule before sending; the slug is one escaped segment."""
        path = api_path("admin", "orgs", check_org_slug(org_slug), "sync")
        return self.api.post_json(path, {}, idempotency_key=idempotency_key)

    def reset_daily_quota(self, date: str, *, idempotency_key: str) -> dict[str, Any]:
        return self.api.post_json(
            "/admin/quota/reset-daily", {"date": date}, idempotency_key=idempotency_key
        )

    def cleanup_stale_quota(self, *, idempotency_key: str) -> dict[str, Any]:
        return self.api.post_json("/admin/quota/cleanup-stale", {}, idempotency_key=idempotency_key)

    def reset_monthly_quota(self, month: str, *, idempotency_key: str) -> dict[str, Any]:
        return self.api.post_json(
            "/admin/quota/reset-monthly", {"month": month}, idempotency_key=idempotency_key
        )

    def process_alerts(self, date: str, *, idempotency_key: str) -> dict[str, Any]:
        return self.api.post_json(
            "/admin/alerts/process-all", {"date": date}, idempotency_key=idempotency_key
        )


class PlatformApiResource(dg.ConfigurableResource):
    """Platform API access for the run's environment.

    The key is read from the environment variable named by ``api_key_env_var`` when the client is
    made, so its value never enters run config, metadata or the UI; a missing key fails naming the
    variable and the Secret Manager secret for the chosen environment.
    """

    environment: PlatformEnvironment
    api_key_env_var: EnvVarName = Field(
        default="CA_ROOT_API_KEY",
        description="Name of the environment variable holding the root API key (not the key).",
    )
    timeout_seconds: float = Field(default=30.0, description="Per-request timeout.")
    max_attempts: int = Field(default=5, description="Attempts per call, first one included.")
    initial_backoff_seconds: float = Field(default=0.5, description="First retry delay.")
    max_backoff_seconds: float = Field(default=30.0, description="Cap on one retry delay.")

    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run_id  # links API-call spans to the run (tracing)
        # Fail at resource init, before any op: prod refuses every endpoint override.
        self.environment.environment.refuse_endpoint_overrides()

    def endpoint(self) -> str:
        """The base URL the client calls (the preflight reports this same value)."""
        return self.environment.environment.endpoint(PLATFORM)

    def client(self, on_retry: RetryLog | None = None) -> PlatformApiClient:
        env = self.environment.environment
        base_url = self.endpoint()
        key = read_secret(self.api_key_env_var, API_KEY_SECRET, env)
        return PlatformApiClient(
            ApiClient(
                service=f"platform API ({env.name})",
                base_url=base_url,
                headers={"X-CA-Root-Key": key, "Accept": "application/json"},
                secrets=[key],
                timeout_seconds=self.timeout_seconds,
                retry=RetrySettings(
                    max_attempts=self.max_attempts,
                    initial_backoff_seconds=self.initial_backoff_seconds,
                    max_backoff_seconds=self.max_backoff_seconds,
                ),
                on_retry=on_retry,
                trace_attributes={"dagster.run_id": self._run_id} if self._run_id else None,
                auth_hint=(
                    f"Check {self.api_key_env_var}: it must hold secret "
                    f"'{env.secret_name(API_KEY_SECRET)}' for environment '{env.name}'."
                ),
            )
        )
