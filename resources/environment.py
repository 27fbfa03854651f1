"""The per-run environment choice, as a resource every platform-facing resource depends on.

Choosing the environment in one resource means one launchpad field (``resources.environment``)
decides the API URL, the secret names and the prod confirmation for every call in the run.
"""

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.environments import DEFAULT_ENVIRONMENT, Environment, resolve_environment


class PlatformEnvironment(dg.ConfigurableResource):
    """Which platform environment this run targets (test, stage or prod)."""

    name: str = Field(
        default=DEFAULT_ENVIRONMENT,
        description="Target environment: test (local sandbox), stage or prod. 'local' is refused.",
    )
    confirm_prod: bool = Field(
        default=False,
        description="Must be true for a prod run; without it the run fails before its first call.",
    )

    _resolved: Environment | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Resolving here fails the run at resource init: before any op, before any request.
        self._resolved = resolve_environment(self.name, confirm_prod=self.confirm_prod)

    @property
    def environment(self) -> Environment:
        if self._resolved is None:
            self._resolved = resolve_environment(self.name, confirm_prod=self.confirm_prod)
        return self._resolved
