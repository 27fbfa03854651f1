"""What the deploy test asks the webserver: launches (Dagster's public GraphQL client) and reads
of runs, their tags, timings and events (plain GraphQL queries)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from dagster_graphql import DagsterGraphQLClient

from tests.support.wait import wait_until

LOCATION = "platform_ops"
REPOSITORY = "__repository__"

RUN_FIELDS = """
    runId jobName status tags { key value }
    stats { ... on RunStatsSnapshot { enqueuedTime launchTime startTime endTime } }
"""
RUN_QUERY = f"""
query Run($runId: ID!) {{
  runOrError(runId: $runId) {{
    __typename ... on Run {{ {RUN_FIELDS} }} ... on PythonError {{ message }}
  }}
}}"""
RUNS_QUERY = f"""
query Runs($filter: RunsFilter) {{
  runsOrError(filter: $filter) {{
    __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} ... on PythonError {{ message }}
  }}
}}"""
LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId) {
    __typename ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""
LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name
    locationOrLoadError { __typename } } } } }"""

INSTIGATORS_QUERY = """
query Instigators($repo: RepositorySelector!) {
  repositoryOrError(repositorySelector: $repo) {
    __typename ... on Repository {
      schedules { id name scheduleState { status } }
      sensors { id name sensorState { status } }
    } ... on PythonError { message }
  }
}"""
STOP_SCHEDULE = "mutation Stop($id: String!) { stopRunningSchedule(id: $id) { __typename } }"
STOP_SENSOR = "mutation Stop($id: String!) { stopSensor(id: $id) { __typename } }"

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
UNFINISHED = ["QUEUED", "NOT_STARTED", "MANAGED", "STARTING", "STARTED", "CANCELING"]
IN_PROGRESS = {"STARTING", "STARTED", "CANCELING"}


@dataclass(frozen=True)
class Run:
    run_id: str
    job_name: str
    status: str
    tags: dict[str, str]
    enqueued: float | None
    launched: float | None
    started: float | None
    ended: float | None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Run:
        stats = data.get("stats") or {}
        return cls(
            run_id=data["runId"],
            job_name=data["jobName"],
            status=data["status"],
            tags={t["key"]: t["value"] for t in data["tags"]},
            enqueued=stats.get("enqueuedTime"),
            launched=stats.get("launchTime"),
            started=stats.get("startTime"),
            ended=stats.get("endTime"),
        )


class Webserver:
    """The stack's dagster-webserver at 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"
        self.port = port
        self._client: DagsterGraphQLClient | None = None

    def query(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        try:
            entries = self.query(LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, KeyError):
            return False
        return any(
            e["name"] == LOCATION and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def launch(self, job: str, run_config: Mapping[str, Any], tags: dict | None = None) -> str:
        """``launchPipelineExecution`` through Dagster's client; the queued run's id."""
        if self._client is None:
            self._client = DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=60)
        return self._client.submit_job_execution(
            job, repository_location_name=LOCATION, repository_name=REPOSITORY,
            run_config=dict(run_config), tags=tags,
        )  # fmt: skip

    def run(self, run_id: str) -> Run:
        data = self.query(RUN_QUERY, runId=run_id)["runOrError"]
        assert data["__typename"] == "Run", data
        return Run.of(data)

    def runs(self, **filter_: Any) -> list[Run]:
        data = self.query(RUNS_QUERY, filter=filter_)["runsOrError"]
        assert data["__typename"] == "Runs", data
        return [Run.of(r) for r in data["results"]]

    def runs_tagged(self, key: str, value: str) -> list[Run]:
        return self.runs(tags=[{"key": key, "value": value}])

    def messages(self, run_id: str) -> list[str]:
        data = self.query(LOGS_QUERY, runId=run_id)["logsForRun"]
        return [e.get("message") or "" for e in data.get("events", [])]

    def unfinished_runs(self) -> list[Run]:
        return self.runs(statuses=UNFINISHED)

    def stop_instigators(self) -> list[str]:
        """Stops every running schedule and sensor of the location (as an operator would before
        taking the stack down, so that the daemon launches nothing more); their names."""
        repo = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
        data = self.query(INSTIGATORS_QUERY, repo=repo)["repositoryOrError"]
        assert data["__typename"] == "Repository", data
        stopped = []
        for kind, state, mutation, field, ok in (
            ("schedules", "scheduleState", STOP_SCHEDULE, "stopRunningSchedule",
             "ScheduleStateResult"),
            ("sensors", "sensorState", STOP_SENSOR, "stopSensor", "StopSensorMutationResult"),
        ):  # fmt: skip
            for item in data[kind]:
                if item[state]["status"] == "RUNNING":
                    result = self.query(mutation, id=item["id"])[field]
                    assert result["__typename"] == ok, (item["name"], result)
                    stopped.append(item["name"])
        return stopped

    def wait_finished(self, run_ids: list[str], timeout: float) -> list[Run]:
        def finished() -> list[Run] | None:
            runs = [self.run(r) for r in run_ids]
            return runs if all(r.status in FINISHED for r in runs) else None

        return wait_until(finished, timeout, f"runs {run_ids} to finish", interval=1.0)
