"""Parent/child runs: a parent step submits child runs to the instance, waits, and fails naming
the failures.

Each child is a run of its own in the instance (its own logs, re-executable from the UI), tagged
with the parent's id, so the Runs page filters a parent's children with one tag. Children are
submitted through the webserver's GraphQL API (``dagster_graphql.DagsterGraphQLClient``, Dagster's
documented way to launch runs from code), so they take the path every run takes: the run
coordinator (queue, tag concurrency limits), the run launcher (a container of their own under the
DockerRunLauncher, a subprocess under the default launcher) and run monitoring. No Dagster run
executes inside the parent's step: it only submits, polls and reports.

The parent keeps at most ``max_parallel`` children submitted and unfinished at once, polls their
status every ``poll_interval_seconds`` and gives up after ``wait_timeout_seconds``, naming the
children still unfinished (they are left running; their runs say how they end).

Re-execution: every child also carries the parent chain's root run id. Before submitting, the
parent looks up the children of its root run in the instance; a child key that already succeeded
is reused (not run again) and one still queued or running is waited for (not submitted twice).
Only failed, canceled or never-started keys are submitted. The key is the child's own (for
``org_sync_by_tenant`` its first..last org), so a re-execution whose org list changed submits the
groups that changed.

The parent holds a run slot of the queue while it waits: keep ``max_concurrent_runs`` above the
number of parents that may run at once, or their children wait until the parents time out.
Fan-out inside one run stays ``DynamicOut``; children are for work that deserves its own run (a
tenant, an environment).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from orchestration.policies.progress import Progress

if TYPE_CHECKING:
    # Imported where a parent talks to the webserver (~9 MB, ~0.1 s with gql): the resource is
    # bound in the code location, so a module-level import is paid by every run of every job.
    from dagster_graphql import DagsterGraphQLClient

PARENT_RUN_TAG = "platform/parent_run_id"
ROOT_PARENT_RUN_TAG = "platform/parent_root_run_id"
CHILD_KEY_TAG = "platform/child_key"
WEBSERVER_URL_ENV = "PLATFORM_OPS_WEBSERVER_URL"
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"

FINISHED = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
# Status queries that fail in a row before the parent gives up on the webserver (a restart of
# the webserver is ridden out; a webserver that stays away fails the step, children keep going).
MAX_POLL_ERRORS = 10


class ChildRunsConfigError(ValueError):
    """A child-runs setting cannot be used; the message is one line naming the fix."""


def webserver_client_args(url: str) -> dict[str, Any]:
    """``DagsterGraphQLClient`` keyword arguments for the webserver base ``url``.

    Raises ``ChildRunsConfigError`` (one line, naming the variable and the fix, never the value:
    it could hold credentials) when ``url`` is not ``http(s)://host[:port][/path-prefix]``.
    """
    fix = (
        "set it to the Dagster webserver's internal address, "
        f"http(s)://host[:port][/path-prefix] (default {DEFAULT_WEBSERVER_URL})"
    )
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ChildRunsConfigError(f"{WEBSERVER_URL_ENV} has an invalid port: {fix}.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChildRunsConfigError(f"{WEBSERVER_URL_ENV} is not an http(s) URL: {fix}.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ChildRunsConfigError(
            f"{WEBSERVER_URL_ENV} holds credentials, a query or a fragment: {fix}."
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {
        "hostname": host,
        "port_number": port,
        "use_https": parts.scheme == "https",
        "path_prefix": parts.path.rstrip("/"),
    }


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
    status: str = ""
    reused: bool = False  # succeeded in an earlier run of the parent chain, not run again


@dataclass(frozen=True)
class EarlierChild:
    """A child run of the parent chain found in the instance before submitting."""

    run_id: str
    status: dg.DagsterRunStatus


class ChildRunGateway(Protocol):
    """Where child runs are submitted and observed (the engine; a fake in plain tests)."""

    def submit(self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Submit one run; its run id."""
        ...

    def status(self, run_id: str) -> dg.DagsterRunStatus: ...

    def error(self, run_id: str) -> str:
        """One line on why a finished, unsuccessful run did not succeed."""
        ...

    def earlier_children(self, root_run_id: str, job_name: str) -> Mapping[str, EarlierChild]:
        """Per child key, the run to reuse or wait for (success first, else an unfinished one)."""
        ...


def _first_error(instance: dg.DagsterInstance, run_id: str) -> str:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event and event.step_failure_data and event.step_failure_data.error:
            return f"{event.step_key}: {event.step_failure_data.error.message.strip()[:300]}"
    return "failed (see the child run)"


