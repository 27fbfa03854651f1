"""The release jobs. ``release`` chains the three steps with Nothing dependencies so a failure
stops the sequence exactly there; the three parts are also jobs of their own.

HTTP-bound work: the in-process executor (``job_settings``' default) saves seconds of process
start-up per step, and the org fan-out gets its concurrency from threads inside each batch step.
"""

import dagster as dg

from orchestration.policies.recipes import job_settings
from orchestration.release.ops import (
    apply_migrations,
    claim_environment,
    free_environment,
    plan_org_batches,
    plan_release,
    release_preflight,
    run_bootstrap,
    summarize_org_sync,
    sync_org_batch,
    sync_tenants_as_children,
)


def _org_sync(after: object) -> object:
    batches = plan_org_batches(after)
    return summarize_org_sync(batches.map(sync_org_batch).collect())


@dg.job(
    **job_settings(
        "release",
        description="Release sequence for one environment: migrate → bootstrap → org_sync_all. "
        "Choose the environment in resources.environment (prod needs confirm_prod: true and "
        "the plan id of a reviewed release_plan run).",
        recipe="release",
        kind="release",
    )
)
def release_job() -> None:
    # claim_environment takes the environment (record store row, atomic); free_environment, the
    # last step, gives it back on success. A failure hook would fire when one step fails while
    # other org-sync batches still run, freeing the environment too early; a failed, canceled
    # or killed-then-marked run frees it by having ended (see guard.py).
    migrated = apply_migrations(claim_environment(release_preflight()))
    free_environment(_org_sync(run_bootstrap(migrated)))


@dg.job(
    **job_settings(
        "release_plan",
        description="Read-only: what release would do to one environment (pending migrations "
        "with their SQL, drift, bootstrap, active orgs, URLs, code version) and the plan id "
        "that release applies (ops.release_preflight.config.plan_id; required on prod).",
        recipe="api_call",
        kind="release_plan",
    )
)
def release_plan_job() -> None:
    plan_release()


@dg.job(
    **job_settings(
        "migrate",
        description="Applies pending SQL migrations through the Supabase Management API.",
        recipe="api_call",
        kind="migrate",
    )
)
def migrate_job() -> None:
    apply_migrations(release_preflight())


@dg.job(
    **job_settings(
        "bootstrap",
        description="POST /admin/bootstrap (smart): fresh install or schema sync, "
        "never destructive.",
        recipe="api_call",
        kind="bootstrap",
    )
)
def bootstrap_job() -> None:
    run_bootstrap(release_preflight())


@dg.job(
    **job_settings(
        "org_sync_all",
        description="Syncs every active org, batched fan-out with bounded concurrency per batch.",
        recipe="bulk_fanout",
        kind="org_sync",
    )
)
def org_sync_all_job() -> None:
    _org_sync(release_preflight())


@dg.job(
    **job_settings(
        "org_sync_by_tenant",
        description="Parent run: one child org_sync_all run per tenant group, each its own run "
        "(tag platform/parent_run_id); fails listing the failed children.",
        recipe="bulk_fanout",
        kind="org_sync_parent",
    )
)
def org_sync_by_tenant_job() -> None:
    sync_tenants_as_children(release_preflight())
