"""What can be validated here of the Docker deployment (no Docker engine on this machine)."""

import re
from pathlib import Path

import pytest
import yaml

from tests.job_cli import dagster_home, instance_at

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.mark.postgres
def test_production_instance_yaml_loads_against_postgres(pg_url, tmp_path):
    home = dagster_home(tmp_path, source=DEPLOY / "dagster.yaml")
    with instance_at(home, DAGSTER_PG_URL=pg_url) as instance:
        assert "Postgres" in type(instance.run_storage).__name__
        assert type(instance.run_launcher).__name__ == "DockerRunLauncher"
        assert type(instance.run_coordinator).__name__ == "EnvironmentTaggingRunCoordinator"
        assert instance.run_monitoring_enabled


def test_compose_follows_dagsters_docker_layout():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "code_location", "webserver", "daemon"} <= set(services)
    assert "dagster-webserver" in services["webserver"]["entrypoint"]
    assert services["daemon"]["entrypoint"][:2] == ["dagster-daemon", "run"]
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert grpc["host"] == "code_location" and grpc["port"] == 4000
    # Every variable the run containers get is one the compose file provides.
    launcher_env = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    provided = set(compose["x-platform-env"])
    assert set(launcher_env["config"]["env_vars"]) <= provided
    # No secret value is committed: secrets are required from the environment.
    for name in ("CA_ROOT_API_KEY", "SUPABASE_ACCESS_TOKEN"):
        assert re.fullmatch(rf"\$\{{{name}:\?.*\}}", compose["x-platform-env"][name])


def test_dockerfile_copies_what_exists():
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "$" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