@dataclass
class EngineChildRuns:
    """Children as runs of the instance, submitted and polled through the webserver's GraphQL.

    Earlier children and failure texts are read from the instance the parent runs on (the same
    storage the webserver reads). ``location``/``repository`` pin the parent's own code location
    when known (a run launched from the UI or the daemon); else the client finds the job's one
    location itself.
    """

    client: DagsterGraphQLClient
    instance: dg.DagsterInstance
    location: str | None = None
    repository: str | None = None

    def submit(self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        return self.client.submit_job_execution(
            job_name,
            repository_location_name=self.location,
            repository_name=self.repository,
            run_config=dict(run_config),
            tags=dict(tags),
        )

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        return self.client.get_run_status(run_id)

    def error(self, run_id: str) -> str:
        run = self.instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.CANCELED:
            return "canceled"
        return _first_error(self.instance, run_id)

    def earlier_children(self, root_run_id: str, job_name: str) -> Mapping[str, EarlierChild]:
        runs = self.instance.get_runs(
            dg.RunsFilter(job_name=job_name, tags={ROOT_PARENT_RUN_TAG: root_run_id})
        )
        return pick_earlier_children(
            (r.tags.get(CHILD_KEY_TAG, ""), EarlierChild(r.run_id, r.status)) for r in runs
        )


def pick_earlier_children(found: Iterable[tuple[str, EarlierChild]]) -> dict[str, EarlierChild]:
    """Per key the run to reuse (a success) or to wait for (unfinished); failures are dropped."""
    picked: dict[str, EarlierChild] = {}
    for key, child in found:
        if not key or child.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            continue
        current = picked.get(key)
        if current is None or (
            child.status == dg.DagsterRunStatus.SUCCESS
            and current.status != dg.DagsterRunStatus.SUCCESS
        ):
            picked[key] = child
    return picked


class ChildRunsResource(dg.ConfigurableResource):
    """Where parents submit their children (the webserver's GraphQL) and how long they wait."""

    webserver_url: str = Field(
        default_factory=lambda: os.environ.get(WEBSERVER_URL_ENV) or DEFAULT_WEBSERVER_URL,
        description=f"Internal base URL of the Dagster webserver whose GraphQL API takes child "
        f"runs (${WEBSERVER_URL_ENV}, default {DEFAULT_WEBSERVER_URL}); not DAGSTER_UI_URL, "
        "the public link in notifications.",
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between two status polls of the children."
    )
    wait_timeout_seconds: float = Field(
        default=6 * 3600,
        gt=0,
        description="Seconds the parent waits for all its children before failing, naming the "
        "unfinished ones (they keep running).",
    )
    request_timeout_seconds: int = Field(
        default=60, ge=1, le=600, description="Timeout of one GraphQL request."
    )

    def client(self) -> DagsterGraphQLClient:
        """The GraphQL client; ``ChildRunsConfigError`` first when the URL is unusable."""
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient(
            **webserver_client_args(self.webserver_url), timeout=self.request_timeout_seconds
        )

    def gateway(self, context: dg.OpExecutionContext) -> EngineChildRuns:
        origin = context.run.remote_job_origin  # None under execute_in_process
        return EngineChildRuns(
            client=self.client(),
            instance=context.instance,
            location=origin.location_name if origin else None,
            repository=origin.repository_origin.repository_name if origin else None,
        )


@dataclass
class _Waiting:
    """The parent's book-keeping while it waits: what is pending, in flight and done."""

    pending: list[ChildSpec]
    in_flight: dict[str, str] = field(default_factory=dict)  # key -> run id
    done: dict[str, ChildResult] = field(default_factory=dict)
    poll_errors: int = 0


def wait_for_children(
    gateway: ChildRunGateway,
    job_name: str,
    children: Sequence[ChildSpec],
    *,
    tags: Mapping[str, str],
    root_run_id: str,
    max_parallel: int,
    poll_interval_seconds: float,
    wait_timeout_seconds: float,
    log: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ChildResult]:
    """Submit every child (at most ``max_parallel`` unfinished at once), wait, return results.

    Children of ``root_run_id`` that already succeeded are reused and unfinished ones waited for
    (see the module docstring). Raises ``dg.Failure`` naming the unfinished children when
    ``wait_timeout_seconds`` pass, and when the webserver stays unreachable.
    """
    warn = warn or log
    deadline = clock() + wait_timeout_seconds
    earlier = gateway.earlier_children(root_run_id, job_name)
    state = _Waiting(pending=[])
    progress = Progress(len(children), log, f"child runs of {job_name}")
    for child in children:
        found = earlier.get(child.key)
        if found is None:
            state.pending.append(child)
        elif found.status == dg.DagsterRunStatus.SUCCESS:
            state.done[child.key] = ChildResult(
                child.key, found.run_id, True, status=found.status.value, reused=True
            )
            log(f"child {child.key} (run {found.run_id}) already succeeded: reused, not rerun")
            progress.tick()
        else:
            state.in_flight[child.key] = found.run_id
            log(f"child {child.key} (run {found.run_id}) is still {found.status.value}: waiting")
    while state.pending or state.in_flight:
        _submit_up_to(gateway, job_name, state, tags, max_parallel, log)
        _poll(gateway, state, log, warn, progress)
        if not state.pending and not state.in_flight:
            break
        if clock() >= deadline:
            raise _timeout(job_name, state, wait_timeout_seconds)
        sleep(poll_interval_seconds)
    return sorted(state.done.values(), key=lambda r: r.key)


def _submit_up_to(
    gateway: ChildRunGateway,
    job_name: str,
    state: _Waiting,
    tags: Mapping[str, str],
    max_parallel: int,
    log: Callable[[str], None],
) -> None:
    from dagster_graphql import DagsterGraphQLClientError

    while state.pending and len(state.in_flight) < max(1, max_parallel):
        child = state.pending.pop(0)
        try:
            run_id = gateway.submit(job_name, child.run_config, {**tags, CHILD_KEY_TAG: child.key})
        except DagsterGraphQLClientError as exc:
            raise dg.Failure(
                description=f"could not submit child {child.key} of {job_name} to the webserver "
                f"(check {WEBSERVER_URL_ENV}): {str(exc).strip()[:300]}. Children already "
                "submitted keep running; a re-execution waits for them instead of resubmitting.",
            ) from exc
        state.in_flight[child.key] = run_id
        log(f"child {child.key} submitted as run {run_id}")


def _poll(
    gateway: ChildRunGateway,
    state: _Waiting,
    log: Callable[[str], None],
    warn: Callable[[str], None],
    progress: Progress,
) -> None:
    from dagster_graphql import DagsterGraphQLClientError

    for key, run_id in list(state.in_flight.items()):
        try:
            status = gateway.status(run_id)
        except DagsterGraphQLClientError as exc:
            state.poll_errors += 1
            warn(f"status of child {key} (run {run_id}) unavailable: {str(exc).strip()[:200]}")
            if state.poll_errors >= MAX_POLL_ERRORS:
                raise dg.Failure(
                    description=f"the webserver did not answer {MAX_POLL_ERRORS} status queries "
                    f"in a row (check {WEBSERVER_URL_ENV}); children still unfinished: "
                    + _unfinished(state),
                    allow_retries=True,
                ) from exc
            return
        state.poll_errors = 0
        if status not in FINISHED:
            continue
        success = status == dg.DagsterRunStatus.SUCCESS
        error = "" if success else gateway.error(run_id)
        state.done[key] = ChildResult(key, run_id, success, error, status=status.value)
        del state.in_flight[key]
        log(f"child {key} (run {run_id}) ended: {status.value}" + (f" ({error})" if error else ""))
        progress.tick()


def _unfinished(state: _Waiting) -> str:
    return "; ".join(
        [f"{key} (run {run_id})" for key, run_id in sorted(state.in_flight.items())]
        + [f"{child.key} (not submitted)" for child in state.pending]
    )


def _timeout(job_name: str, state: _Waiting, seconds: float) -> dg.Failure:
    return dg.Failure(
        description=f"timed out after {seconds:g}s waiting for "
        f"{len(state.in_flight) + len(state.pending)} child run(s) of {job_name}: "
        f"{_unfinished(state)}. Submitted ones keep running; a re-execution waits for them.",
        metadata={
            "unfinished_children": dg.MetadataValue.json(
                sorted(state.in_flight) + [c.key for c in state.pending]
            ),
            "finished_child_run_ids": dg.MetadataValue.json(
                [r.run_id for r in sorted(state.done.values(), key=lambda r: r.key)]
            ),
        },
        allow_retries=False,
    )


def run_children(
    context: dg.OpExecutionContext,
    child_runs: ChildRunsResource,
    job_name: str,
    children: Sequence[ChildSpec],
    *,
    max_parallel: int = 4,
    tags: Mapping[str, str] | None = None,
) -> list[ChildResult]:
    """Submit every child as a run of the instance, wait for all; their results by key."""
    root = context.run.root_run_id or context.run_id
    try:
        gateway = child_runs.gateway(context)
    except ChildRunsConfigError as exc:  # a setting to fix, not a step to retry
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    return wait_for_children(
        gateway,
        job_name,
        children,
        tags={PARENT_RUN_TAG: context.run_id, ROOT_PARENT_RUN_TAG: root, **(tags or {})},
        root_run_id=root,
        max_parallel=max_parallel,
        poll_interval_seconds=child_runs.poll_interval_seconds,
        wait_timeout_seconds=child_runs.wait_timeout_seconds,
        log=context.log.info,
        warn=context.log.warning,
    )


def _result_text(result: ChildResult) -> str:
    if not result.success:
        return f"FAILED: {result.error}"
    return "success (earlier run)" if result.reused else "success"


def fail_on_failed_children(results: Sequence[ChildResult]) -> dict[str, Any]:
    """Metadata for the parent; raises listing every failed child when there is one."""
    table = "\n".join(
        ["| child | run | result |", "|---|---|---|"]
        + [f"| {r.key} | {r.run_id} | {_result_text(r)} |" for r in results]
    )
    metadata = {
        "children": dg.MetadataValue.md(table),
        "child_run_ids": dg.MetadataValue.json([r.run_id for r in results]),
        "failed_children": dg.MetadataValue.json([r.key for r in results if not r.success]),
        "reused_children": dg.MetadataValue.json([r.key for r in results if r.reused]),
    }
    failed = [r for r in results if not r.success]
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(results)} child run(s) failed: "
            + "; ".join(f"{r.key} (run {r.run_id}): {r.error}" for r in failed),
            metadata=metadata,
            allow_retries=False,  # re-execute the parent from failure: only failed keys rerun
        )
    return metadata
