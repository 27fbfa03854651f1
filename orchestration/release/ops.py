"""Release ops: thin wiring from Dagster to the plain functions beside this module."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from orchestration.policies import children as children_lib
from orchestration.policies.recipes import recipe
from orchestration.release import bootstrap as bootstrap_lib
from orchestration.release import guard
from orchestration.release import migrations as migrations_lib
from orchestration.release import org_sync as org_sync_lib
from orchestration.release import plan as plan_lib
from orchestration.tags import ENVIRONMENT_TAG
from resources.environment import PlatformEnvironment
from resources.environments import PLATFORM, SUPABASE, Environment
from resources.identifiers import display
from resources.platform_api import PlatformApiResource
from resources.record_store import RecordStoreResource
from resources.supabase import SupabaseManagementResource, SupabaseSqlClient


def root_run_id(context: dg.OpExecutionContext) -> str:
    """The first run of a re-execution chain: idempotency keys stay stable across re-executions."""
    return context.run.root_run_id or context.run_id


# Jobs that apply migrations: on prod they run only a reviewed plan (release_plan's id).
# bootstrap and the org syncs are not covered by a plan id (the API has no dry run; orgs change
# all the time), so they keep confirm_prod alone.
PLAN_REQUIRED_ON_PROD = frozenset({"release", "migrate"})


class PreflightConfig(dg.Config):
    plan_id: str | None = Field(
        default=None,
        description="The id a release_plan run showed: the run first recomputes the plan (reads "
        "only) and refuses, naming what changed, if it differs. Required for release and "
        "migrate on prod.",
    )


def _migrations_dir(context: dg.OpExecutionContext) -> Path:
    """The directory this run's apply_migrations step will read (its config, else the default),
    so the plan checked is the plan applied."""
    ops_config = (context.run_config or {}).get("ops") or {}
    step_config = (ops_config.get("apply_migrations") or {}).get("config") or {}
    return Path(step_config.get("migrations_dir") or migrations_lib.DEFAULT_MIGRATIONS_DIR)


def _plan_run_metadata(instance: dg.DagsterInstance, plan_id: str) -> dict[str, object] | None:
    """The metadata values of the release_plan run that showed ``plan_id`` (None: not on this
    instance, e.g. planned on another one)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name="release_plan", tags={plan_lib.PLAN_ID_TAG: plan_id}),
        limit=1,
    )
    for record in records:
        events = instance.get_records_for_run(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT
        ).records
        for event in events:
            data = event.event_log_entry.dagster_event
            output = data.step_output_data if data else None
            if output is not None and "plan_target" in output.metadata:
                return {k: v.value for k, v in output.metadata.items()}
    return None


@dg.op(
    description="Checks the target environment and tags the run with it; given a plan_id, "
    "recomputes the release plan (reads only) and refuses a plan that changed."
)
def release_preflight(
    context: dg.OpExecutionContext,
    config: PreflightConfig,
    environment: PlatformEnvironment,
    supabase: SupabaseManagementResource,
) -> None:
    env = environment.environment
    if context.run.tags.get(ENVIRONMENT_TAG) != env.name:
        context.instance.add_run_tags(context.run_id, {ENVIRONMENT_TAG: env.name})
    # The same Environment.endpoint() the clients call, so this is where the run's calls go.
    api_url, supabase_url = env.endpoint(PLATFORM), env.endpoint(SUPABASE)
    context.log.info(
        f"Release targets environment '{env.name}': platform API {api_url}, "
        f"Supabase Management API {supabase_url}"
    )
    metadata: dict[str, object] = {
        "environment": env.name,
        "api_url": api_url,
        "supabase_api_url": supabase_url,
    }
    if config.plan_id is None:
        if env.name == "prod" and context.job_name in PLAN_REQUIRED_ON_PROD:
            raise plan_lib.plan_required_on_prod(context.job_name)
    else:
        plan_id = plan_lib.check_plan_id(config.plan_id)
        migrations = migrations_lib.discover(_migrations_dir(context))
        with supabase.client(on_retry=context.log.warning) as sql:
            _verify_plan(context, env, sql, plan_id, migrations, check_code_version=True)
        metadata["plan_id"] = plan_id
    context.add_output_metadata(metadata)


