"""The environments table and its refusals, before any request."""

import pytest

from orchestration.run_coordinator import environment_of
from resources.environments import (
    PROD_API_URL,
    EnvironmentConfigError,
    read_secret,
    resolve_environment,
)


def test_table_matches_contract(monkeypatch):
    monkeypatch.delenv("CA_API_URL", raising=False)
    stage = resolve_environment("stage")
    assert stage.gcp_project == "cloudact-testing-1"
    assert stage.secret_name("ca-root-api-key") == "ca-root-api-key-test"
    prod = resolve_environment("prod", confirm_prod=True)
    assert prod.api_url({}) == PROD_API_URL
    # prod's endpoints are fixed: an override is refused, not followed (tests/release/
    # test_prod_endpoints.py covers every override variable through real runs).
    with pytest.raises(EnvironmentConfigError, match="CA_API_URL is set"):
        prod.api_url({"CA_API_URL": "http://127.0.0.1:1"})
    assert prod.secret_name("ca-root-api-key") == "ca-root-api-key-prod"
    assert resolve_environment("test").api_url({"CA_API_URL": "http://127.0.0.1:9/"}) == (
        "http://127.0.0.1:9"
    )


def test_local_refused_with_reason():
    with pytest.raises(EnvironmentConfigError, match="'local' is refused"):
        resolve_environment("local")


def test_unknown_environment_lists_choices():
    with pytest.raises(EnvironmentConfigError, match="test, stage, prod"):
        resolve_environment("qa")


def test_prod_needs_confirmation():
    with pytest.raises(EnvironmentConfigError, match="confirm_prod: true"):
        resolve_environment("prod")


def test_stage_without_url_is_a_configuration_error_not_a_guess():
    with pytest.raises(EnvironmentConfigError, match="CA_API_URL is not set"):
        resolve_environment("stage").api_url({})


def test_missing_secret_names_variable_and_suffixed_secret(monkeypatch):
    monkeypatch.delenv("CA_ROOT_API_KEY", raising=False)
    with pytest.raises(EnvironmentConfigError) as err:
        read_secret(
            "CA_ROOT_API_KEY", "ca-root-api-key", resolve_environment("prod", confirm_prod=True)
        )
    assert "CA_ROOT_API_KEY" in str(err.value)
    assert "ca-root-api-key-prod" in str(err.value)


def test_run_config_environment_for_tags():
    assert environment_of({}) == "test"
    assert environment_of({"resources": {"environment": {"config": {"name": "Stage"}}}}) == "stage"
