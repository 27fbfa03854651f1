"""The release jobs. ``release`` chains the three steps with Nothing dependencies so a failure
stops the sequence exactly there; the three parts are also jobs of their own."""

import dagster as dg

from orchestration.policies.recipes import recipe
from orchestration.release.ops import (
    apply_migrations,
    claim_environment,
    free_environment,
    plan_org_batches,
    release_preflight,
    run_bootstrap,
    summarize_org_sync,
    sync_org_batch,
    sync_tenants_as_children,
)
from orchestration.tags import KIND_TAG

# HTTP-bound work: the in-process executor saves seconds of process start-up per step, and the
# org fan-out gets its concurrency from threads inside each batch step.
EXECUTOR = dg.in_process_executor


def _org_sync(after: object) -> object:
    batches = plan_org_batches(after)
    return summarize_org_sync(batches.map(sync_org_batch).collect())


@dg.job(
    name="release",
    description="Release sequence for one environment: migrate → bootstrap → org_sync_all. "
    "Choose the environment in resources.environment (prod needs confirm_prod: true).",
    executor_def=EXECUTOR,
    **recipe("release").job_kwargs(**{KIND_TAG: "release"}),
)
def release_job() -> None:
    # claim_environment takes the environment (record store row, atomic); free_environment, the
    # last step, gives it back on success. A failure hook would fire when one step fails while
    # other org-sync batches still run, freeing the environment too early; a failed, canceled
    # or killed-then-marked run frees it by having ended (see guard.py).
    migrated = apply_migrations(claim_environment(release_preflight()))
    free_environment(_org_sync(run_bootstrap(migrated)))


@dg.job(
    name="migrate",
    description="Applies pending SQL migrations through the Supabase Management API.",
    executor_def=EXECUTOR,
    **recipe("api_call").job_kwargs(**{KIND_TAG: "migrate"}),
)
def migrate_job() -> None:
    apply_migrations(release_preflight())


@dg.job(
    name="bootstrap",
    description="POST /admin/bootstrap (smart): fresh install or schema sync, never destructive.",
    executor_def=EXECUTOR,
    **recipe("api_call").job_kwargs(**{KIND_TAG: "bootstrap"}),
)
def bootstrap_job() -> None:
    run_bootstrap(release_preflight())


@dg.job(
    name="org_sync_all",
    description="Syncs every active org, batched fan-out with bounded concurrency per batch.",
    executor_def=EXECUTOR,
    **recipe("bulk_fanout").job_kwargs(**{KIND_TAG: "org_sync"}),
)
def org_sync_all_job() -> None:
    _org_sync(release_preflight())


@dg.job(
    name="org_sync_by_tenant",
    description="Parent run: one child org_sync_all run per tenant group, each its own run "
    "(tag platform/parent_run_id); fails listing the failed children.",
    executor_def=EXECUTOR,
    **recipe("bulk_fanout").job_kwargs(**{KIND_TAG: "org_sync_parent"}),
)
def org_sync_by_tenant_job() -> None:
    sync_tenants_as_children(release_preflight())


defs = dg.Definitions(
    jobs=[release_job, migrate_job, bootstrap_job, org_sync_all_job, org_sync_by_tenant_job]
)