def _run_plan_id(context: dg.OpExecutionContext) -> str | None:
    """The plan id given to this run's preflight (None: the run applies no particular plan)."""
    ops_config = (context.run_config or {}).get("ops") or {}
    value = ((ops_config.get("release_preflight") or {}).get("config") or {}).get("plan_id")
    return plan_lib.check_plan_id(value) if isinstance(value, str) else None


def _verify_plan(
    context: dg.OpExecutionContext,
    env: Environment,
    sql: SupabaseSqlClient,
    plan_id: str,
    migrations: list[migrations_lib.Migration],
    *,
    check_code_version: bool = False,
) -> None:
    """Recompute the plan (reads only; orgs are not in the id, so not listed) and refuse, naming
    what changed, unless it is the reviewed one and not blocked. ``check_code_version`` warns
    when this build is not the one that made the plan (not in the id: see plan.py)."""
    plan = plan_lib.compute_plan(
        environment=env.name,
        api_url=env.endpoint(PLATFORM),
        supabase_api_url=env.endpoint(SUPABASE),
        migrations=migrations,
        sql=sql,
        platform=None,
        code_version="(not in the plan id)",  # spares a git call per check
    )
    matched = plan_lib.match_plan(plan, plan_id) is not None
    planned = (
        _plan_run_metadata(context.instance, plan_id) if check_code_version or not matched else None
    )
    reviewed = plan_lib.PlanTarget.from_dict(planned.get("plan_target")) if planned else None
    applied_since = plan_lib.verify(plan, plan_id, reviewed)
    planned_by = planned.get("code_version") if planned else None
    if check_code_version and isinstance(planned_by, str):
        now = plan_lib.code_version()
        if planned_by != now:
            context.log.warning(
                f"Plan {plan_id[:12]} was made by code version {display(planned_by)}, this run "
                f"is {display(now)}: the files and their checksums are the same (the id says "
                "so), but review what else changed in the code before going on"
            )
    resumed = f" ({applied_since} of the plan's files applied since: resuming)"
    context.log.info(
        f"Plan {plan_id[:12]} verified: {len(plan.pending)} migration(s) pending, "
        f"{len(plan.applied)} applied" + (resumed if applied_since else "")
    )


class ReleasePlanConfig(dg.Config):
    migrations_dir: str = Field(
        default=str(migrations_lib.DEFAULT_MIGRATIONS_DIR),
        description="Directory of NNNN_name.sql files (the one release's apply_migrations reads).",
    )


@dg.op(
    description="Read-only: what release would do to the environment (pending migrations and "
    "their SQL, drift, bootstrap, active orgs, URLs, code version) and the plan id to apply."
)
def plan_release(
    context: dg.OpExecutionContext,
    config: ReleasePlanConfig,
    environment: PlatformEnvironment,
    supabase: SupabaseManagementResource,
    platform_api: PlatformApiResource,
) -> None:
    env = environment.environment
    api_url, supabase_url = env.endpoint(PLATFORM), env.endpoint(SUPABASE)
    migrations = migrations_lib.discover(Path(config.migrations_dir))
    with (
        supabase.client(on_retry=context.log.warning) as sql,
        platform_api.client(on_retry=context.log.warning) as platform,
    ):
        plan = plan_lib.compute_plan(
            environment=env.name,
            api_url=api_url,
            supabase_api_url=supabase_url,
            migrations=migrations,
            sql=sql,
            platform=platform,
            code_version=plan_lib.code_version(),
        )
    context.instance.add_run_tags(
        context.run_id, {ENVIRONMENT_TAG: env.name, plan_lib.PLAN_ID_TAG: plan.plan_id}
    )
    custom_dir = config.migrations_dir != str(migrations_lib.DEFAULT_MIGRATIONS_DIR)
    launchpad = plan_lib.launchpad_yaml(
        plan,
        confirm_prod=environment.confirm_prod,
        migrations_dir=config.migrations_dir if custom_dir else None,
    )
    if plan.blocked:
        context.log.warning(f"Plan {plan.plan_id} is BLOCKED: {'; '.join(plan.blocked_reasons)}")
    else:
        context.log.info(
            f"Plan {plan.plan_id}: {len(plan.pending)} migration(s) pending, bootstrap (smart), "
            f"{plan.org_count} active org(s)"
        )
    context.add_output_metadata(
        {
            "plan_id": plan.plan_id,
            "blocked": plan.blocked,
            "blocked_reason": "; ".join(plan.blocked_reasons),
            "summary": dg.MetadataValue.md(plan_lib.summary_markdown(plan)),
            "launchpad_yaml": dg.MetadataValue.md(
                "Paste into the `release` launchpad:\n\n" + plan_lib.fence(launchpad, "yaml")
            ),
            "pending": dg.MetadataValue.json([p.filename for p in plan.pending]),
            "applied_count": len(plan.applied),
            "active_orgs": plan.org_count,
            "environment": env.name,
            "api_url": api_url,
            "supabase_api_url": supabase_url,
            "code_version": plan.code_version,
            "plan_target": dg.MetadataValue.json(plan.target.as_dict()),
        }
    )


