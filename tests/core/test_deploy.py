"""Static checks of the Docker deployment (tests/deploy/test_stack.py builds and runs it)."""

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


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (a top-level name) out of the context: the last matching
    pattern wins, ``!`` re-includes (enough of Docker's rules for top-level names)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        if re.fullmatch(body.rstrip("/").replace(".", r"\.").replace("*", "[^/]*"), path):
            ignored = not negate
    return ignored


# What the image needs from the repository: the Dockerfile copies the whole (filtered) context.
IMAGE_SOURCES = {
    "pyproject.toml", "README.md", "orchestration", "assets", "resources", "migrations", "config",
    "deploy/dagster.yaml", "deploy/workspace.yaml",
}  # fmt: skip


def test_dockerignore_keeps_development_files_out_of_the_build_context():
    patterns = _dockerignore()
    for name in ("dev", "tests", ".venv", ".demo", ".git", "bench", "test-artifacts", "scripts"):
        assert _ignored(name, patterns), f".dockerignore lets {name} into the build context"
    # An allowlist: everything out, then exactly what the image needs back in, all of it present.
    assert patterns[0] == "*"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert admitted == IMAGE_SOURCES
    for source in admitted:
        assert (REPO / source).exists(), f".dockerignore admits missing {source}"
    # Explicit COPY sources are in the context; `COPY . ` takes the allowlist as it is.
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "$" not in line:
            for source in line.split()[1:-1]:
                if source == ".":
                    continue
                top = source.split("/")[0]
                kept = not _ignored(top, patterns) or f"!{source}" in patterns
                assert kept, f"the Dockerfile copies {source} but .dockerignore leaves it out"


def test_dockerfile_takes_its_base_as_an_argument_and_runs_as_non_root():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the processes must not run as root"
    for banned in ("dev", "tests", "bench", ".venv"):
        assert not any(re.match(rf"COPY .*\b{re.escape(banned)}\b", line) for line in lines)


def test_test_override_uses_host_networking_and_the_launcher_env():
    override = yaml.safe_load((DEPLOY / "docker-compose.test.yml").read_text())
    base = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # Every service, postgres too though the test never starts it: compose 1.29 creates the
    # networks of every service in the files, and no bridge network may be made.
    for name in base["services"]:
        assert override["services"][name]["network_mode"] == "host", name
        # Compose refuses network_mode beside networks: the base file must not name any.
        assert "networks" not in base["services"][name]
    assert base["networks"]["default"]["name"] == "platform_ops"
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert launcher["network"] == "platform_ops"
    assert "PLATFORM_OPS_WEBSERVER_URL" in launcher["env_vars"]
    assert base["x-platform-env"]["PLATFORM_OPS_WEBSERVER_URL"] == "http://webserver:3000"


# README variables the container deployment does not pass on, each with why.
NOT_DEPLOYED = {
    "SUPABASE_API_URL": "refused for prod: the deployment uses Supabase's own endpoint",
    "BIGQUERY_EMULATOR_HOST": "refused for prod",
    "DAGSTER_HOME": "the image sets it",
    "GOOGLE_APPLICATION_CREDENTIALS": "unset: application default credentials (deploy/README.md)",
    "PLATFORM_OPS_ARCHIVE_DIR": "needs a mounted volume first (deploy/README.md, open item)",
    "PLATFORM_OPS_RETRY_DELAY_SECONDS": "tests only",
    "TEST_DATABASE_URL": "tests only",
    "REQUIRE_POSTGRES": "tests only",
}
# Compose variables the run containers do not need, each with why.
NOT_FOR_RUNS = {
    "DAGSTER_UI_URL": "read by the failure sensor, which runs in the code server",
    "DAGSTER_CURRENT_IMAGE": "the code server reports it; the launcher starts runs from it",
}


def _readme_variables() -> set[str]:
    text = (REPO / "README.md").read_text()
    table = text.split("### Every environment variable", 1)[1].split("\n\n", 2)[1]
    return {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([A-Z_]+)`", row.split("|")[1])
    }


def test_every_documented_variable_reaches_the_processes_that_read_it():
    """A variable the README documents is given to every service and every run container, or
    listed above with why: a tracing switch set for the stack must trace the runs too."""
    compose = set(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["x-platform-env"])
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    documented = _readme_variables()
    assert {"PLATFORM_OPS_TRACING", "CA_ROOT_API_KEY", "DAGSTER_UI_URL"} <= documented
    missing = documented - compose - set(NOT_DEPLOYED)
    assert missing == set(), f"documented but not in deploy/docker-compose.yml: {sorted(missing)}"
    for_runs = compose - set(NOT_FOR_RUNS)
    assert for_runs - set(launcher["env_vars"]) == set(), "run containers would not get these"
    otel = {name for name in compose if name.startswith("OTEL_")}
    assert otel and otel <= set(launcher["env_vars"])
