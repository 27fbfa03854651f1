"""Every platform API body is checked against its shape in PLATFORM_API.md before it is used.

A listing once came back as ``{"orgs": 5}`` (or a list, or a dict as ``next_cursor``) and the
step failed three times with a bare ``TypeError`` naming neither the service nor the call. Here a
real HTTP server on 127.0.0.1 answers each endpoint with a table of bodies of the wrong shape
(built per field: missing, and each wrong JSON type or value): each is one
``ApiResponseError`` naming service, method, path and the field, never retried, after exactly
one request, with nothing else sent; a body echoing the key never shows it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest

from orchestration.definitions import defs
from resources.http_api import ApiClient, ApiResponseError, RetrySettings
from resources.platform_api import MAX_CURSOR_CHARS, PlatformApiClient
from tests.conftest import run_config
from tests.faulty_server import FaultyServer, respond

KEY = "rootkey-SECRET-4f1e2d3c"
SERVICE = "platform API (test)"

COUNT_WRONG = [None, True, "5", 1.5, -1, [], {}]
STR_WRONG = [None, 5, True, [], {}]
LIST_OF_STR_WRONG = [None, "a", {}, [1], [None], [["a"]]]

# endpoint -> (method, path, call, valid body, {field: wrong values})
ENDPOINTS: dict[str, tuple[str, str, Any, dict, dict[str, list]]] = {
    "bootstrap": (
        "POST",
        "/admin/bootstrap",
        lambda c: c.bootstrap(idempotency_key="k"),
        {
            "status": "ok",
            "mode": "sync",
            "tables_created": ["a"],
            "columns_added": {"t": ["c"]},
            "tables_existing": 3,
        },
        {
            "status": ["error", "OK", None, 1, True],
            "mode": ["smart", "", None, 1],
            "tables_created": LIST_OF_STR_WRONG,
            "columns_added": [None, [], "t", {"t": "c"}, {"t": [1]}, {"t": None}],
            "tables_existing": COUNT_WRONG,
        },
    ),
    "org sync": (
        "POST",
        "/admin/orgs/acme/sync",
        lambda c: c.sync_org("acme", idempotency_key="k"),
        {"status": "ok", "org_slug": "acme", "datasets_synced": 2},
        {
            "status": ["failed", None, 0],
            "org_slug": STR_WRONG,
            "datasets_synced": COUNT_WRONG,
        },
    ),
    "quota reset daily": (
        "POST",
        "/admin/quota/reset-daily",
        lambda c: c.reset_daily_quota("2026-01-01", idempotency_key="k"),
        {"status": "ok", "orgs_reset": 4},
        {"status": ["failed", None], "orgs_reset": COUNT_WRONG},
    ),
    "quota cleanup stale": (
        "POST",
        "/admin/quota/cleanup-stale",
        lambda c: c.cleanup_stale_quota(idempotency_key="k"),
        {"status": "ok", "counters_fixed": 0},
        {"status": ["failed", None], "counters_fixed": COUNT_WRONG},
    ),
    "quota reset monthly": (
        "POST",
        "/admin/quota/reset-monthly",
        lambda c: c.reset_monthly_quota("2026-01", idempotency_key="k"),
        {"status": "ok", "orgs_reset": 4},
        {"status": ["failed", None], "orgs_reset": COUNT_WRONG},
    ),
    "alerts": (
        "POST",
        "/admin/alerts/process-all",
        lambda c: c.process_alerts("2026-01-01", idempotency_key="k"),
        {"status": "ok", "orgs_processed": 2, "alerts_sent": 1},
        {"status": ["failed", None], "orgs_processed": COUNT_WRONG, "alerts_sent": COUNT_WRONG},
    ),
    "org listing": (
        "GET",
        "/admin/orgs",
        lambda c: list(c.iter_orgs()),
        {"orgs": [{"org_slug": "acme", "status": "active"}], "next_cursor": None},
        {
            "orgs": [None, 5, "abc", {"org_slug": "a"}, True],
            "next_cursor": [5, True, [], {"x": 1}, ["c"], 0.5, "c" * (MAX_CURSOR_CHARS + 1)],
        },
    ),
}
NOT_OBJECTS = [[], [[1, 2]], 5, "x", None, True, [{"org_slug": "acme"}]]


def _cases() -> Iterator[tuple[str, str, Any, str]]:
    """(endpoint, case id, body, what the error must name) for every malformed body."""
    for name, (_m, _p, _call, valid, fields) in ENDPOINTS.items():
        for body in NOT_OBJECTS:
            yield name, f"body={json.dumps(body)}", body, "the body"
        for field, wrongs in fields.items():
            missing = {k: v for k, v in valid.items() if k != field}
            yield name, f"no {field}", missing, field
            for wrong in wrongs:
                body = {**copy.deepcopy(valid), field: wrong}
                yield name, f"{field}={json.dumps(wrong)[:30]}", body, field


CASES = list(_cases())


def _client(server: FaultyServer) -> PlatformApiClient:
    return PlatformApiClient(
        ApiClient(
            service=SERVICE,
            base_url=server.base_url,
            headers={"X-CA-Root-Key": KEY},
            secrets=[KEY],
            retry=RetrySettings(initial_backoff_seconds=0.01, max_backoff_seconds=0.02),
        )
    )


def _assert_one_final_error(exc: ApiResponseError, method: str, path: str, names: str) -> None:
    message = str(exc)
    assert message.startswith(f"{SERVICE}: {method} {path} returned HTTP 200 but its body does "
                              "not match PLATFORM_API.md: "), message  # fmt: skip
    assert names in message and "not retried" in message, message
    assert exc.allow_retries is False and exc.status == 200
    assert len(message.splitlines()) == 1 and len(message) < 700, message
    assert KEY not in message and KEY[:8] not in message


@pytest.mark.parametrize(("endpoint", "case", "body", "names"), CASES, ids=[c[1] for c in CASES])
def test_a_body_of_another_shape_is_one_final_error_after_one_request(endpoint, case, body, names):
    method, path, call, _valid, _fields = ENDPOINTS[endpoint]
    with FaultyServer({path: respond(200, json.dumps(body).encode())}) as server:
        with _client(server) as client, pytest.raises(ApiResponseError) as caught:
            call(client)
        _assert_one_final_error(caught.value, method, path, names)
        assert [(h.method, h.path) for h in server.hits] == [(method, path)]  # one, nothing else


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_the_valid_body_of_each_endpoint_still_reads_with_extra_fields(endpoint):
    _method, path, call, valid, _fields = ENDPOINTS[endpoint]
    body = {**valid, "added_later": {"x": [1]}}
    with FaultyServer({path: respond(200, json.dumps(body).encode())}) as server:
        with _client(server) as client:
            result = call(client)
        assert result == ["acme"] if endpoint == "org listing" else result == body
        assert len(server.hits) == 1


def test_a_key_echoed_in_a_wrong_field_is_scrubbed_from_the_error():
    for body in (
        {"orgs": KEY, "next_cursor": None},
        {"orgs": [], "next_cursor": {KEY: KEY}},
        {"orgs": [], "next_cursor": ["x" * 70 + KEY]},
        {KEY: 1, "orgs": []},
        [KEY] * 3,
    ):
        with FaultyServer({"/admin/orgs": respond(200, json.dumps(body).encode())}) as server:
            with _client(server) as client, pytest.raises(ApiResponseError) as caught:
                list(client.iter_orgs())
            assert KEY not in str(caught.value) and KEY[:6] not in str(caught.value)


def test_a_bad_second_page_stops_the_listing_with_nothing_synced():
    pages = [
        {"orgs": [{"org_slug": "acme"}], "next_cursor": "p2"},
        {"orgs": [{"org_slug": "beta"}], "next_cursor": {"x": 1}},
    ]
    served = iter(pages)

    def listing(out: BinaryIO) -> None:
        respond(200, json.dumps(next(served)).encode())(out)

    with FaultyServer({"/admin/orgs": listing}) as server:
        with _client(server) as client, pytest.raises(ApiResponseError) as caught:
            list(client.iter_orgs())
        _assert_one_final_error(caught.value, "GET", "/admin/orgs", "next_cursor")
        assert [(h.method, h.path) for h in server.hits] == [("GET", "/admin/orgs")] * 2


def test_odd_org_entries_are_failed_orgs_named_and_the_rest_listed():
    """The decision: an entry that is not an object with a string org_slug is one failed org of
    its batch (like a bad slug), not a lost listing."""
    entries = [{"org_slug": "acme"}, 5, None, "beta", [], {}, {"org_slug": 7}, {"org_slug": "z"}]
    body = {"orgs": entries, "next_cursor": None}
    server = FaultyServer({"/admin/orgs": respond(200, json.dumps(body).encode())})
    with server, _client(server) as client:
        slugs = list(client.iter_orgs())
    assert slugs[0] == "acme" and slugs[-1] == "z" and len(slugs) == len(entries)
    assert all(s.startswith("<no string org_slug: ") for s in slugs[1:-1])


# The probe's three listings, through a real Dagster run of org_sync_all.
PROBE_LISTINGS = {
    "dict cursor": {"orgs": [{"org_slug": "good-1"}], "next_cursor": {"x": 1}},
    "int orgs": {"orgs": 5},
    "list page": [1, 2],
}


@pytest.mark.parametrize("listing", sorted(PROBE_LISTINGS))
def test_org_sync_all_fails_once_naming_the_call_and_sends_nothing_else(
    instance, monkeypatch, listing
):
    body = json.dumps(PROBE_LISTINGS[listing]).encode()
    with FaultyServer({"/admin/orgs": respond(200, body)}) as server:
        monkeypatch.setenv("CA_API_URL", server.base_url)
        monkeypatch.setenv("CA_ROOT_API_KEY", KEY)
        result = defs.get_job_def("org_sync_all").execute_in_process(
            instance=instance, run_config=run_config(), raise_on_error=False
        )
        hits = [(h.method, h.path) for h in server.hits]
    assert not result.success
    assert hits == [("GET", "/admin/orgs")]  # one attempt, no step retry, no sync sent
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "plan_org_batches"
    message = failure.event_specific_data.error.message
    assert "platform API (test): GET /admin/orgs returned HTTP 200 but its body" in message
    assert "TypeError" not in message and "AttributeError" not in message
    assert KEY not in message


def test_a_non_ascii_secret_echoed_in_a_wrong_field_leaves_no_piece():
    """Scrubbed before the excerpt is escaped to ASCII (an escaped secret would not match)."""
    secret = "pässwört-geheim-€-𝄞"
    pieces = {secret[i : i + 4] for i in range(len(secret) - 3)}
    escaped = {ascii(p)[1:-1] for p in pieces}
    for body in (
        {"orgs": secret, "next_cursor": None},
        {"orgs": [], "next_cursor": {secret: 1}},
        {secret: 1, "orgs": 5},
        [secret],
    ):
        with FaultyServer({"/admin/orgs": respond(200, json.dumps(body).encode())}) as server:
            client = PlatformApiClient(
                ApiClient(
                    service=SERVICE,
                    base_url=server.base_url,
                    headers={"X-CA-Root-Key": KEY},
                    secrets=[KEY, secret],
                )
            )
            with client, pytest.raises(ApiResponseError) as caught:
                list(client.iter_orgs())
        text = str(caught.value) + str(caught.value.detail)
        assert not [p for p in pieces | escaped if p in text], text
