"""Identifiers from the API are data, not paths.

A listed slug ``../bootstrap#`` once made ``org_sync_all`` POST to ``/admin/bootstrap`` with the
root key. Here the real sandbox lists a whole class of hostile slugs beside valid orgs: none is
sent, each is named (escaped, cut) as a failed org, and the valid orgs still sync.
"""

from __future__ import annotations

from urllib.parse import unquote

import dagster as dg
import pytest

from orchestration.definitions import defs
from orchestration.release.org_sync import INVALID_SLUG, org_name
from resources.environment import PlatformEnvironment
from resources.identifiers import UnsafePathSegment, api_path, display, path_segment
from resources.platform_api import InvalidOrgSlug, PlatformApiResource
from tests.conftest import run_config

HOSTILE_SLUGS = [
    "../bootstrap#",
    "../x",
    "..",
    ".",
    "a/b",
    "%2e%2e",
    "%2fadmin%2fbootstrap",
    "a#b",
    "a?b",
    "a?limit=1",
    "a b",
    "a\tb",
    "a\nb",
    "a\rb",
    "acme\x00",
    "\x00",
    "ac\u202eme",  # right-to-left override
    "\uff41\uff43\uff4d\uff45",  # fullwidth "acme"
    "café",
    "Acme",
    "-acme",
    "_acme",
    "a|b",
    "a\\b",
    "a;b",
    "a" * 64,
    "a" * 200,
]
VALID = ["org-0001", "org-0002", "a", "0", "a" * 63, "x_y-z"]


def test_path_segment_escapes_every_reserved_character_and_refuses_dot_segments():
    for value in HOSTILE_SLUGS + VALID + ["a/../b", "?", "#", "%", "/", "\ud800"]:
        try:
            segment = path_segment(value)
        except UnsafePathSegment:
            assert value in ("", ".", "..") or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
            continue
        assert all(c not in segment for c in "/?#\\ \x00\n\t"), segment
        assert unquote(segment) == value  # one segment, same value on the server
    for bad in ["", ".", ".."]:
        with pytest.raises(UnsafePathSegment):
            api_path("admin", "orgs", bad, "sync")


def test_display_is_one_safe_line_of_bounded_length():
    for value in [*HOSTILE_SLUGS, "x" * 10_000]:
        shown = display(value)
        assert shown.isascii() and shown.isprintable()
        assert "|" not in shown and "\n" not in shown
        assert len(shown) <= 40 + 30  # the cut, quotes and escapes, and the length note


def _sync_org_directly(slug):
    resource = PlatformApiResource(environment=PlatformEnvironment(name="test"))
    with resource.client() as client:
        client.sync_org(slug, idempotency_key=f"k-{len(slug)}")


def test_the_client_refuses_a_bad_slug_before_sending(platform_env):
    for slug in [*HOSTILE_SLUGS, ""]:
        with pytest.raises(InvalidOrgSlug) as err:
            _sync_org_directly(slug)
        assert display(slug) in str(err.value)
    assert platform_env.requests == []


def _failures(result):
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def test_hostile_listed_slugs_are_failed_orgs_never_sent_and_the_rest_sync(instance, platform_env):
    for slug in HOSTILE_SLUGS:
        platform_env.add_org(slug, any_slug=True)
    platform_env.clear_requests()
    config = run_config(ops={"plan_org_batches": {"config": {"batch_size": 8}}})
    result = defs.get_job_def("org_sync_all").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False
    )
    assert not result.success

    # Nothing but the listing and the valid orgs' own sync paths reached the server.
    valid = sorted(s for s in platform_env.state()["orgs"] if s.startswith("org-"))
    assert len(valid) == 5
    paths = [(r["method"], r["path"]) for r in platform_env.requests]
    allowed = {("GET", "/admin/orgs")} | {("POST", f"/admin/orgs/{s}/sync") for s in valid}
    assert set(paths) <= allowed, sorted(set(paths) - allowed)
    assert sorted(p for m, p in paths if m == "POST") == [f"/admin/orgs/{s}/sync" for s in valid]
    synced = {s for s, o in platform_env.state()["orgs"].items() if o["syncs"]}
    assert synced == set(valid)
    assert platform_env.state()["bootstrap"].get("mode") in (None, "")  # never bootstrapped

    # Each hostile slug is named, escaped and cut, in the failure of its batch step.
    failures = _failures(result)
    text = "\n".join(f.event_specific_data.error.message for f in failures)
    for slug in HOSTILE_SLUGS:
        assert org_name(slug) in text, slug
    assert "\x00" not in text and "\u202e" not in text
    assert INVALID_SLUG in text
    # Not transient: a step retry could not fix a slug, so none was attempted.
    for failure in failures:
        assert failure.event_specific_data.user_failure_data is not None
    starts = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(starts) == len(set(starts))
    failed_md = [
        v.value
        for f in failures
        for k, v in f.event_specific_data.user_failure_data.metadata.items()
        if k == "failed_orgs"
    ]
    assert sorted(s for batch in failed_md for s in batch) == sorted(HOSTILE_SLUGS)
    run = instance.get_run_by_id(result.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE


BAD_PROJECT_REFS = ["../v1", "a/b", "abc?x", "ab#c", "ab c", "Sandbox", "re\tf", "é", "x" * 64]


def test_a_project_ref_that_is_not_one_is_refused_before_any_request(
    instance, platform_env, monkeypatch
):
    for ref in BAD_PROJECT_REFS:
        monkeypatch.setenv("SUPABASE_PROJECT_REF", ref)
        result = defs.get_job_def("migrate").execute_in_process(
            instance=instance, run_config=run_config(), raise_on_error=False
        )
        assert not result.success
        (failure,) = _failures(result)
        message = failure.event_specific_data.error.message
        assert "SUPABASE_PROJECT_REF does not hold a Supabase project ref" in message
        assert ref not in message
    assert platform_env.requests == []


def test_child_run_keys_name_hostile_slugs_safely():
    """org_sync_by_tenant tags each child with its first..last slug: one safe, bounded line."""
    from orchestration.release.org_sync import org_name

    for slug in HOSTILE_SLUGS:
        key = f"{org_name(slug)}..{org_name('org-0001')}"
        assert "\n" not in key and "\x00" not in key and len(key) < 120, key
        assert org_name(slug) != slug  # every hostile slug is shown escaped, never as is
