"""The production stack built and run in containers on this machine, driven only through the
webserver's GraphQL and the daemon (issue #16).

Phases (each timed): the engine (installed and started when missing, stopped after if this test
started it), the debootstrapped base (reused when present), the image (built from the cached base
and inspected: size, history, files, user), the stack (``deploy/docker-compose.yml`` plus
``deploy/docker-compose.test.yml``: host network, loopback ports, this machine's PostgreSQL with a
throwaway database and schema), then the runs, each in a container of its own started by the
``DockerRunLauncher``:
1. ``release`` for ``test`` succeeds; the container id is in its tags and events; the container
   is gone afterwards;
4. two ``release`` runs of one environment submitted together: one waits in the queue (tag limit),
   never both in progress;
3. the trigger sensor and the every-minute schedule, started by the daemon, launch runs that
   succeed in containers;
2. ``org_sync_by_tenant``: each child its own run and container, queued through the coordinator,
   the parent succeeds naming them;
5. teardown: schedules and sensors stopped and the queue drained (through GraphQL), then every
   container, network and volume the stack made is gone; the image built here is removed with the
   build cache (the base stays).
Compose gets the two files as ``compose config`` merges them, minus the published ports of the
host-network services (compose 1.29 refuses both on one service; an override cannot remove them).
The numbers of the issue (image size, build time, launchRun -> RUN_START, peak memory of a run
container) are printed with a ``[deploy]`` prefix.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from dev.local_services import sandbox_env, sandbox_process
from dev.seed import seed_alerts, seed_packages
from resources.notifier import WEBHOOK_URL_ENV
from resources.record_store import make_engine
from tests.deploy import engine as eng
from tests.deploy.graphql import FINISHED, IN_PROGRESS, Run, Webserver
from tests.support.postgres import fresh_database
from tests.support.wait import wait_until
from tests.support.webhook import WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONTAINER_TAG = "docker/container_id"
PARENT_TAG = "platform/parent_run_id"
STACK_LABEL = "platform-ops.e2e"
RELEASE_CONFIG = yaml.safe_load((REPO / "config" / "release-test.yaml").read_text())
SENSOR, SCHEDULE = "escalate_alerts_sensor", "deliver_trigger_notifications_schedule"
RUN_TIMEOUT = 240
# Bounds for waits on the engine and the stack: generous, since they only matter when something is
# wrong. On `vfs` a container's removal deletes its whole copy of the 1 GB image: 60 s was seen
# too short once while two suites loaded the machine.
ENGINE_TIMEOUT = 300


class Phases:
    """Wall time of each phase, printed as it ends and again at the end.

    Printed past pytest's output capture (``capsys.disabled``), so CI's log shows each phase of
    this long test as it happens, not only when it fails.
    """

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.start = self.last = time.monotonic()
        self.times: list[tuple[str, float]] = []
        self.numbers: list[str] = []

    def say(self, text: str) -> None:
        with self.capsys.disabled():
            print(f"\n[deploy] {text}", flush=True)

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self.last))
        self.say(f"phase {name}: {now - self.last:.1f}s (total {now - self.start:.1f}s)")
        self.last = now

    def number(self, text: str) -> None:
        self.numbers.append(text)
        self.say(text)


class MemorySampler:
    """Polls the run containers of this stack and keeps each one's peak memory (cgroup v1's
    ``memory.max_usage_in_bytes`` or v2's ``memory.peak``; else the engine's stats)."""

    def __init__(self, project: str) -> None:
        import docker

        self.client = docker.from_env()
        self.project = project
        self.peaks: dict[str, int] = {}  # run id -> bytes
        self.source = "none"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _peak(self, container) -> int | None:
        cid = container.id
        for path in (
            f"/sys/fs/cgroup/memory/docker/{cid}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/docker/{cid}/memory.peak",
            f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.peak",
        ):
            try:
                value = int(Path(path).read_text())
            except (OSError, ValueError):
                continue
            self.source = "cgroup"
            return value
        try:
            stats = container.stats(stream=False)["memory_stats"]
        except Exception:  # the container ended between list and stats
            return None
        self.source = "engine stats"
        return stats.get("max_usage") or stats.get("usage")

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                found = self.client.containers.list(
                    filters={"label": f"{STACK_LABEL}={self.project}"}
                )
            except Exception:
                continue
            for container in found:
                value = self._peak(container)
                run_id = container.labels.get("dagster/run_id", container.id)
                if value:
                    self.peaks[run_id] = max(value, self.peaks.get(run_id, 0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_stack_files(stack_dir: Path, project: str, code_port: int) -> None:
    """deploy/dagster.yaml with run containers on the host network (and labelled as this stack's),
    and a workspace pointing at the code server's loopback port."""
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]["config"]
    launcher["network"] = "host"
    launcher["container_kwargs"] = {
        **launcher["container_kwargs"],
        "labels": {STACK_LABEL: project},
    }
    stack_dir.mkdir(parents=True)
    (stack_dir / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
    workspace = {
        "load_from": [
            {
                "grpc_server": {
                    "host": "127.0.0.1",
                    "port": code_port,
                    "location_name": "platform_ops",
                }
            }
        ]
    }
    (stack_dir / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    for path in stack_dir.iterdir():
        path.chmod(0o644)  # read by the image's non-root user


def host_network_compose(compose: list[str], env: dict[str, str], out: Path) -> Path:
    """The production file with the test's override as compose merges them, written to ``out``
    without the ``ports`` of services on the host network.

    Compose merges an override's ``ports`` into the base file's (an override can add, never
    remove), and compose 1.29 refuses a published port beside ``network_mode: host`` (newer engines
    discard it with a warning): on the host network the service listens on its loopback port
    directly, so publishing means nothing there. Everything else is compose's own merge."""
    merged = yaml.safe_load(eng.run([*compose, "config"], env=env))
    for service in merged["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    out.write_text(yaml.safe_dump(merged, sort_keys=False))
    return out


def container_gone(container_id: str) -> bool:
    return not eng.docker("ps", "-aq", "--no-trunc", "--filter", f"id={container_id}").strip()


def check_image(tag: str, phases: Phases) -> None:
    """No development code, no tests, no secret, not root: from the history and the files."""
    size = int(eng.docker("image", "inspect", "-f", "{{.Size}}", tag))
    phases.number(f"image size: {size / 1e6:.0f} MB")
    history = eng.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag)
    config_env = eng.docker("image", "inspect", "-f", "{{json .Config.Env}}", tag)
    for secret in ("CA_ROOT_API_KEY", "SUPABASE_ACCESS_TOKEN", "POSTGRES_PASSWORD", "sandbox-"):
        assert secret not in history and secret not in config_env, secret
    for banned in ("dev/", "tests/", "bench/", ".venv"):
        assert f"COPY {banned}" not in history and f" {banned} " not in history, banned
    listing = eng.docker(
        "run", "--rm", "--network", "host", "--entrypoint", "python", tag, "-c",
        "import importlib.util as u, os; print(os.getuid()); print(*sorted(os.listdir('.')));"
        "print(os.path.isdir('orchestration/__pycache__'));"
        "print(*[m for m in ('dev', 'bench') if u.find_spec(m)])",
    ).splitlines()  # fmt: skip
    uid, files, compiled, importable = listing[0], set(listing[1].split()), listing[2], listing[3:]
    assert uid != "0", "the image runs as root"
    assert compiled == "True", "the code is not byte-compiled in the image (every run compiles it)"
    allowed = {"pyproject.toml", "README.md", "orchestration", "resources", "assets", "migrations"}
    assert files - allowed - {"config", "platform_ops.egg-info"} == set(), files
    assert not [line for line in importable if line.strip()], importable


def teardown_left(project: str) -> dict[str, str]:
    """What of the compose project is still there: containers, networks, volumes."""
    found = {}
    for kind in ("ps -a", "network ls", "volume ls"):
        left = eng.docker(
            *kind.split(), "-q", "--filter", f"label=com.docker.compose.project={project}"
        )
        if left.strip():
            found[kind] = left.strip()
    return found


def check_teardown(project: str) -> None:
    left = teardown_left(project)
    assert not left, left
    runs_left = eng.docker("ps", "-aq", "--filter", f"label={STACK_LABEL}={project}")
    assert not runs_left.strip(), f"run containers left: {runs_left}"


@pytest.fixture
def record_store(pg_store_url: str) -> Iterator[str]:
    """The record store (fresh schema on the local server) with due alerts and expired packages."""
    engine = make_engine(pg_store_url)
    seed_alerts(engine, due=3, fresh=1, resolved=1)
    seed_packages(engine, expired=2, active=1)
    engine.dispose()
    yield pg_store_url


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(1500)
def test_stack_runs_every_run_in_its_own_container(pg_url, record_store, tmp_path, capsys):
    phases = Phases(capsys)
    project = f"platform_ops_e2e_{uuid.uuid4().hex[:8]}"
    tag = f"platform-ops:e2e-{uuid.uuid4().hex[:8]}"
    files = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.test.yml"]
    compose = [*eng.compose_command(), "-p", project, *(f"--file={path}" for path in files)]
    with eng.docker_engine(tmp_path / "dockerd.log") as started_engine, ExitStack() as stack:
        phases.done(f"engine ({'started here' if started_engine else 'already running'})")
        # Closed in reverse at the end or on failure: the image and build cache, the sandbox,
        # the database, the stack (and stray run containers), the sampler; the engine after.
        built_base = eng.ensure_base_image(tmp_path)
        phases.done(f"base image ({'debootstrapped' if built_base else 'reused'})")

        stack.callback(eng.remove_built, tag)
        t0 = time.monotonic()
        eng.build_image(REPO, tag)
        phases.number(f"image build from the cached base: {time.monotonic() - t0:.0f}s")
        phases.done("image build")
        check_image(tag, phases)
        phases.done("image checks")

        # The stack: sandbox and webhook receiver on loopback, storage on the local server.
        sandbox_url = stack.enter_context(sandbox_process(tmp_path / "sandbox", seed_orgs=5))
        receiver = stack.enter_context(WebhookReceiver())
        web_port, code_port = free_port(), free_port()
        write_stack_files(tmp_path / "stack", project, code_port)
        env = {
            **os.environ,
            **sandbox_env(sandbox_url),
            "POSTGRES_PASSWORD": "unused-by-the-test",  # the postgres service is not started
            "TEST_DAGSTER_PG_URL": stack.enter_context(fresh_database(pg_url, "dagster_stack")),
            "TEST_RECORD_STORE_URL": record_store,
            WEBHOOK_URL_ENV: receiver.url,
            "WEBSERVER_PORT": str(web_port),
            "CODE_SERVER_PORT": str(code_port),
            "STACK_DIR": str(tmp_path / "stack"),
            "PLATFORM_OPS_IMAGE": tag,
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        }

        merged = host_network_compose(compose, env, tmp_path / "stack" / "docker-compose.yml")
        compose = [*eng.compose_command(), "-p", project, f"--file={merged}"]

        def up(*services: str) -> None:
            eng.run([*compose, "up", "-d", "--no-deps", "--no-build", *services], env=env)

        def down() -> None:
            eng.run([*compose, "down", "-v", "--remove-orphans", "-t", "20"], env=env, check=False)
            # A run launched just before the daemon stopped still ends (and is auto-removed) on
            # its own; one still running after a minute is removed and reported.
            label = f"label={STACK_LABEL}={project}"
            try:
                wait_until(
                    lambda: not eng.docker("ps", "-aq", "--filter", label).strip(),
                    ENGINE_TIMEOUT,
                    f"containers labelled {label} gone",
                    interval=1.0,
                )
            except AssertionError:
                stray = eng.docker("ps", "-aq", "--filter", label).split()
                print(f"[deploy] run containers still running after down, removed: {stray}")
                eng.docker("rm", "-f", *stray, check=False)
            # `down -v` can fail to remove a volume while a container that used it is still
            # being removed (docker-compose 1.29; seen once in CI): an operator runs it again.
            left = teardown_left(project)
            if left:
                print(f"[deploy] left after the first down: {left}; down again")
                eng.run(
                    [*compose, "down", "-v", "--remove-orphans", "-t", "20"], env=env, check=False
                )
            check_teardown(project)

        stack.callback(down)
        sampler = stack.enter_context(MemorySampler(project))
        up("code_location")
        code = f"{project}_code_location_1"

        def code_healthy() -> bool:
            label = f"label=com.docker.compose.project={project}"
            state = eng.docker("ps", "-q", "--filter", label, "--filter", "health=healthy")
            return bool(state.strip())

        wait_until(code_healthy, ENGINE_TIMEOUT, f"code server healthy ({code})", interval=1.0)
        # One at a time: the first to open the fresh database creates Dagster's tables.
        up("webserver")
        web = Webserver(web_port)
        wait_until(
            web.location_loaded, ENGINE_TIMEOUT, "webserver serving the code location", interval=1.0
        )
        up("daemon")
        phases.done("stack up (code server healthy, location loaded, daemon started)")

        # 1. release for test, in a container of its own.
        submitted = time.time()
        release_id = web.launch("release", RELEASE_CONFIG)
        (release,) = web.wait_finished([release_id], RUN_TIMEOUT)
        assert release.status == "SUCCESS", (release, web.messages(release_id)[-20:])
        container = release.tags[CONTAINER_TAG]
        assert any(container in m for m in web.messages(release_id)), "no launch event"
        wait_until(
            lambda: container_gone(container),
            ENGINE_TIMEOUT,
            f"container {container[:12]} removed",
            interval=1.0,
        )
        assert release.tags["platform/environment"] == "test"
        phases.number(
            f"launchRun -> RUN_START (containerised, queued): {release.started - submitted:.1f}s "
            f"(dequeued/launched -> RUN_START {release.started - release.launched:.1f}s, "
            f"RUN_START -> end {release.ended - release.started:.1f}s)"
        )
        phases.done("1. release in its own container")

        # 4. Two releases of one environment together: one waits in the queue, never both run.
        pair = [web.launch("release", RELEASE_CONFIG) for _ in range(2)]
        seen_queued_while_other_runs = False
        deadline = time.monotonic() + 2 * RUN_TIMEOUT
        while time.monotonic() < deadline:
            runs = [web.run(r) for r in pair]
            states = [r.status for r in runs]
            assert not all(s in IN_PROGRESS for s in states), f"both releases in progress: {states}"
            if "QUEUED" in states and any(s in IN_PROGRESS for s in states):
                seen_queued_while_other_runs = True
            if all(s in FINISHED for s in states):
                break
            time.sleep(0.5)
        assert [r.status for r in runs] == ["SUCCESS", "SUCCESS"], runs
        assert seen_queued_while_other_runs, "no release waited in the queue"
        first, second = sorted(runs, key=lambda r: r.launched or 0)
        assert second.launched >= first.ended, (first, second)  # never overlapping
        assert first.tags[CONTAINER_TAG] != second.tags[CONTAINER_TAG]
        phases.done("4. two releases: one queued by the tag limit")

        # 3. The daemon's own launches: the trigger sensor and the every-minute schedule.
        def daemon_runs() -> tuple[list[Run], list[Run]]:
            return (web.runs_tagged("dagster/sensor_name", SENSOR),
                    web.runs_tagged("dagster/schedule_name", SCHEDULE))  # fmt: skip

        def daemon_runs_done() -> bool:
            return all(any(r.status in FINISHED for r in runs) for runs in daemon_runs())

        wait_until(
            daemon_runs_done,
            ENGINE_TIMEOUT,
            "a sensor run and a schedule run finished",
            interval=2.0,
        )
        for runs in daemon_runs():
            for run in (r for r in runs if r.status in FINISHED):
                assert run.status == "SUCCESS", (run, web.messages(run.run_id)[-20:])
                assert run.tags.get(CONTAINER_TAG), run
        phases.done("3. sensor and schedule runs in containers")

        # 2. org_sync_by_tenant: each child a run of the instance, in its own container.
        parent_id = web.launch(
            "org_sync_by_tenant",
            {**RELEASE_CONFIG,
             "ops": {"sync_tenants_as_children": {"config": {"orgs_per_child": 2}}}},
        )  # fmt: skip
        (parent,) = web.wait_finished([parent_id], 2 * RUN_TIMEOUT)
        children = web.runs_tagged(PARENT_TAG, parent_id)
        assert parent.status == "SUCCESS", (parent, web.messages(parent_id)[-20:], children)
        assert len(children) == 3, children  # 5 orgs, 2 per child
        # Each child was launched by the DockerRunLauncher (not run inside the parent's step).
        containers = {parent.tags[CONTAINER_TAG]} | {c.tags.get(CONTAINER_TAG) for c in children}
        assert None not in containers and len(containers) == 4, [c.tags for c in children]
        parent_text = "\n".join(web.messages(parent_id))
        for child in children:
            assert child.status == "SUCCESS" and child.enqueued is not None, child
            assert child.run_id in parent_text, f"parent does not name child {child.run_id}"
        phases.done("2. org_sync_by_tenant children in their own containers")

        peaks = {run_id: peak for run_id, peak in sampler.peaks.items()}
        if release_id in peaks:
            mib = peaks[release_id] / 2**20
            phases.number(f"peak memory of the release run container: {mib:.0f} MiB")
        phases.number(f"memory read from: {sampler.source}")
        if peaks:
            top = max(peaks.values()) / 2**20
            phases.number(f"peak memory over {len(peaks)} run containers: max {top:.0f} MiB")

        # 5. Teardown as an operator would: schedules and sensors off, the queue drained (no run
        # left unfinished, twice in a row: a tick in flight may still submit one), then down
        # (checks nothing of the stack is left), the database, the image. Taking the daemon down
        # in the middle of a launch would leave a created, never started run container behind.
        stopped = web.stop_instigators()
        assert {SENSOR, SCHEDULE} <= set(stopped), stopped

        def drained() -> bool:
            if web.unfinished_runs():
                return False
            time.sleep(3)
            return not web.unfinished_runs()

        wait_until(
            drained,
            RUN_TIMEOUT,
            "every run finished after schedules and sensors stopped",
            interval=1.0,
        )
        stack.close()
        assert not eng.image_exists(tag)
        phases.done("5. teardown")
    phases.say("; ".join(f"{name} {sec:.0f}s" for name, sec in phases.times))
    phases.say("; ".join(phases.numbers))
