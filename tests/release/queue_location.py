"""The code location the queue test's ``dagster-daemon`` serves: the real ``release`` job, and a
gate job whose one step waits until the test creates its gate file.

A module of its own so the daemon runs no schedule or sensor of the full code location (their
runs would share the queue under test); the release job and its resources are the shipped ones.
The gate stands in for "a run that is in progress until the test says so": run it with the tags
of a release (``platform/kind: release``) or of a trigger worker (``platform/trigger-queue``) and
the run coordinator limits it exactly as it would those runs.
"""

from pathlib import Path

import dagster as dg

from orchestration.release import definitions as release
from orchestration.resources import build_resources
from resources.environment import PlatformEnvironment
from tests.support.wait import wait_until

GATE_JOB = "queue_gate"
# Longer than any test waits: a gate nobody opens fails its run rather than hanging forever.
GATE_TIMEOUT_SECONDS = 600.0


class GateConfig(dg.Config):
    path: str


@dg.op
def wait_for_gate(
    context: dg.OpExecutionContext, config: GateConfig, environment: PlatformEnvironment
) -> None:
    """Holds its run in progress until ``config.path`` exists. ``environment`` is required only so
    the run config may name one, as a release's does (the coordinator tags runs from it)."""
    context.log.info(f"waiting for {config.path} (environment {environment.name})")
    wait_until(lambda: Path(config.path).exists(), timeout=GATE_TIMEOUT_SECONDS, what=config.path)


@dg.job(name=GATE_JOB, executor_def=dg.in_process_executor)
def queue_gate() -> None:
    wait_for_gate()


defs = dg.Definitions.merge(
    release.defs, dg.Definitions(jobs=[queue_gate], resources=build_resources())
)
