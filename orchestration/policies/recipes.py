"""Recipes: named job profiles (retry policy, tags, pool, max runtime, notification route).

Every job of the code location is declared through :func:`job_settings`
(``@dg.job(**job_settings("quota_reset", recipe="maintenance", kind=..., description=...))``,
``dg.define_asset_job(**job_settings(...))``): executor, recipe and description in one place, so
every job of a kind behaves alike and the UI shows which recipe a run follows (tag
``platform/recipe``). ``tests/core/test_job_defaults.py`` walks every job of the code location.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from orchestration.policies.retry import retry_policy
from orchestration.tags import KIND_TAG

RECIPE_TAG = "platform/recipe"
NOTIFY_TAG = "platform/notify"
MAX_RUNTIME_TAG = "dagster/max_runtime"  # enforced by run monitoring (dagster.yaml)


@dataclass(frozen=True)
class Recipe:
    name: str
    attempts: int
    delay_seconds: float
    max_runtime_seconds: int
    notify: str  # failure-notification route: the run-failure sensor's message carries it
    # Op concurrency pool its fan-out ops declare; limit with `dagster instance concurrency set`.
    pool: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def retry_policy(self, delay_seconds: float | None = None) -> dg.RetryPolicy:
        return retry_policy(
            self.attempts, self.delay_seconds if delay_seconds is None else delay_seconds
        )

    def run_tags(self) -> dict[str, str]:
        return {
            RECIPE_TAG: self.name,
            NOTIFY_TAG: self.notify,
            MAX_RUNTIME_TAG: str(self.max_runtime_seconds),
            **self.tags,
        }


RECIPES: Mapping[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("api_call", attempts=3, delay_seconds=5, max_runtime_seconds=3600, notify="ops"),
        Recipe(
            "maintenance", attempts=3, delay_seconds=5, max_runtime_seconds=2 * 3600, notify="ops"
        ),
        # Twice the others' initial delay: a retried fan-out step repeats a whole batch (up to its
        # concurrency of platform calls, or a chunk of records) against a service whose per-call
        # retries just ran out; the README's retry line says so (tests/core/test_job_defaults.py).
        Recipe(
            "bulk_fanout",
            attempts=3,
            delay_seconds=10,
            max_runtime_seconds=6 * 3600,
            notify="ops",
            pool="platform_api",
        ),
        Recipe(
            "release", attempts=3, delay_seconds=5, max_runtime_seconds=4 * 3600, notify="release"
        ),
        # Operators' commands: no step retry. A command is not idempotent, and a retried step
        # could not run it again anyway (the store claims each command run once), so a retry
        # would only report the same failure again after a delay. The operator's retry is the
        # retry_command_run job (a new command run, attempt + 1). Max runtime: the longest
        # command timeout the catalog allows (7 days) plus a day for a batch's queueing, so run
        # monitoring only ends a batch that no command timeout could explain.
        Recipe(
            "command",
            attempts=1,
            delay_seconds=0,
            max_runtime_seconds=8 * 24 * 3600,
            notify="ops",
        ),
    )
}


def job_settings(
    name: str,
    *,
    description: str,
    recipe: str,
    kind: str,
    executor: dg.ExecutorDefinition = dg.in_process_executor,
    tags: Mapping[str, str] | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``@dg.job`` and ``dg.define_asset_job``: the one way a job gets its
    name, description, executor, recipe (run tags, max runtime, notification route, step retry
    policy), its ``platform/kind`` tag and, for a partitioned job, its partitions.

    The in-process executor is the default: every job's steps are short waits on the platform or
    the record store, and a process per step would cost more than the step itself.
    """
    if not description.strip():
        raise ValueError(f"job {name!r}: a description is required (the UI shows it)")
    if recipe not in RECIPES:
        raise ValueError(f"job {name!r}: unknown recipe {recipe!r}. Known: {', '.join(RECIPES)}")
    chosen = RECIPES[recipe]
    settings: dict[str, Any] = {
        "name": name,
        "description": description,
        "executor_def": executor,
        "tags": {**chosen.run_tags(), KIND_TAG: kind, **(tags or {})},
        # A one-attempt recipe gets no policy at all: under RetryPolicy(max_retries=0) Dagster
        # reports any unexpected error as "Exceeded max_retries of 0", hiding the error itself.
        "op_retry_policy": chosen.retry_policy() if chosen.attempts > 1 else None,
    }
    if partitions_def is not None:
        settings["partitions_def"] = partitions_def
    return settings


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"Unknown recipe '{name}'. Known: {', '.join(RECIPES)}") from None
