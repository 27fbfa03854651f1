"""The queued coordinator copies the run's environment into tags the tag limit reads."""

import dagster as dg
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from orchestration.definitions import defs

COORDINATOR = {
    "module": "orchestration.run_coordinator",
    "class": "EnvironmentTaggingRunCoordinator",
    "config": {
        "tag_concurrency_limits": [
            {
                "key": "platform/release-environment",
                "value": {"applyLimitPerUniqueValue": True},
                "limit": 1,
            }
        ]
    },
}


def _origin(job_name):
    """Where the webserver would say the job lives: this repo's code location."""
    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="orchestration.definitions")
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), job_name)


def _submit(instance, job_name, environment=None):
    job = defs.get_job_def(job_name)
    config = (
        {"resources": {"environment": {"config": {"name": environment}}}} if environment else {}
    )
    run = instance.create_run_for_job(
        job_def=job, run_config=config, tags=dict(job.tags), remote_job_origin=_origin(job_name)
    )
    return instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))


def test_release_runs_get_environment_tags_and_queue():
    with dg.instance_for_test(overrides={"run_coordinator": COORDINATOR}) as instance:
        stage = _submit(instance, "release", "stage")
        default = _submit(instance, "release")
        other = _submit(instance, "bootstrap", "prod")
        assert stage.status == dg.DagsterRunStatus.QUEUED
        assert stage.tags["platform/environment"] == "stage"
        assert stage.tags["platform/release-environment"] == "stage"
        assert default.tags["platform/release-environment"] == "test"
        # Only release runs are limited; every run can be filtered by environment.
        assert other.tags["platform/environment"] == "prod"
        assert "platform/release-environment" not in other.tags
