"""A QueuedRunCoordinator that tags each run with its target environment before queueing.

The environment is chosen in run config (``resources.environment.config.name``) but Dagster's tag
concurrency limits read run tags. Copying the choice into tags at submit time makes "one release
per environment" a plain ``tag_concurrency_limits`` entry and lets the Runs page filter by
environment, without asking operators to type the environment twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from orchestration.tags import ENVIRONMENT_TAG, KIND_TAG, RELEASE_ENVIRONMENT_TAG
from resources.environments import DEFAULT_ENVIRONMENT


def environment_of(run_config: Mapping[str, Any] | None) -> str:
    """The environment a run config selects (the resource default when it selects none)."""
    resources = (run_config or {}).get("resources") or {}
    config = (resources.get("environment") or {}).get("config") or {}
    name = config.get("name") if isinstance(config, Mapping) else None
    return str(name).strip().lower() if name else DEFAULT_ENVIRONMENT


def environment_tags(run: dg.DagsterRun) -> dict[str, str]:
    env = environment_of(run.run_config)
    tags = {ENVIRONMENT_TAG: env}
    if run.tags.get(KIND_TAG) == "release":
        tags[RELEASE_ENVIRONMENT_TAG] = env
    return {k: v for k, v in tags.items() if run.tags.get(k) != v}


class EnvironmentTaggingRunCoordinator(dg.QueuedRunCoordinator):
    """Queued coordinator + environment tags. Configured exactly like QueuedRunCoordinator."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        tags = environment_tags(context.dagster_run)
        if tags:
            self._instance.add_run_tags(context.dagster_run.run_id, tags)
        return super().submit_run(context)
