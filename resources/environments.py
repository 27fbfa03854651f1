"""The platform environments a run can target: test, stage, prod.

One table (mirroring PLATFORM_API.md) and one resolver. Everything that needs to know "which API,
which secret, is this allowed" asks here, so the rules (``local`` refused, ``prod`` confirmed, no
guessed URLs) are enforced in one place and before any request leaves the process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

from resources.errors import FinalFailure

DEFAULT_ENVIRONMENT = "test"
PROD_API_URL = "https://api.cloudact.ai"
SUPABASE_DEFAULT_API_URL = "https://api.supabase.com"

# Where a GCP project's API lives, for environments that do not set CA_API_URL.
API_URL_BY_GCP_PROJECT: Mapping[str, str] = {"cloudact-prod": PROD_API_URL}

PLATFORM = "platform"
SUPABASE = "supabase"


@dataclass(frozen=True)
class EndpointOverride:
    """A variable that redirects a service, and so the secret sent to it, somewhere else."""

    variable: str
    service: str


# Every variable that can point a client carrying a secret at another host. Environments with
# fixed endpoints (prod) refuse all of them: a new override variable goes here, and only here.
ENDPOINT_OVERRIDES: tuple[EndpointOverride, ...] = (
    EndpointOverride("CA_API_URL", "platform API"),
    EndpointOverride("SUPABASE_API_URL", "Supabase Management API"),
    EndpointOverride("BIGQUERY_EMULATOR_HOST", "BigQuery"),
)

ENV_VAR_NAME_RULE = "^[A-Z_][A-Z0-9_]*$"
ENV_VAR_NAME_MAX_LENGTH = 64
_ENV_VAR_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


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
    fixed_supabase_api_url: str | None = None

    def secret_name(self, base: str) -> str:
        """The Secret Manager name of ``base`` here (e.g. ``ca-root-api-key-prod``)."""
        return f"{base}{self.secret_suffix}"

    @property
    def endpoints_fixed(self) -> bool:
        """Whether this environment's endpoints are fixed (prod): no variable may move them."""
        return self.fixed_api_url is not None

    def fixed_endpoints(self) -> dict[str, str]:
        """The fixed base URL of each service (empty for environments without fixed ones)."""
        if not self.fixed_api_url:
            return {}
        return {
            PLATFORM: self.fixed_api_url.rstrip("/"),
            SUPABASE: (self.fixed_supabase_api_url or SUPABASE_DEFAULT_API_URL).rstrip("/"),
        }

    def refuse_endpoint_overrides(self, env: Mapping[str, str] | None = None) -> None:
        """Fail if any :data:`ENDPOINT_OVERRIDES` variable is set while endpoints are fixed.

        Refused rather than ignored: an override set for prod means the deployment is confused
        about where it is, and ignoring it would hide that. Its value is never echoed (a URL may
        carry credentials). A value equal to the fixed endpoint changes nothing and is allowed.
        """
        if not self.endpoints_fixed:
            return
        env = os.environ if env is None else env
        fixed = set(self.fixed_endpoints().values())
        for override in ENDPOINT_OVERRIDES:
            value = (env.get(override.variable) or "").strip().rstrip("/")
            if value and value not in fixed:
                where = ", ".join(f"{k} {v}" for k, v in self.fixed_endpoints().items())
                raise EnvironmentConfigError(
                    f"{override.variable} is set, but environment '{self.name}' has fixed "
                    f"endpoints ({where}): it would send {self.name}'s {override.service} calls "
                    f"and their secret elsewhere. Unset {override.variable} for {self.name} runs "
                    "(it is for test and stage only). Nothing was sent."
                )

    def endpoint(self, service: str, env: Mapping[str, str] | None = None) -> str:
        """The base URL a client of ``service`` (``platform`` or ``supabase``) calls.

        The one source for clients and for the preflight's report, so what the run says it
        targets is what it calls. Fixed environments refuse every override variable first.
        """
        env = os.environ if env is None else env
        if self.endpoints_fixed:
            self.refuse_endpoint_overrides(env)
            return self.fixed_endpoints()[service]
        if service == SUPABASE:
            if (env.get("SUPABASE_API_URL") or "").strip():
                return env["SUPABASE_API_URL"].strip().rstrip("/")
            # The sandbox serves both APIs, so test follows the platform URL by default.
            return self.endpoint(PLATFORM, env) if self.name == "test" else SUPABASE_DEFAULT_API_URL
        if service != PLATFORM:
            raise ValueError(f"unknown service {service!r}")
        return self._platform_url(env)

    def api_url(self, env: Mapping[str, str] | None = None) -> str:
        """The platform API base URL (see :meth:`endpoint`)."""
        return self.endpoint(PLATFORM, env)

    def _platform_url(self, env: Mapping[str, str]) -> str:
        """``CA_API_URL``, else from the GCP project; never a guess."""
        if (env.get("CA_API_URL") or "").strip():
            return env["CA_API_URL"].strip().rstrip("/")
        if self.gcp_project and self.gcp_project in API_URL_BY_GCP_PROJECT:
            return API_URL_BY_GCP_PROJECT[self.gcp_project]
        hint = (
            "start the local sandbox (`python -m dev.sandbox serve`) and set CA_API_URL to its URL"
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
        name="prod",
        gcp_project="cloudact-prod",
        secret_suffix="-prod",
        fixed_api_url=PROD_API_URL,
        fixed_supabase_api_url=SUPABASE_DEFAULT_API_URL,
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


def check_env_var_name(value: object, field: str) -> str:
    """``value`` if it is an environment variable's name, else a clear refusal naming ``field``.

    Config fields such as ``api_key_env_var`` hold a variable's *name*; a value that is not one
    is most likely the secret itself pasted in, so the refusal never shows it, not even in part.
    """
    if (
        isinstance(value, str)
        and len(value) <= ENV_VAR_NAME_MAX_LENGTH
        and _ENV_VAR_NAME.fullmatch(value)
    ):
        return value
    raise EnvironmentConfigError(
        f"{field} must be the NAME of an environment variable ({ENV_VAR_NAME_RULE}, at most "
        f"{ENV_VAR_NAME_MAX_LENGTH} characters), not its value: the value given does not match "
        "and is not shown. Set the field to the variable's name and put the secret in that "
        "variable. Nothing was sent."
    )


def _env_var_field(value: str, info: ValidationInfo) -> str:
    return check_env_var_name(value, info.field_name or "an *_env_var field")


# The type of every ``*_env_var`` config field. The check raises a dagster.Failure (not a
# ValueError), so pydantic passes it through as is instead of quoting the input in its message.
EnvVarName = Annotated[str, AfterValidator(_env_var_field)]


def read_secret(env_var: str, secret_base: str, environment: Environment) -> str:
    """Read a secret from the process environment, or fail naming the variable and the secret.

    Secrets reach the process only as environment variables (injected from Secret Manager by the
    deployment); the error says exactly which one to inject for this environment.
    """
    check_env_var_name(env_var, "the secret's variable name")
    value = os.environ.get(env_var, "")
    if not value.strip():
        raise EnvironmentConfigError(
            f"Missing secret: environment variable {env_var} is not set. For environment "
            f"'{environment.name}' set it to the value of secret "
            f"'{environment.secret_name(secret_base)}'"
            + (f" (GCP project {environment.gcp_project})." if environment.gcp_project else ".")
        )
    value = value.strip()
    problem = header_value_problem(value)
    if problem:
        raise EnvironmentConfigError(
            f"Secret in environment variable {env_var} {problem}; it is sent as an HTTP header, "
            "which takes visible ASCII only (0x21-0x7E). Fix the secret (a careless paste?) and "
            "set the variable again. The value is not shown; nothing was sent."
        )
    return value


def header_value_problem(value: str) -> str | None:
    """What makes ``value`` unfit for a header-carried secret (never quoting it), else None.

    A line break or control character is refused by the HTTP library with the value quoted as
    bytes (``b'..\\n..'``), an escaped form that whole-value redaction cannot match; refusing it
    before the client is made keeps the secret out of every message and sends nothing.
    """
    for position, char in enumerate(value, start=1):
        code = ord(char)
        if 0x21 <= code <= 0x7E:
            continue
        if char in "\r\n":
            kind = "a line break"
        elif char == " ":
            kind = "a space"
        elif code < 0x20 or code == 0x7F:
            kind = "a control character"
        else:
            kind = "a non-ASCII character"
        return f"contains {kind} at position {position} of {len(value)}"
    return None
