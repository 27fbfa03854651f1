"""The platform API (``X-CA-Root-Key``) as a Dagster resource and a typed client.

The resource holds configuration only; ``client()`` returns an :class:`PlatformApiClient` bound to
the run's environment and log, so ops read as one call per endpoint in PLATFORM_API.md.

Every response body is checked against its shape in PLATFORM_API.md (the ``*Reply`` models,
strict types) before any caller reads it: a body of another shape is one
:class:`~resources.http_api.ApiResponseError` naming the service, the call and the first problem
(never retried: the same request gets the same answer), instead of a ``TypeError`` three step
attempts later. Unknown extra fields are kept (a newer API may add some).
"""

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypeVar

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from resources.environment import PlatformEnvironment
from resources.environments import PLATFORM, EnvVarName, read_secret
from resources.errors import FinalFailure
from resources.http_api import (
    ApiClient,
    ApiResponseError,
    RetryLog,
    RetrySettings,
)
from resources.identifiers import ORG_SLUG_RULE, api_path, display, is_org_slug

API_KEY_SECRET = "ca-root-api-key"
MAX_CURSOR_CHARS = 4096  # a cursor is sent back in the query string
SHAPE_EXCERPT_CHARS = 80  # what a mismatch message shows of the offending value


class _Reply(BaseModel):
    """A 200 body of the platform API: strict types (no "5" for 5, no true for 1), extras kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


Count = Annotated[int, Field(ge=0)]


class OrgsPage(_Reply):
    """``GET /admin/orgs``. Entries are checked one by one by :meth:`PlatformApiClient.iter_orgs`:
    one odd entry is a failed org of its batch (like a bad slug), not a lost listing."""

    orgs: list[Any]
    next_cursor: Annotated[str, Field(max_length=MAX_CURSOR_CHARS)] | None


class BootstrapReply(_Reply):
    status: Literal["ok"]
    mode: Literal["fresh", "sync"]
    tables_created: list[str]
    columns_added: dict[str, list[str]]
    tables_existing: Count


class OrgSyncReply(_Reply):
    status: Literal["ok"]
    org_slug: str
    datasets_synced: Count


class QuotaResetReply(_Reply):
    status: Literal["ok"]
    orgs_reset: Count


class StaleCleanupReply(_Reply):
    status: Literal["ok"]
    counters_fixed: Count


class AlertsReply(_Reply):
    status: Literal["ok"]
    orgs_processed: Count
    alerts_sent: Count


ReplyT = TypeVar("ReplyT", bound=_Reply)


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

    def _checked(self, model: type[ReplyT], method: str, path: str, body: Any) -> ReplyT:
        """``body`` as ``model``, or one final :class:`ApiResponseError` naming its first problem.

        The location can hold a key the server chose: it is escaped to one ASCII line, scrubbed
        and cut like the excerpt of the value.
        """
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
        # Scrubbed before escaping (an escaped non-ASCII secret would no longer match).
        where = ".".join(str(part) for part in problem["loc"])
        where = ascii(self.api.excerpt(where, SHAPE_EXCERPT_CHARS))[1:-1] or "the body"
        if problem["type"] == "missing":
            what = f"{where} is missing"
        elif not problem["loc"]:
            what = f"the body is not a JSON object (got {self._excerpt(problem.get('input'))})"
        else:
            what = f"{where}: {problem['msg']} (got {self._excerpt(problem.get('input'))})"
        raise ApiResponseError(
            f"{self.api.service}: {method} {path} returned HTTP 200 but its body does not match "
            f"PLATFORM_API.md: {what}; not retried (the same "
            "request gets the same answer). Check that the platform API version matches this "
            "project's contract.",
            service=self.api.service,
            method=method,
            path=path,
            status=200,
            detail=what,
            allow_retries=False,
        )

    def _excerpt(self, value: Any) -> str:
        """The JSON type and a short scrubbed start of an offending value."""
        kind = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
        name = kind.get(type(value), "number")
        # Scrubbed whole, then cut (a cut first could leave part of a key for the scrub to miss).
        text = json.dumps(value, ensure_ascii=False, default=str)
        return f"{name} {ascii(self.api.excerpt(text, SHAPE_EXCERPT_CHARS))[1:-1]}"

    def _post(self, model: type[ReplyT], path: str, body: Any, key: str) -> dict[str, Any]:
        reply = self.api.post_json(path, body, idempotency_key=key)
        return self._checked(model, "POST", path, reply).model_dump()

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> "PlatformApiClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bootstrap(self, *, idempotency_key: str) -> dict[str, Any]:
        return self._post(BootstrapReply, "/admin/bootstrap", {"mode": "smart"}, idempotency_key)

    def list_orgs_page(
        self, *, status: str = "active", limit: int = 1000, cursor: str | None = None
    ) -> OrgsPage:
        params: dict[str, Any] = {"status": status, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = self.api.get_json("/admin/orgs", params=params)
        return self._checked(OrgsPage, "GET", "/admin/orgs", page)

    def iter_orgs(self, *, status: str = "active", page_size: int = 1000) -> Iterator[str]:
        """Every org slug with ``status``, following ``next_cursor`` to the end.

        A page of another shape stops the listing (:class:`ApiResponseError`, nothing synced).
        Slugs are yielded as listed, unchecked: the caller reports bad ones by name. An entry
        that is not an object with a string ``org_slug`` yields a placeholder that no slug rule
        accepts, so it is a failed org named in its batch and the other orgs still sync.
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = self.list_orgs_page(status=status, limit=page_size, cursor=cursor)
            for org in page.orgs:
                slug = org.get("org_slug") if isinstance(org, dict) else None
                yield slug if isinstance(slug, str) else f"<no string org_slug: {display(org)}>"
            cursor = page.next_cursor
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
        return self._post(OrgSyncReply, path, {}, idempotency_key)

    def reset_daily_quota(self, date: str, *, idempotency_key: str) -> dict[str, Any]:
        return self._post(
            QuotaResetReply, "/admin/quota/reset-daily", {"date": date}, idempotency_key
        )

    def cleanup_stale_quota(self, *, idempotency_key: str) -> dict[str, Any]:
        return self._post(StaleCleanupReply, "/admin/quota/cleanup-stale", {}, idempotency_key)

    def reset_monthly_quota(self, month: str, *, idempotency_key: str) -> dict[str, Any]:
        return self._post(
            QuotaResetReply, "/admin/quota/reset-monthly", {"month": month}, idempotency_key
        )

    def process_alerts(self, date: str, *, idempotency_key: str) -> dict[str, Any]:
        return self._post(AlertsReply, "/admin/alerts/process-all", {"date": date}, idempotency_key)


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
