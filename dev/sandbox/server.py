"""The sandbox HTTP server: the platform API and the Supabase query API on one loopback port.

Jobs and tests must run offline yet exercise the real client code paths (auth, retries,
idempotency, pagination, SQL migrations). This server implements PLATFORM_API.md with real state,
and adds test controls (faults, latency, request log) both as Python methods and as
unauthenticated `/_sandbox/*` endpoints, so a sandbox running as a subprocess can be driven too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dev.sandbox.sql_runner import (
    DatabaseUnavailable,
    SqlError,
    SqlRunner,
    make_runner,
    to_jsonable,
)
from dev.sandbox.state import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    ApiError,
    IdempotencyRecord,
    SandboxState,
)

DEFAULT_API_KEY = "sandbox-root-key"
DEFAULT_SUPABASE_TOKEN = "sandbox-supabase-token"
DEFAULT_PROJECT_REF = "sandbox"
CONTROL_PREFIX = "/_sandbox/"


@dataclass
class Fault:
    """An injected failure or slowdown for requests matching method and path.

    `path` is exact, or a prefix when it ends with "*". `times=None` fires forever, else N times.
    `status=None` with `delay_ms` only slows the request down and then handles it normally.
    """

    method: str | None = "*"
    path: str = "*"
    status: int | None = 503
    times: int | None = None
    retry_after: float | None = None
    delay_ms: int = 0
    body: Any = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= int(self.status) <= 599:
            raise ValueError(f"invalid status: {self.status}")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if not self.path.startswith("/") and self.path != "*":
            raise ValueError("path must start with '/' or be '*'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build from a JSON body; unknown fields are an error, not silently ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)

    def matches(self, method: str, path: str) -> bool:
        """Method "*"/None matches any; path "/x/*" matches every path starting with "/x/"."""
        if self.method not in (None, "", "*") and self.method.upper() != method.upper():
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


@dataclass
class Reply:
    """A JSON response to write: status, body and extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method}\n{path}\n{canonical}".encode()).hexdigest()


def _parse_json(raw: bytes) -> Any:
    """Empty body means {}; anything else must be valid JSON (ValueError otherwise)."""
    if not raw.strip():
        return {}
    return json.loads(raw)


def _sql_of(path: str, raw: bytes) -> str | None:
    """The ``query`` of a Management API SQL request, for the request log (no credentials)."""
    if not path.startswith("/v1/"):
        return None
    try:
        body = _parse_json(raw)
    except (ValueError, RecursionError):
        return None
    sql = body.get("query") if isinstance(body, dict) else None
    return sql if isinstance(sql, str) else None


def _loopback_host(host: str) -> str:
    """The sandbox must never listen beyond this machine: refuse non-loopback addresses."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"host must be a loopback IPv4 address, got {host!r}") from exc
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"host must be a loopback IPv4 address, got {host!r}")
    return host


# Platform routes: (method, pattern, operation name). Bodies are JSON objects.
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/admin/bootstrap"), "bootstrap"),
    ("GET", re.compile(r"/admin/orgs"), "list_orgs"),
    ("POST", re.compile(r"/admin/orgs/(?P<slug>[^/]+)/sync"), "sync_org"),
    ("POST", re.compile(r"/admin/quota/reset-daily"), "reset_daily"),
    ("POST", re.compile(r"/admin/quota/cleanup-stale"), "cleanup_stale"),
    ("POST", re.compile(r"/admin/quota/reset-monthly"), "reset_monthly"),
    ("POST", re.compile(r"/admin/alerts/process-all"), "process_alerts"),
]


def _operation(method: str, path: str) -> str | None:
    """The platform route's operation name for ``method path``; None for any other request."""
    for route_method, pattern, op in _ROUTES:
        if route_method == method and pattern.fullmatch(path):
            return op
    return None


_SUPABASE_QUERY = re.compile(r"/v1/projects/(?P<ref>[^/]+)/database/query")


