"""Every resource the code location binds, chosen in one place.

The environment is a run-level choice (launchpad: ``resources.environment.config.name``); the
resources that talk to the platform depend on that one resource, so one field decides URLs,
secret names and the prod confirmation for a whole run.
"""

from __future__ import annotations

from typing import Any

from orchestration.policies.children import ChildRunsResource
from resources.environment import PlatformEnvironment
from resources.platform_api import PlatformApiResource
from resources.record_store import RecordStoreResource
from resources.supabase import SupabaseManagementResource


def build_resources() -> dict[str, Any]:
    environment = PlatformEnvironment.configure_at_launch()
    return {
        "environment": environment,
        "platform_api": PlatformApiResource(environment=environment),
        "supabase": SupabaseManagementResource(environment=environment),
        "record_store": RecordStoreResource(),
        # Where parents (org_sync_by_tenant) submit their child runs: the webserver's GraphQL.
        "child_runs": ChildRunsResource(),
    }
