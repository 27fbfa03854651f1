"""This area's jobs, merged into the code location by definitions.py."""

import dagster as dg

from orchestration.release.jobs import (
    bootstrap_job,
    migrate_job,
    org_sync_all_job,
    org_sync_by_tenant_job,
    release_job,
    release_plan_job,
)

defs = dg.Definitions(
    jobs=[
        release_job,
        release_plan_job,
        migrate_job,
        bootstrap_job,
        org_sync_all_job,
        org_sync_by_tenant_job,
    ]
)
