"""BigQuery for the run's environment: dagster-gcp on real GCP, the emulator when configured.

Ops call ``bigquery.get_client(environment)`` and get a ``google.cloud.bigquery.Client`` either
way, so the same op code runs against GCP and against the local emulator. On GCP the client comes
from dagster-gcp's ``BigQueryResource`` (application default credentials, or
``gcp_credentials``) for the environment's GCP project; when the variable named by
``emulator_host_env_var`` (``BIGQUERY_EMULATOR_HOST``) is set, an anonymous client talks to that
loopback endpoint instead and the project is ``emulator_project`` (``test`` has no GCP project).
"""

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
from dagster_gcp import BigQueryResource
from google.cloud import bigquery
from pydantic import Field

from orchestration.environments import Environment, EnvironmentConfigError
from orchestration.errors import FinalFailure


class BigQueryTarget(FinalFailure):
    """Raised for a BigQuery configuration that cannot be used (shown plainly in the UI)."""


class PlatformBigQueryResource(dg.ConfigurableResource):
    """Which BigQuery the run talks to; the environment comes from the ``environment`` resource."""

    emulator_host_env_var: str = Field(
        default="BIGQUERY_EMULATOR_HOST",
        description="Name of the variable holding an emulator host:port; when set, use it.",
    )
    emulator_project: str = Field(
        default="local", description="Project id used against the emulator."
    )
    location: str | None = Field(default=None, description="BigQuery location (GCP only).")
    gcp_credentials: str | None = Field(
        default=None,
        description="Base64 service-account key for dagster-gcp; default: application creds.",
    )

    def emulator_endpoint(self) -> str | None:
        """The emulator URL if one is configured in the process environment, else None."""
        host = os.environ.get(self.emulator_host_env_var, "").strip()
        if not host:
            return None
        return host if "://" in host else f"http://{host}"

    def project_for(self, environment: Environment) -> str:
        if self.emulator_endpoint():
            return self.emulator_project
        if not environment.gcp_project:
            raise BigQueryTarget(
                f"Environment '{environment.name}' has no GCP project, so there is no BigQuery to "
                f"clean: set {self.emulator_host_env_var} to a local BigQuery emulator "
                "(see BIGQUERY_EMULATOR.md) or choose stage/prod."
            )
        return environment.gcp_project

    @contextlib.contextmanager
    def get_client(self, environment: Environment) -> Iterator[bigquery.Client]:
        """A client for ``environment``: the emulator if configured, else GCP via dagster-gcp."""
        endpoint = self.emulator_endpoint()
        if endpoint:
            if environment.name == "prod":
                # A prod run must never report success while having touched a local fake.
                raise EnvironmentConfigError(
                    f"{self.emulator_host_env_var} is set ({endpoint}) but the run targets prod; "
                    "unset it to use the real BigQuery of project "
                    f"{environment.gcp_project}."
                )
            from google.auth.credentials import AnonymousCredentials

            client = bigquery.Client(
                project=self.emulator_project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": endpoint},
            )
            try:
                yield client
            finally:
                client.close()
            return
        gcp = BigQueryResource(
            project=self.project_for(environment),
            location=self.location,
            gcp_credentials=self.gcp_credentials,
        )
        with gcp.get_client() as client:
            try:
                yield client
            finally:
                client.close()
