"""Every ``*_env_var`` config field holds a variable's NAME; anything else is refused unseen.

A pasted key in ``api_key_env_var`` must fail at resource init, before any request, with one line
naming the field and the rule, and never show the value or any 4+ character piece of it.
"""

from __future__ import annotations

import copy

import dagster as dg
import pytest

from orchestration.definitions import defs
from resources.bigquery import PlatformBigQueryResource
from resources.environments import (
    ENV_VAR_NAME_MAX_LENGTH,
    ENV_VAR_NAME_RULE,
    EnvironmentConfigError,
)
from resources.platform_api import PlatformApiResource
from resources.supabase import SupabaseManagementResource
from tests.conftest import TEST_API_KEY, run_config
from tests.run_text import run_text

RESOURCE_CLASSES = [PlatformApiResource, SupabaseManagementResource, PlatformBigQueryResource]
# The binding of each class in the code location, for the job-level check.
RESOURCE_KEYS = {PlatformApiResource: "platform_api", SupabaseManagementResource: "supabase"}

BAD_NAMES = [
    TEST_API_KEY,  # the key itself pasted in (real-looking: lowercase, dashes, digits)
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "ca_root_api_key",  # lowercase
    "CA ROOT API KEY",  # spaces
    "CA_ROOT_API_KEY=sk_live_4eC39HqLyjWDarjtT1zdp7dc",  # an assignment
    "",  # empty
    "X" * (ENV_VAR_NAME_MAX_LENGTH + 1),  # very long
    "A" * 500,
    "1CA_ROOT",  # starts with a digit
    "CA-ROOT-KEY",
    "CA_ROOT_KEY\n",
    "CA_ROOT_KEY\x00",
    "ÄPI_KEY",
    " CA_ROOT_API_KEY",
]
PASTED_KEY = "Zq8xW3vK9mPt7Rb2Lc5Nd1Hf"  # random-looking: no 4-char piece is a word of a log
GOOD_NAMES = ["CA_ROOT_API_KEY", "_X", "A", "A" * ENV_VAR_NAME_MAX_LENGTH, "KEY_2"]


def env_var_fields(cls: type) -> list[str]:
    """Every ``*_env_var`` field of a resource class: new ones are covered without a test edit."""
    return [name for name in cls.model_fields if name.endswith("_env_var")]


def pieces(value: str, size: int = 4) -> set[str]:
    return {value[i : i + size] for i in range(len(value) - size + 1)}


def assert_not_leaked(text: str, value: str, template: str = "") -> None:
    """Neither ``value`` nor any 4-character piece of it is in ``text``, beyond ``template``.

    ``template`` is text known to hold no part of the value (the same message for another
    value): a piece both share is a word of the message, not the value leaking.
    """
    if value.strip():
        assert value not in text
    leaked = {p for p in pieces(value) if p in text and p not in template}
    assert not leaked, f"pieces of the refused value appear: {sorted(leaked)[:5]}"


def test_the_classes_have_env_var_fields():
    found = {cls.__name__: env_var_fields(cls) for cls in RESOURCE_CLASSES}
    assert found == {
        "PlatformApiResource": ["api_key_env_var"],
        "SupabaseManagementResource": ["access_token_env_var", "project_ref_env_var"],
        "PlatformBigQueryResource": ["emulator_host_env_var"],
    }


@pytest.mark.parametrize("cls", RESOURCE_CLASSES, ids=lambda c: c.__name__)
def test_every_bad_name_refused_without_echo(cls):
    for field in env_var_fields(cls):
        messages: set[str] = set()
        for bad in BAD_NAMES:
            with pytest.raises(EnvironmentConfigError) as err:
                cls(**{field: bad}) if cls is PlatformBigQueryResource else cls(
                    environment={"name": "test"}, **{field: bad}
                )
            message = str(err.value)
            assert field in message and ENV_VAR_NAME_RULE in message, message
            assert "\n" not in message
            # The message does not depend on the value at all, so it cannot carry any of it.
            messages.add(message)
            assert_not_leaked(message, bad, template=field)
        for good in GOOD_NAMES:
            resource = (
                cls(**{field: good})
                if cls is PlatformBigQueryResource
                else cls(environment={"name": "test"}, **{field: good})
            )
            assert getattr(resource, field) == good
        assert len(messages) == 1


@pytest.mark.parametrize(
    ("resource_key", "field"),
    [
        ("platform_api", "api_key_env_var"),
        ("supabase", "access_token_env_var"),
        ("supabase", "project_ref_env_var"),
    ],
)
def test_pasted_key_fails_the_run_at_resource_init_before_any_request(
    instance, platform_env, resource_key, field
):
    config = copy.deepcopy(run_config())  # run_config() shares its nested dicts
    config["resources"].setdefault(resource_key, {"config": {}})["config"][field] = PASTED_KEY
    result = defs.get_job_def("release").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False
    )
    assert not result.success
    text = run_text(result)
    assert f"{field} must be the NAME of an environment variable" in text
    assert_not_leaked(text, PASTED_KEY)
    # Resource init failed: no step started, and the sandbox heard nothing.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert platform_env.requests == []
    stored = instance.get_run_by_id(result.run_id)
    assert stored.status == dg.DagsterRunStatus.FAILURE


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x01", "\x7f", " ", "\u00a0", "é", "\u2028"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_secret_that_cannot_be_a_header_fails_unseen_and_sends_nothing(
    instance, platform_env, monkeypatch, bad, where
):
    """A key with a line break or other non-header character (a careless paste) fails the
    bootstrap step naming the variable and the position; no piece of the key, zero requests."""
    key = "ca_root_Zx9Qw3Lm7Hp2Kd8Vb"
    at = {"start": 0, "middle": len(key) // 2, "end": len(key)}[where]
    value = key[:at] + bad + key[at:]
    if value.strip() != value:  # ends are stripped first: padding at either end is harmless
        value = "x" + value + "y"
    monkeypatch.setenv("CA_ROOT_API_KEY", value)
    result = defs.get_job_def("bootstrap").execute_in_process(
        instance=instance, run_config=run_config(), raise_on_error=False
    )
    assert not result.success
    text = run_text(result)
    assert "CA_ROOT_API_KEY" in text and "at position" in text and "nothing was sent" in text
    pieces = {key[i : i + 4] for i in range(len(key) - 3)}
    assert not [p for p in pieces if p in text]
    assert platform_env.requests == []
    attempts = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert attempts == []  # a secret that is wrong stays wrong: not retried