class SandboxServer:
    """A stateful fake of the platform API and Supabase Management API on 127.0.0.1."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        supabase_token: str = DEFAULT_SUPABASE_TOKEN,
        supabase_project_ref: str = DEFAULT_PROJECT_REF,
        supabase_db_url: str | None = None,
        state_path: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
    ) -> None:
        self.api_key = api_key
        self.supabase_token = supabase_token
        self.supabase_project_ref = supabase_project_ref
        self.supabase_db_url = supabase_db_url
        self.host = _loopback_host(host)
        self.port = port
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if state_path is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="sandbox-")
            state_path = Path(self._tempdir.name) / "state.sqlite3"
        self.state_path = Path(state_path)
        self.supabase_sqlite_path = self.state_path.with_name(
            self.state_path.stem + "-supabase.sqlite3"
        )
        self._state = SandboxState(self.state_path)
        self._sql: SqlRunner = make_runner(supabase_db_url, self.supabase_sqlite_path)
        self._latency_ms = latency_ms
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._requests_lock = threading.Lock()
        # Platform requests being answered now, and the most at once, per operation (sync_org…):
        # how a test sees a client's concurrency bound from the server's side.
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self._before_answer: Callable[[str, int], None] | None = None
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._ops: dict[str, Callable[[dict[str, str], dict[str, Any], dict[str, str]], Any]] = {
            "bootstrap": lambda _p, body, _q: self._state.bootstrap(body.get("mode")),
            "list_orgs": lambda _p, _b, query: self._list_orgs(query),
            "sync_org": lambda params, _b, _q: self._state.sync_org(params["slug"]),
            "reset_daily": lambda _p, body, _q: self._state.reset_daily(body.get("date")),
            "cleanup_stale": lambda _p, _b, _q: self._state.cleanup_stale(),
            "reset_monthly": lambda _p, body, _q: self._state.reset_monthly(body.get("month")),
            "process_alerts": lambda _p, body, _q: self._state.process_alerts(body.get("date")),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SandboxServer:
        """Bind and serve in a daemon thread; returns self so `srv = SandboxServer().start()`."""
        if self._httpd is not None:
            raise RuntimeError("sandbox already started")
        self._httpd = _HttpServer((self.host, self.port), _Handler, self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections; state stays readable."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop, close the state file and remove the temporary state directory, if any."""
        self.stop()
        self._state.close()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Root URL of both APIs (set CA_API_URL and SUPABASE_API_URL to it)."""
        if self._httpd is None:
            raise RuntimeError("sandbox not started")
        return f"http://{self.host}:{self.port}"

    # -- test controls --------------------------------------------------------------------------

    def seed_orgs(self, n: int, prefix: str = "org", status: str = "active") -> list[str]:
        """Create prefix-0001..prefix-n (existing ones untouched); returns the slugs."""
        return self._state.seed_orgs(n, prefix=prefix, status=status)

    def add_org(self, slug: str, status: str = "active", *, any_slug: bool = False) -> None:
        """Create one org, or set the status of an existing one (``any_slug``: unchecked)."""
        self._state.add_org(slug, status=status, any_slug=any_slug)

    def add_stale_counters(self, n: int) -> list[str]:
        """Add n stuck quota counters for cleanup-stale to fix."""
        return self._state.add_stale_counters(n)

    def add_schema_column(self, table: str, column: str) -> None:
        """Evolve the expected schema; the next bootstrap reports it in columns_added."""
        self._state.add_schema_column(table, column)

    def add_fault(self, fault: Fault) -> None:
        """Inject a fault (a copy is kept, so the caller's object is never mutated)."""
        if fault.times == 0:
            return
        with self._faults_lock:
            self._faults.append(dataclasses.replace(fault))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Active faults with their remaining `times` (copies)."""
        with self._faults_lock:
            return [dataclasses.replace(f) for f in self._faults]

    def set_latency(self, ms: int) -> None:
        """Every API request sleeps `ms` before answering (control endpoints excepted)."""
        if ms < 0:
            raise ValueError("latency must be >= 0")
        self._latency_ms = ms

    def set_before_answer(self, hook: Callable[[str, int], None] | None) -> None:
        """Call ``hook(operation, in_flight)`` in each platform request's thread while it counts
        as in flight, before latency and faults (None: no hook). A test holds answers in it
        (e.g. until N are in flight) so a client's concurrency bound is reached on any machine,
        and :meth:`max_in_flight` can be asserted exactly instead of within a range."""
        self._before_answer = hook

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded API requests (copies). Credentials are never recorded, only `authorized`."""
        with self._requests_lock:
            return [dict(r, query=dict(r["query"])) for r in self._requests]

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    def max_in_flight(self, operation: str) -> int:
        """The most ``operation`` requests (a platform route's name: ``sync_org``,
        ``list_orgs``…) the sandbox was answering at once, latency included, since it started."""
        with self._requests_lock:
            return self._max_in_flight.get(operation, 0)

    def state(self) -> dict[str, Any]:
        """Snapshot of bootstrap, orgs, quota, alerts and effects for assertions."""
        return self._state.snapshot()

    # -- request handling -----------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], raw: bytes) -> Reply:
        """Answer one request: controls, else latency → fault → real handler, then record."""
        split = urlsplit(target)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, raw)
        operation = _operation(method, path)
        if operation is None:
            return self._answer(method, path, query, headers, raw)
        with self._requests_lock:
            now = self._in_flight[operation] = self._in_flight.get(operation, 0) + 1
            self._max_in_flight[operation] = max(self._max_in_flight.get(operation, 0), now)
        try:
            if (hook := self._before_answer) is not None:
                hook(operation, now)
            return self._answer(method, path, query, headers, raw)
        finally:
            with self._requests_lock:
                self._in_flight[operation] -= 1

    def _answer(
        self, method: str, path: str, query: dict[str, str], headers: Mapping[str, str], raw: bytes
    ) -> Reply:
        """Latency → fault → real handler, then record."""
        if self._latency_ms > 0:
            time.sleep(self._latency_ms / 1000)
        authorized = self._authorized(path, headers)
        try:
            reply = self._fire_fault(method, path)
            if reply is None:
                reply = self._dispatch(method, path, query, headers, raw, authorized)
        except Exception as exc:  # a sandbox bug must answer 500, not hang the client
            reply = Reply(500, {"detail": f"internal sandbox error: {exc!r}"})
        self._record(
            method,
            path,
            query,
            reply.status,
            headers.get("Idempotency-Key"),
            authorized,
            headers.get("traceparent"),
            _sql_of(path, raw),
            replayed=reply.headers.get("Idempotent-Replayed") == "true",
        )
        return reply

    def _authorized(self, path: str, headers: Mapping[str, str]) -> bool:
        if path.startswith("/v1/"):
            given = headers.get("Authorization") or ""
            scheme, _, token = given.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self.supabase_token.encode()
            )
        key = headers.get("X-CA-Root-Key") or ""
        return hmac.compare_digest(key.encode(), self.api_key.encode())

    def _record(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        idempotency_key: str | None,
        authorized: bool,
        traceparent: str | None = None,
        sql: str | None = None,
        *,
        replayed: bool = False,
    ) -> None:
        entry = {
            # The SQL text of a Management API query (None elsewhere): tests check that a
            # read-only job sent reads only.
            "sql": sql,
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "idempotency_key": idempotency_key,
            "authorized": authorized,
            "traceparent": traceparent,  # W3C trace context, when the client sends one
            # Answered from the idempotency store (a key seen before): nothing was applied.
            "replayed": replayed,
            "time": time.time(),
        }
        with self._requests_lock:
            self._requests.append(entry)

    def _fire_fault(self, method: str, path: str) -> Reply | None:
        fired: Fault | None = None
        with self._faults_lock:
            for i, fault in enumerate(self._faults):
                if fault.matches(method, path):
                    fired = dataclasses.replace(fault)
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            del self._faults[i]
                    break
        if fired is None:
            return None
        if fired.delay_ms:
            time.sleep(fired.delay_ms / 1000)
        if fired.status is None:
            return None
        headers: dict[str, str] = {}
        if fired.retry_after is not None:
            ra = fired.retry_after
            headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        body = (
            fired.body if fired.body is not None else {"detail": f"injected fault {fired.status}"}
        )
        return Reply(int(fired.status), body, headers)

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Mapping[str, str],
        raw: bytes,
        authorized: bool,
    ) -> Reply:
        if path.startswith("/v1/"):
            return self._supabase(method, path, raw, authorized)
        for route_method, pattern, op in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method != route_method:
                return Reply(405, {"detail": "method not allowed"})
            if not authorized:
                return Reply(401, {"detail": "invalid or missing X-CA-Root-Key"})
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            return self._platform(method, path, op, params, query, headers, raw)
        return Reply(404, {"detail": "not found"})

    def _platform(
        self,
        method: str,
        path: str,
        op: str,
        params: dict[str, str],
        query: dict[str, str],
        headers: Mapping[str, str],
        raw: bytes,
    ) -> Reply:
        handler = self._ops[op]
        try:
            if method != "POST":
                return Reply(200, handler(params, {}, query))
            key = headers.get("Idempotency-Key")
            if not key:
                return Reply(400, {"detail": "Idempotency-Key header required"})
            try:
                body = _parse_json(raw)
            except ValueError:
                return Reply(400, {"detail": "invalid JSON body"})
            if not isinstance(body, dict):
                return Reply(400, {"detail": "JSON body must be an object"})
            return self._idempotent(key, method, path, body, lambda: handler(params, body, query))
        except ApiError as exc:
            return Reply(exc.status, {"detail": exc.detail})

    def _idempotent(
        self, key: str, method: str, path: str, body: dict[str, Any], run: Callable[[], Any]
    ) -> Reply:
        """Apply at most once per key: the effect and its record commit in one transaction."""
        fingerprint = _fingerprint(method, path, body)
        with self._state.transaction():
            stored = self._state.get_idempotency(key)
            if stored is not None:
                if (stored.method, stored.path, stored.fingerprint) != (method, path, fingerprint):
                    return Reply(422, {"detail": "Idempotency-Key reused with a different request"})
                return Reply(stored.status, stored.body, {"Idempotent-Replayed": "true"})
            result = run()
            self._state.put_idempotency(
                key, IdempotencyRecord(method, path, fingerprint, 200, result)
            )
        return Reply(200, result)

    def _list_orgs(self, query: dict[str, str]) -> dict[str, Any]:
        raw_limit = query.get("limit", str(DEFAULT_PAGE_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(400, "limit must be an integer") from None
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ApiError(400, f"limit must be between 1 and {MAX_PAGE_LIMIT}")
        orgs, next_cursor = self._state.list_orgs(
            query.get("status") or None, query.get("cursor") or None, limit
        )
        return {"orgs": orgs, "next_cursor": next_cursor}

    def _supabase(self, method: str, path: str, raw: bytes, authorized: bool) -> Reply:
        match = _SUPABASE_QUERY.fullmatch(path)
        if match is None:
            return Reply(404, {"message": "not found"})
        if method != "POST":
            return Reply(405, {"message": "method not allowed"})
        if not authorized:
            return Reply(401, {"message": "Unauthorized: invalid or missing bearer token"})
        if unquote(match["ref"]) != self.supabase_project_ref:
            return Reply(404, {"message": f"project not found: {match['ref']}"})
        try:
            body = _parse_json(raw)
        except ValueError:
            return Reply(400, {"message": "invalid JSON body"})
        sql = body.get("query") if isinstance(body, dict) else None
        if not isinstance(sql, str):
            return Reply(400, {"message": 'body must be {"query": "<SQL>"}'})
        try:
            return Reply(201, self._sql.run(sql))
        except SqlError as exc:
            return Reply(400, {"message": str(exc)})
        except DatabaseUnavailable as exc:
            return Reply(503, {"message": f"database unavailable: {exc}"})

    # -- control endpoints ----------------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> Reply:
        """Unauthenticated test controls; they bypass latency, faults and the request log."""
        name = path[len(CONTROL_PREFIX) :]
        try:
            body = _parse_json(raw) if method in ("POST", "PUT") else {}
            if not isinstance(body, dict):
                raise ValueError("JSON body must be an object")
            return self._control_op(method, name, body)
        except (ValueError, TypeError, KeyError) as exc:
            return Reply(400, {"detail": f"bad control request: {exc}"})

    def _control_op(self, method: str, name: str, body: dict[str, Any]) -> Reply:
        ok = {"status": "ok"}
        match method, name:
            case "GET", "health":
                return Reply(200, {"status": "ok", "base_url": self.base_url})
            case "GET", "faults":
                return Reply(200, [dataclasses.asdict(f) for f in self.faults])
            case "POST", "faults":
                self.add_fault(Fault.from_dict(body))
                return Reply(201, ok)
            case "DELETE", "faults":
                self.clear_faults()
                return Reply(200, ok)
            case "GET", "requests":
                return Reply(200, self.requests)
            case "DELETE", "requests":
                self.clear_requests()
                return Reply(200, ok)
            case "POST", "seed":
                status = str(body.get("status", "active"))
                slugs: list[str] = []
                if "orgs" in body:
                    slugs += self.seed_orgs(
                        int(body["orgs"]), prefix=str(body.get("prefix", "org")), status=status
                    )
                for slug in body.get("org_slugs", []):
                    self.add_org(str(slug), status=status)
                    slugs.append(str(slug))
                return Reply(200, {"status": "ok", "org_slugs": slugs})
            case "POST", "latency":
                self.set_latency(int(body["ms"]))
                return Reply(200, ok)
            case "GET", "state":
                return Reply(200, self.state())
            case "POST", "schema":
                self.add_schema_column(str(body["table"]), str(body["column"]))
                return Reply(200, ok)
            case "POST", "stale-counters":
                return Reply(
                    200, {"status": "ok", "names": self.add_stale_counters(int(body["n"]))}
                )
        return Reply(404, {"detail": "not found"})


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its sandbox and can drop idle keep-alive connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], handler: type, sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Without this a stopped sandbox would keep answering on pooled client connections."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-request is normal in retry tests; keep stderr quiet for it."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 plumbing only; all behaviour lives in SandboxServer.handle."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms) on every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "PlatformSandbox/1.0"
    timeout = 60  # idle keep-alive connections are closed after this
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr log; srv.requests is the log."""

    def do_GET(self) -> None:  # http.server dispatches on do_<METHOD>
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(Reply(400, {"detail": "malformed request body framing"}))
            return
        reply = self.server.sandbox.handle(self.command, self.path, self.headers, raw)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(to_jsonable(reply.body)).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