def _in_run_process(context: dg.OpExecutionContext) -> bool:
    return context.job_def.executor_def.name == dg.in_process_executor.name


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    description="Takes the environment for this release (one release per environment at a time).",
)
def claim_environment(
    context: dg.OpExecutionContext,
    environment: PlatformEnvironment,
    record_store: RecordStoreResource,
) -> None:
    """An op of its own, only in ``release``: the parts (migrate, bootstrap, ...) may run side by
    side and need no record store."""
    env = environment.environment
    holder = guard.acquire_release_lock(
        record_store.engine(),
        context.instance,
        env.name,
        context.run_id,
        context.job_name,
        log=context.log.warning,
        # The step runs in the run's own process only with the in-process executor; a step
        # process of another executor exits after the step and would look like a dead holder.
        holder_process=guard.process_identity() if _in_run_process(context) else None,
    )
    context.log.info(f"Environment '{env.name}' is held by this run until it ends")
    context.add_output_metadata({"environment": env.name, "held_since": str(holder.acquired_at)})


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    description="Frees the environment after every step succeeded (a failed run frees it by "
    "ending: a holder whose run has ended does not block the next release).",
)
def free_environment(
    context: dg.OpExecutionContext,
    environment: PlatformEnvironment,
    record_store: RecordStoreResource,
) -> None:
    env = environment.environment
    if guard.release_release_lock(record_store.engine(), env.name, context.run_id):
        context.log.info(f"Environment '{env.name}' freed")
    else:
        context.log.warning(f"Environment '{env.name}' was not held by this run; left as it is")


class MigrateConfig(dg.Config):
    migrations_dir: str = Field(
        default=str(migrations_lib.DEFAULT_MIGRATIONS_DIR),
        description="Directory of NNNN_name.sql files, applied in version order.",
    )


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    description="Applies pending SQL migrations through the Supabase Management API.",
)
def apply_migrations(
    context: dg.OpExecutionContext, config: MigrateConfig, supabase: SupabaseManagementResource
) -> None:
    # In the release job: stop here if the environment was taken away (no-op elsewhere).
    guard.ensure_held(context.run_id, context.get_step_execution_context().step.key)
    plan_id = _run_plan_id(context)
    env = supabase.environment.environment
    if plan_id is None and env.name == "prod":
        # Checked here, not only in the preflight: a step selection, a UI step subset or
        # "re-execute selected steps" runs this op without the preflight.
        raise plan_lib.plan_required_on_prod(context.job_name)
    migrations = migrations_lib.discover(Path(config.migrations_dir))
    with supabase.client(on_retry=context.log.warning) as client:
        if plan_id is not None:
            # Again, on the very files about to be sent: one changed since the preflight (a
            # deploy in between) is refused here, before the first write.
            _verify_plan(context, env, client, plan_id, migrations)
        result = migrations_lib.migrate(
            client, migrations, log=context.log.info, key_prefix=f"migrate:{context.run_id}"
        )
    context.log.info(
        f"Applied {len(result.applied)} migration(s); {len(result.already_applied)} already applied"
    )
    context.add_output_metadata(
        {
            "applied": dg.MetadataValue.json(result.applied),
            "applied_count": len(result.applied),
            "already_applied_count": len(result.already_applied),
            "unknown_applied": dg.MetadataValue.json(result.unknown_applied),
        }
    )


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    description="POST /admin/bootstrap (smart): fresh install or schema sync, never destructive.",
)
def run_bootstrap(context: dg.OpExecutionContext, platform_api: PlatformApiResource) -> None:
    guard.ensure_held(context.run_id, context.get_step_execution_context().step.key)
    with platform_api.client(on_retry=context.log.warning) as client:
        result = bootstrap_lib.run_bootstrap(client, idempotency_key=f"bootstrap:{context.run_id}")
    context.log.info(f"Bootstrap {result.summary()}")
    context.add_output_metadata(
        {
            "mode": result.mode,
            "tables_created_count": len(result.tables_created),
            "tables_created": dg.MetadataValue.json(result.tables_created),
            "columns_added_count": result.columns_added_count,
            "columns_added": dg.MetadataValue.json(result.columns_added),
            "tables_existing": result.tables_existing,
        }
    )


