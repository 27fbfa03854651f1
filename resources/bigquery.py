"""BigQuery for the run's environment: dagster-gcp on real GCP, the emulator when configured.

Ops call ``bigquery.get_client(environment)`` and get a ``google.cloud.bigquery.Client`` either
way, so the same op code runs against GCP and against the local emulator. On GCP the client comes
from dagster-gcp's ``BigQueryResource`` (application default credentials, or
``gcp_credentials``) for the environment's GCP project; when the variable named by
``emulator_host_env_var`` (``BIGQUERY_EMULATOR_HOST``) is set, an anonymous client talks to that
loopback endpoint instead and the project is ``emulator_project`` (``test`` has no GCP project).

dagster-gcp and the Google client (~160 MB, ~1.3 s: the storage client, pandas, pyarrow, grpc)
are imported by ``get_client`` only: this resource is bound in the code location, so a module-level
import would be paid by every run of every job (tests/core/test_import_cost.py).
"""

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from resources.environments import Environment, EnvironmentConfigError, EnvVarName
from resources.errors import FinalFailure
from resources.identifiers import display

if TYPE_CHECKING:
    from google.cloud import bigquery

CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"


class BigQueryTarget(FinalFailure):
    """Raised for a BigQuery configuration that cannot be used (shown plainly in the UI)."""


def check_credentials_path(env: Mapping[str, str] | None = None) -> None:
    """Refuse a ``GOOGLE_APPLICATION_CREDENTIALS`` that the Google auth library cannot open.

    The platform's rule is an absolute path: ``~`` is not expanded by gcloud or google-auth, and a
    relative path depends on the working directory of whichever process runs the step. Checked
    before any client is made, as a FinalFailure: no retry can fix a path. A value that is neither
    absolute nor ``~`` is not shown (it may be the key's JSON pasted in). Unset: ADC as usual.
    """
    env = os.environ if env is None else env
    value = env.get(CREDENTIALS_ENV)
    if not value:
        return
    fix = f"Set {CREDENTIALS_ENV} to the absolute path of the service-account key file"
    if value.startswith("~"):
        raise BigQueryTarget(
            f"{CREDENTIALS_ENV}={display(value, 80)} starts with '~', which gcloud and google-auth "
            f"do not expand. {fix} (e.g. /home/<user>/...). Nothing was sent."
        )
    if not os.path.isabs(value):
        raise BigQueryTarget(
            f"{CREDENTIALS_ENV} is not an absolute path (value not shown). {fix}, starting with "
            "'/'. Nothing was sent."
        )
    path = Path(value)
    problem = (
        "does not exist"
        if not path.exists()
        else "is not a file"
        if not path.is_file()
        else "is not readable by this process"
        if not os.access(path, os.R_OK)
        else None
    )
    if problem:
        raise BigQueryTarget(
            f"{CREDENTIALS_ENV}={display(value, 200)} {problem}. {fix}. Nothing was sent."
        )


class PlatformBigQueryResource(dg.ConfigurableResource):
    """Which BigQuery the run talks to; the environment comes from the ``environment`` resource."""

    emulator_host_env_var: EnvVarName = Field(
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
    def get_client(self, environment: Environment) -> Iterator["bigquery.Client"]:
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
            from google.cloud import bigquery

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
        environment.refuse_endpoint_overrides()  # prod: no other endpoint variable either
        project = self.project_for(environment)
        if not self.gcp_credentials:  # with a key in config, dagster-gcp writes its own file
            check_credentials_path()
        from dagster_gcp import BigQueryResource
        from google.auth.exceptions import DefaultCredentialsError

        gcp = BigQueryResource(
            project=project, location=self.location, gcp_credentials=self.gcp_credentials
        )
        with contextlib.ExitStack() as stack:
            try:
                client = stack.enter_context(gcp.get_client())
            except DefaultCredentialsError as exc:
                text = str(exc).strip()
                first = text.splitlines()[0][:300] if text else type(exc).__name__
                raise BigQueryTarget(
                    f"No usable Google credentials for BigQuery project {project}: {first}. "
                    f"Set {CREDENTIALS_ENV} to an absolute key-file path or run as a service "
                    "account. Nothing was sent."
                ) from None
            try:
                yield client
            finally:
                client.close()
