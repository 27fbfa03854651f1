"""Recipes: named job profiles (retry policy, tags, pool, max runtime, notification route).

Defined once here and applied with ``@dg.job(**recipe("api_call").job_kwargs())``, so every job
of a kind behaves alike and the UI shows which recipe a run follows (tag ``platform/recipe``).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from orchestration.policies.retry import retry_policy

RECIPE_TAG = "platform/recipe"
NOTIFY_TAG = "platform/notify"
MAX_RUNTIME_TAG = "dagster/max_runtime"  # enforced by run monitoring (dagster.yaml)


@dataclass(frozen=True)
class Recipe:
    name: str
    attempts: int
    delay_seconds: float
    max_runtime_seconds: int
    notify: str  # failure-notification route, read by the run-failure sensor
    pool: str | None = None  # op concurrency pool for the recipe's heavy ops
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

    def job_kwargs(self, **extra_tags: str) -> dict[str, Any]:
        """Keyword arguments for ``@dg.job``: tags and the op retry policy."""
        return {"tags": {**self.run_tags(), **extra_tags}, "op_retry_policy": self.retry_policy()}


RECIPES: Mapping[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("api_call", attempts=3, delay_seconds=5, max_runtime_seconds=3600, notify="ops"),
        Recipe(
            "maintenance", attempts=3, delay_seconds=5, max_runtime_seconds=2 * 3600, notify="ops"
        ),
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
    )
}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"Unknown recipe '{name}'. Known: {', '.join(RECIPES)}") from None
