"""The HTTP calling convention against the real sandbox server with injected faults."""

import socket
import time

import pytest

from dev.sandbox.server import Fault
from resources.environment import PlatformEnvironment
from resources.environments import EnvironmentConfigError
from resources.http_api import ApiAuthError, ApiError, parse_retry_after
from resources.platform_api import PlatformApiResource
from tests.conftest import TEST_API_KEY


def _client(**overrides):
    resource = PlatformApiResource(
        environment=PlatformEnvironment(name="test"),
        initial_backoff_seconds=0.01,
        max_backoff_seconds=0.05,
        **overrides,
    )
    retries: list[str] = []
    return resource.client(on_retry=retries.append), retries


def _calls(sandbox, path):
    return [r for r in sandbox.requests if r["path"] == path]


def test_retries_503_then_succeeds_with_one_idempotency_key(platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=503, times=2))
    client, retries = _client()
    with client:
        body = client.bootstrap(idempotency_key="bootstrap:test-1")
    assert body["status"] == "ok"
    calls = _calls(platform_env, "/admin/bootstrap")
    assert [c["status"] for c in calls] == [503, 503, 200]
    assert {c["idempotency_key"] for c in calls} == {"bootstrap:test-1"}
    assert len(retries) == 2 and "HTTP 503" in retries[0]


def test_429_honours_retry_after(platform_env):
    platform_env.add_fault(
        Fault(method="POST", path="/admin/quota/cleanup-stale", status=429, times=1, retry_after=1)
    )
    client, _ = _client()
    started = time.monotonic()
    with client:
        client.cleanup_stale_quota(idempotency_key="k-429")
    assert time.monotonic() - started >= 0.95  # backoff alone would be ~0.01 s
    assert [c["status"] for c in _calls(platform_env, "/admin/quota/cleanup-stale")] == [429, 200]


def test_400_is_not_retried_and_carries_detail(platform_env):
    platform_env.add_fault(
        Fault(
            method="POST", path="/admin/orgs/org-0001/sync", status=400, body={"detail": "bad org"}
        )
    )
    client, retries = _client()
    with client, pytest.raises(ApiError) as err:
        client.sync_org("org-0001", idempotency_key="k-400")
    assert err.value.status == 400
    assert "bad org" in str(err.value) and "not retried" in str(err.value)
    assert len(_calls(platform_env, "/admin/orgs/org-0001/sync")) == 1
    assert retries == []


def test_401_names_environment_and_secret_without_the_key(platform_env, monkeypatch):
    monkeypatch.setenv("CA_ROOT_API_KEY", "wrong-key-0123456789")
    client, _ = _client()
    with client, pytest.raises(ApiAuthError) as err:
        client.bootstrap(idempotency_key="k-401")
    message = str(err.value)
    assert "401" in message and "ca-root-api-key-test" in message and "'test'" in message
    assert "wrong-key-0123456789" not in message
    assert len(_calls(platform_env, "/admin/bootstrap")) == 1


def test_slow_response_times_out_then_retries(platform_env):
    platform_env.add_fault(
        Fault(method="GET", path="/admin/orgs", status=None, delay_ms=800, times=1)
    )
    client, retries = _client(timeout_seconds=0.3)
    with client:
        orgs = list(client.iter_orgs())
    assert len(orgs) == 5
    assert retries and "timeout" in retries[0]


def test_retries_exhausted_reports_attempts(platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/bootstrap", status=502))
    client, _ = _client(max_attempts=3)
    with client, pytest.raises(ApiError, match="after 3 attempts") as err:
        client.bootstrap(idempotency_key="k-502")
    assert err.value.attempts == 3
    assert len(_calls(platform_env, "/admin/bootstrap")) == 3


def test_connection_refused_is_retried_then_reported(monkeypatch):
    with socket.socket() as s:  # a port on loopback that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CA_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("CA_ROOT_API_KEY", TEST_API_KEY)
    client, retries = _client(max_attempts=2)
    with client, pytest.raises(ApiError, match="connection error"):
        client.bootstrap(idempotency_key="k-conn")
    assert len(retries) == 1


def test_missing_key_is_a_clear_error_before_any_request(platform_env, monkeypatch):
    monkeypatch.delenv("CA_ROOT_API_KEY")
    with pytest.raises(EnvironmentConfigError, match=r"CA_ROOT_API_KEY.*ca-root-api-key-test"):
        _client()
    assert platform_env.requests == []


def test_sandbox_replays_a_repeated_idempotency_key(platform_env):
    client, _ = _client()
    with client:
        first = client.reset_daily_quota(
            "2026-11-23", idempotency_key="quota-reset-daily:2026-11-23"
        )
        second = client.reset_daily_quota(
            "2026-11-23", idempotency_key="quota-reset-daily:2026-11-23"
        )
    assert first == second
    assert platform_env.state()["effects"]["reset-daily"]["2026-11-23"] == 1


def test_parse_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(
        10.0
    )
    assert parse_retry_after("soon") is None
