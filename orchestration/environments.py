"""The platform environments a run can target: test, stage, prod.

One table (mirroring PLATFORM_API.md) and one resolver. Everything that needs to know "which API,
which secret, is this allowed" asks here, so the rules (``local`` refused, ``prod`` confirmed, no
guessed URLs) are enforced in one place and before any request leaves the process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from orchestration.errors import FinalFailure

DEFAULT_ENVIRONMENT = "test"
PROD_API_URL = "https://api.cloudact.ai"
SUPABASE_DEFAULT_API_URL = "https://api.supabase.com"

# Where a GCP project's API lives, for environments that do not set CA_API_URL.
API_URL_BY_GCP_PROJECT: Mapping[str, str] = {"cloudact-prod": PROD_API_URL}


class EnvironmentConfigError(FinalFailure):
    """A run asked for an environment it may not use, or one that is not fully configured.

    A ``dagster.Failure`` so the UI shows the message itself rather than a traceback.
    """


@dataclass(frozen=True)
class Environment:
    """One row of the environments table."""

    name: str
    gcp_project: str | None
    secret_suffix: str
    fixed_api_url: str | None = None

    def secret_name(self, base: str) -> str:
        """The Secret Manager name of ``base`` here (e.g. ``ca-root-api-key-prod``)."""
        return f"{base}{self.secret_suffix}"

    def api_url(self, env: Mapping[str, str] | None = None) -> str:
        """The API base URL: fixed for prod, else ``CA_API_URL``, else from the GCP project."""
        env = os.environ if env is None else env
        if self.fixed_api_url:
            return self.fixed_api_url
        if env.get("CA_API_URL"):
            return env["CA_API_URL"].rstrip("/")
        if self.gcp_project and self.gcp_project in API_URL_BY_GCP_PROJECT:
            return API_URL_BY_GCP_PROJECT[self.gcp_project]
        hint = (
            "start the local sandbox (`python -m sandbox serve`) and set CA_API_URL to its URL"
            if self.name == "test"
            else f"set CA_API_URL to the {self.name} API's base URL"
        )
        raise EnvironmentConfigError(
            f"No platform API URL for environment '{self.name}': CA_API_URL is not set and GCP "
            f"project {self.gcp_project or '(none)'} has no known API URL; {hint}."
        )


ENVIRONMENTS: Mapping[str, Environment] = {
    "test": Environment(name="test", gcp_project=None, secret_suffix="-test"),
    "stage": Environment(name="stage", gcp_project="cloudact-testing-1", secret_suffix="-test"),
    "prod": Environment(
        name="prod", gcp_project="cloudact-prod", secret_suffix="-prod", fixed_api_url=PROD_API_URL
    ),
}


def resolve_environment(name: str, *, confirm_prod: bool = False) -> Environment:
    """Return the environment a run may use, or raise a clear error before any call is made."""
    normalized = (name or "").strip().lower()
    if normalized == "local":
        raise EnvironmentConfigError(
            "Environment 'local' is refused for platform jobs: it is a developer's own machine, "
            "not a deployment these jobs manage. Use 'test' (the local sandbox), 'stage' or 'prod'."
        )
    if normalized not in ENVIRONMENTS:
        raise EnvironmentConfigError(
            f"Unknown environment '{name}'. Choose one of: {', '.join(ENVIRONMENTS)}."
        )
    if normalized == "prod" and not confirm_prod:
        raise EnvironmentConfigError(
            "Environment 'prod' needs explicit confirmation: set "
            "resources.environment.config.confirm_prod: true in the run config "
            "(see config/release-prod.yaml). Nothing was sent."
        )
    return ENVIRONMENTS[normalized]


def read_secret(env_var: str, secret_base: str, environment: Environment) -> str:
    """Read a secret from the process environment, or fail naming the variable and the secret.

    Secrets reach the process only as environment variables (injected from Secret Manager by the
    deployment); the error says exactly which one to inject for this environment.
    """
    value = os.environ.get(env_var, "")
    if not value.strip():
        raise EnvironmentConfigError(
            f"Missing secret: environment variable {env_var} is not set. For environment "
            f"'{environment.name}' set it to the value of secret "
            f"'{environment.secret_name(secret_base)}'"
            + (f" (GCP project {environment.gcp_project})." if environment.gcp_project else ".")
        )
    return value.strip()
