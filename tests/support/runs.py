"""Queued runs as the webserver or a sensor's submission makes them, without a webserver.

A run reaches ``QUEUED`` only through a queued run coordinator, and the coordinator needs the
run's remote origin (which code location, repository and job a daemon would load it from). No
public Dagster API builds that origin outside a workspace, so this module is the suite's one
place that uses the private origin classes for it; every test that needs a queued run calls
:func:`queued_run` (on an instance from :func:`queued_instance`, or one loaded from the project's
instance files).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

REPO = Path(__file__).resolve().parents[2]
#: The platform's code location, as the workspace files name and load it.
PLATFORM_LOCATION = "platform_ops"
PLATFORM_MODULE = "orchestration.definitions"
#: The coordinator the project's instance files configure (queued, environment-tagging).
SHIPPED_COORDINATOR = {
    "module": "orchestration.run_coordinator",
    "class": "EnvironmentTaggingRunCoordinator",
}


def job_origin(
    job_name: str, location: str = PLATFORM_LOCATION, module: str = PLATFORM_MODULE
) -> RemoteJobOrigin:
    """Where the webserver would say ``job_name`` lives (a daemon finds the location by name)."""
    code_location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=module, attribute="defs", working_directory=str(REPO)),
        location_name=location,
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(code_location, "__repository__"), job_name)


@contextmanager
def queued_instance() -> Iterator[dg.DagsterInstance]:
    """A test instance with the project's queued run coordinator (nothing dequeues from it)."""
    with dg.instance_for_test(overrides={"run_coordinator": SHIPPED_COORDINATOR}) as instance:
        yield instance


def queued_run(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    origin: RemoteJobOrigin | None = None,
) -> dg.DagsterRun:
    """Create a run of ``job`` and submit it to ``instance``'s run coordinator: it is QUEUED.

    Tags are the job's own plus ``tags``; ``origin`` defaults to the job in the platform's code
    location. Fails if the instance's coordinator did not queue the run (e.g. the default
    coordinator launches it instead), so a test never mistakes another status for QUEUED.
    """
    run = instance.create_run_for_job(
        job_def=job,
        run_config=dict(run_config or {}),
        tags={**job.tags, **(tags or {})},
        remote_job_origin=origin or job_origin(job.name),
    )
    submitted = instance.run_coordinator.submit_run(dg.SubmitRunContext(run, workspace=None))
    assert submitted.status == dg.DagsterRunStatus.QUEUED, (
        f"{type(instance.run_coordinator).__name__} left run {run.run_id} {submitted.status}"
    )
    return submitted
