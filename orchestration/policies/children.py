"""Parent/child runs: a parent step starts real child runs, waits, and fails naming the failures.

Each child is a run of its own in the instance (its own logs, re-executable from the UI), tagged
with the parent's id, so the Runs page filters a parent's children with one tag. Children run in
a bounded pool of worker processes with ``dagster.execute_job`` on the parent's instance: no
daemon round trip, and the parent's step cannot end before its children did. (Threads are not an
option: Dagster reconfigures Python logging while a run starts, and two runs starting in one
process deadlock on logging's lock.) Fan-out inside one run stays
``DynamicOut``; children are for work that deserves its own run (a tenant, an environment).
"""

import importlib
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import dagster as dg

from orchestration.policies.progress import Progress

PARENT_RUN_TAG = "platform/parent_run_id"
CHILD_KEY_TAG = "platform/child_key"
CODE_LOCATION_MODULE = "orchestration.definitions"


@dataclass(frozen=True)
class ChildSpec:
    key: str  # what this child is for (a tenant, a group), shown in tags and messages
    run_config: Mapping[str, Any]


@dataclass(frozen=True)
class ChildResult:
    key: str
    run_id: str
    success: bool
    error: str = ""


def code_location_job(job_name: str) -> dg.JobDefinition:
    """The code location's job ``job_name``, resources bound: a child run's reconstructor.

    Imported when called, in the child's worker process: the code location imports this module.
    """
    module = importlib.import_module(CODE_LOCATION_MODULE)
    return module.defs.resolve_job_def(job_name)


def _job(job_name: str) -> Any:
    """The child's job, reconstructable in this worker process from the code location's module.

    Dagster's public ``build_reconstructable_job`` records a pointer to
    :func:`code_location_job` and its argument, so the child run says how to load its job again.
    """
    return dg.build_reconstructable_job(
        __name__, code_location_job.__name__, (job_name,),
        reconstructor_working_directory=os.getcwd(),
    )  # fmt: skip


def _first_error(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {event.step_failure_data.error.message.strip()[:300]}"
    return "failed (see the child run)"


def _run_child(
    instance_ref: Any,
    job_name: str,
    key: str,
    run_config: Mapping[str, Any],
    tags: Mapping[str, str],
) -> ChildResult:
    """One child run, in a worker process, on the parent's instance."""
    with (
        dg.DagsterInstance.from_ref(instance_ref) as instance,
        dg.execute_job(
            _job(job_name),
            instance=instance,
            run_config=dict(run_config),
            tags=dict(tags),
            raise_on_error=False,
        ) as result,
    ):
        error = "" if result.success else _first_error(instance, result.run_id)
        return ChildResult(key, result.run_id, result.success, error)


def run_children(
    context: dg.OpExecutionContext,
    job_name: str,
    children: Sequence[ChildSpec],
    *,
    max_parallel: int = 4,
    tags: Mapping[str, str] | None = None,
) -> list[ChildResult]:
    """Run every child to completion (at most ``max_parallel`` at once); return their results."""
    instance_ref = context.instance.get_ref()  # children need a persistent instance to share
    progress = Progress(len(children), context.log.info, f"child runs of {job_name}")
    parent_tags = {PARENT_RUN_TAG: context.run_id, **(tags or {})}
    results: list[ChildResult] = []
    workers = max(1, min(max_parallel, len(children)))
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding locks
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        futures = [
            pool.submit(
                _run_child,
                instance_ref,
                job_name,
                child.key,
                child.run_config,
                {**parent_tags, CHILD_KEY_TAG: child.key},
            )
            for child in children
        ]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            state = "succeeded" if result.success else f"FAILED ({result.error})"
            context.log.info(f"child {result.key} (run {result.run_id[:8]}) {state}")
            progress.tick()
    return sorted(results, key=lambda r: r.key)


def fail_on_failed_children(results: Sequence[ChildResult]) -> dict[str, Any]:
    """Metadata for the parent; raises listing every failed child when there is one."""
    table = "\n".join(
        ["| child | run | result |", "|---|---|---|"]
        + [
            f"| {r.key} | {r.run_id} | {'success' if r.success else 'FAILED: ' + r.error} |"
            for r in results
        ]
    )
    metadata = {
        "children": dg.MetadataValue.md(table),
        "child_run_ids": dg.MetadataValue.json([r.run_id for r in results]),
        "failed_children": dg.MetadataValue.json([r.key for r in results if not r.success]),
    }
    failed = [r for r in results if not r.success]
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(results)} child run(s) failed: "
            + "; ".join(f"{r.key} (run {r.run_id}): {r.error}" for r in failed),
            metadata=metadata,
            allow_retries=False,  # re-execute the failed children from the UI instead
        )
    return metadata
