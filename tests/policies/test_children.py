"""Parent/child runs on a real instance: linkage by tag, and failure aggregation."""

import dagster as dg

from dev.sandbox.server import Fault
from orchestration.definitions import defs
from orchestration.policies.children import CHILD_KEY_TAG, PARENT_RUN_TAG
from tests.conftest import run_config


def _parent(instance, orgs_per_child=2):
    config = run_config(
        ops={"sync_tenants_as_children": {"config": {"orgs_per_child": orgs_per_child}}}
    )
    return defs.get_job_def("org_sync_by_tenant").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False
    )


def _children(instance, parent_id):
    return instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_TAG: parent_id}))


def test_children_are_linked_and_all_orgs_synced(instance, platform_env):
    parent = _parent(instance)
    assert parent.success
    children = _children(instance, parent.run_id)
    assert len(children) == 3  # 5 orgs, 2 per child
    assert all(c.status == dg.DagsterRunStatus.SUCCESS for c in children)
    assert sorted(c.tags[CHILD_KEY_TAG] for c in children) == [
        "org-0001..org-0002",
        "org-0003..org-0004",
        "org-0005..org-0005",
    ]
    assert all(c.job_name == "org_sync_all" for c in children)
    assert all(o["syncs"] == 1 for o in platform_env.state()["orgs"].values())


def test_parent_fails_listing_failed_children(instance, platform_env):
    platform_env.add_fault(Fault(method="POST", path="/admin/orgs/org-0003/sync", status=400))
    parent = _parent(instance)
    assert not parent.success
    children = {c.tags[CHILD_KEY_TAG]: c for c in _children(instance, parent.run_id)}
    failed = children["org-0003..org-0004"]
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert children["org-0001..org-0002"].status == dg.DagsterRunStatus.SUCCESS
    (failure,) = [e for e in parent.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "1 of 3 child run(s) failed" in message
    assert failed.run_id in message and "org-0003" in message
    # org-0004 shares the failed child but synced: one org failing never stops the others.
    assert platform_env.state()["orgs"]["org-0004"]["syncs"] == 1
