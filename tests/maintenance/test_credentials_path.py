"""GOOGLE_APPLICATION_CREDENTIALS: an absolute path to a readable file, or a clear refusal.

Through the real quota_cleanup job (stage, no emulator): a ``~`` or relative path, a missing
file, a directory or an unreadable key file fails at once, before any call, with one line naming
the variable, and the step is not retried (it used to raise DefaultCredentialsError three times).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dev.bigquery_emulator import EMULATOR_HOST_ENV
from orchestration.definitions import defs
from resources.bigquery import CREDENTIALS_ENV, check_credentials_path
from tests.conftest import run_config


def _bad_values(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "keys"
    directory.mkdir()
    garbage = tmp_path / "garbage.json"
    garbage.write_text("this is not a service-account key")
    return {
        "tilde": "~/keys/platform-ops.json",
        "tilde user": "~root/key.json",
        "relative": "keys/platform-ops.json",
        "dot relative": "./key.json",
        "json pasted in": '{"type": "service_account", "private_key": "-----BEGIN"}',
        "missing": str(tmp_path / "nope" / "key.json"),
        "directory": str(directory),
        "garbage file": str(garbage),
    }


def _events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_every_bad_credentials_path_fails_at_once_naming_the_variable(
    instance, monkeypatch, tmp_path
):
    monkeypatch.delenv(EMULATOR_HOST_ENV, raising=False)
    for name, value in _bad_values(tmp_path).items():
        monkeypatch.setenv(CREDENTIALS_ENV, value)
        result = defs.get_job_def("quota_cleanup").execute_in_process(
            instance=instance, run_config=run_config("stage"), raise_on_error=False
        )
        assert not result.success, name
        (failure,) = _events(result, "STEP_FAILURE")
        message = failure.event_specific_data.error.message.strip()
        assert CREDENTIALS_ENV in message, (name, message)
        assert "Nothing was sent" in message, (name, message)
        assert len(message.splitlines()) == 1, (name, message)
        if name == "json pasted in":
            assert "private_key" not in message and "BEGIN" not in message
        # One attempt: a FinalFailure, no step retry.
        assert len(_events(result, "STEP_START")) == 1, name
        assert not _events(result, "STEP_UP_FOR_RETRY"), name
        assert failure.event_specific_data.user_failure_data is not None, name


def test_the_rule_as_a_plain_function(tmp_path):
    key = tmp_path / "key.json"
    key.write_text("{}")
    check_credentials_path({})  # unset: application default credentials, not our business
    check_credentials_path({CREDENTIALS_ENV: ""})
    check_credentials_path({CREDENTIALS_ENV: str(key)})
    refusals = {
        "~/key.json": "starts with '~'",
        "key.json": "not an absolute path",
        str(tmp_path / "missing.json"): "does not exist",
        str(tmp_path): "is not a file",
    }
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable.json"
        unreadable.write_text("{}")
        unreadable.chmod(0)
        refusals[str(unreadable)] = "is not readable"
    for value, reason in refusals.items():
        with pytest.raises(Exception, match=reason) as err:
            check_credentials_path({CREDENTIALS_ENV: value})
        assert CREDENTIALS_ENV in str(err.value)