class PlanOrgSyncConfig(dg.Config):
    batch_size: int = Field(default=250, ge=1, description="Orgs per mapped sync step.")
    page_size: int = Field(default=1000, ge=1, le=1000, description="Orgs per list call.")
    only_orgs: list[str] | None = Field(
        default=None, description="Sync only these active orgs (a child run of one tenant group)."
    )


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    out=dg.DynamicOut(org_sync_lib.OrgBatch),
    description="Lists every active org (all pages) and fans them out in batches.",
)
def plan_org_batches(
    context: dg.OpExecutionContext, config: PlanOrgSyncConfig, platform_api: PlatformApiResource
) -> Iterator[dg.DynamicOutput[org_sync_lib.OrgBatch]]:
    guard.ensure_held(context.run_id, context.get_step_execution_context().step.key)
    with platform_api.client(on_retry=context.log.warning) as client:
        orgs = list(client.iter_orgs(status="active", page_size=config.page_size))
    if config.only_orgs is not None:
        wanted = set(config.only_orgs)
        missing = sorted(wanted - set(orgs))
        if missing:
            context.log.warning(f"Not active (or unknown), skipped: {', '.join(missing)}")
        orgs = [o for o in orgs if o in wanted]
    batches = org_sync_lib.make_batches(orgs, config.batch_size)
    context.log.info(f"{len(orgs)} active org(s) in {len(batches)} batch(es)")
    for batch in batches:
        yield dg.DynamicOutput(batch, mapping_key=batch.mapping_key)


class SyncBatchConfig(dg.Config):
    concurrency: int = Field(default=16, ge=1, le=128, description="Sync calls in flight at once.")


def _failed_in_parent(context: dg.OpExecutionContext) -> list[str] | None:
    """On re-execution, the orgs this step's previous attempt reported failed (None: sync all)."""
    parent = context.run.parent_run_id
    if not parent:
        return None
    step_key = context.get_step_execution_context().step.key
    records = context.instance.get_records_for_run(
        parent, of_type=dg.DagsterEventType.STEP_FAILURE
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key != step_key:
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        value = user.metadata.get("failed_orgs") if user else None
        if value is not None:
            return list(value.value)
    return None


@dg.op(
    description="Syncs one batch of orgs concurrently; fails at the end naming every failed org.",
    # Off by default (no limit set); `dagster instance concurrency set platform_api N` caps how
    # many batches of all runs call the platform at once.
    pool=recipe("bulk_fanout").pool,
)
def sync_org_batch(
    context: dg.OpExecutionContext,
    config: SyncBatchConfig,
    platform_api: PlatformApiResource,
    batch: org_sync_lib.OrgBatch,
) -> org_sync_lib.BatchOutcome:
    guard.ensure_held(context.run_id, context.get_step_execution_context().step.key)
    orgs = list(batch.orgs)
    previous_failures = _failed_in_parent(context)
    if previous_failures is not None:
        retry = set(previous_failures)
        skipped = [o for o in orgs if o not in retry]
        orgs = [o for o in orgs if o in retry]
        context.log.info(
            f"Re-execution: syncing the {len(orgs)} org(s) that failed before; "
            f"{len(skipped)} already synced"
        )
    progress = org_sync_lib.Progress(
        len(orgs),
        context.log.info,
        f"org sync batch {batch.index} ({batch.offset + 1}-"
        f"{batch.offset + len(batch.orgs)} of {batch.total})",
    )
    root = root_run_id(context)
    with platform_api.client(on_retry=context.log.warning) as client:
        outcome = org_sync_lib.sync_batch(
            client,
            orgs,
            concurrency=config.concurrency,
            key_for=lambda slug: f"org-sync:{root}:{slug}",
            progress=progress,
        )
    if previous_failures is not None:
        outcome.skipped = [
            o for o in batch.orgs if o not in outcome.synced and o not in outcome.failed
        ]
    table = "\n".join(
        [
            "| org | result |",
            "|---|---|",
            *(f"| {o} | synced {n} dataset(s) |" for o, n in sorted(outcome.synced.items())),
            *(
                f"| {org_sync_lib.org_name(o)} | FAILED: {e} |"
                for o, e in sorted(outcome.failed.items())
            ),
            *(f"| {o} | skipped (synced earlier) |" for o in outcome.skipped),
        ]
    )
    metadata = {
        "orgs": dg.MetadataValue.md(table),
        "synced_count": len(outcome.synced),
        "failed_count": len(outcome.failed),
        "failed_orgs": dg.MetadataValue.json(sorted(outcome.failed)),
        "seconds": round(outcome.seconds, 3),
    }
    if outcome.failed:
        names = ", ".join(org_sync_lib.org_name(o) for o in sorted(outcome.failed))
        raise dg.Failure(
            description=(
                f"{len(outcome.failed)} of {len(orgs)} org(s) failed to sync: {names}. "
                "Re-execute from failure to retry only these.\n"
                + "\n".join(
                    f"- {org_sync_lib.org_name(o)}: {e}" for o, e in sorted(outcome.failed.items())
                )
            ),
            metadata=metadata,
            # Retrying the step helps only if some org failed transiently; replays are no-ops
            # on the server (same idempotency keys), so synced orgs are not synced twice.
            allow_retries=bool(outcome.transient),
        )
    context.add_output_metadata(metadata)
    return outcome


class TenantSplitConfig(dg.Config):
    orgs_per_child: int = Field(default=50, ge=1, description="Orgs per child run.")
    max_parallel: int = Field(
        default=4, ge=1, le=32, description="Child runs submitted and unfinished at once."
    )


@dg.op(
    ins={"after": dg.In(dg.Nothing)},
    description="Submits one child org_sync_all run per tenant group to the instance (queue, "
    "launcher, monitoring apply), waits for all of them, and fails listing every failed child.",
)
def sync_tenants_as_children(
    context: dg.OpExecutionContext,
    config: TenantSplitConfig,
    environment: PlatformEnvironment,
    platform_api: PlatformApiResource,
    child_runs: children_lib.ChildRunsResource,
) -> None:
    with platform_api.client(on_retry=context.log.warning) as client:
        orgs = list(client.iter_orgs(status="active"))
    groups = [
        orgs[i : i + config.orgs_per_child] for i in range(0, len(orgs), config.orgs_per_child)
    ]
    env_config = {"name": environment.name, "confirm_prod": environment.confirm_prod}
    children = [
        children_lib.ChildSpec(
            # Slugs come from the API: a bad one is named escaped and cut in the child's tag and
            # in messages; the child run itself refuses it and never sends it.
            key=f"{org_sync_lib.org_name(group[0])}..{org_sync_lib.org_name(group[-1])}",
            run_config={
                "resources": {"environment": {"config": env_config}},
                "ops": {"plan_org_batches": {"config": {"only_orgs": group}}},
            },
        )
        for group in groups
    ]
    context.log.info(f"{len(orgs)} org(s) in {len(children)} child run(s)")
    results = children_lib.run_children(
        context, child_runs, "org_sync_all", children, max_parallel=config.max_parallel
    )
    context.add_output_metadata(children_lib.fail_on_failed_children(results))


@dg.op(description="Totals of the org sync, after every batch succeeded.")
def summarize_org_sync(
    context: dg.OpExecutionContext, outcomes: list[org_sync_lib.BatchOutcome]
) -> None:
    synced = sum(len(o.synced) for o in outcomes)
    skipped = sum(len(o.skipped) for o in outcomes)
    datasets = sum(sum(o.synced.values()) for o in outcomes)
    context.log.info(f"Org sync complete: {synced} org(s) synced, {skipped} skipped")
    context.add_output_metadata(
        {"orgs_synced": synced, "orgs_skipped": skipped, "datasets_synced": datasets}
    )
