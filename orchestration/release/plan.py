"""The release plan: what ``release`` would do to one environment, found with reads only.

``terraform plan`` / ``terraform apply PLANFILE`` for this project: ``release_plan`` computes a
:class:`ReleasePlan` (pending migrations with their SQL, applied ones, drift, bootstrap mode,
active orgs, the URLs the clients call, the code version) and a plan id; ``release`` given that id
recomputes the plan before anything changes and refuses, naming what changed, if the id differs.

The id covers what was reviewed: sha256 over the canonical JSON of the environment, both base
URLs, the Supabase project ref (which database), every repo migration (version, name, checksum,
in order) and the applied set at plan time (every tracking row: version and checksum). So a
new or edited file, another environment, URL or database, or a tracking row deleted, added or
changed since the plan (a "0 pending" plan must not apply a file whose row was deleted since)
changes it.

A resumed apply still matches: at apply time the id is accepted iff the applied set now equals
the planned applied set plus the first k planned-pending files (with their checksums) for some
k >= 0. No plan is stored for that: for each k the candidate planned set is the applied set now
minus its k newest rows that are repo files with the file's checksum, kept only if those k are
the first k pending files of that candidate; the candidate id is recomputed and compared. So a
release killed after k files and started again with the same id applies the rest, and anything
else is refused naming what changed.

Left out of the id on purpose:
- the org count and slugs: orgs come and go all day, and the sync is idempotent per org; an id
  covering them would be stale before anyone could review it;
- the code version: it is shown so a reviewer knows which build made the plan, but the files the
  plan lists (with their checksums) are what an apply depends on, and a rebuild of the same
  files (a new image, another checkout) must not invalidate a reviewed plan (the preflight warns
  when the code version differs from the plan run's).

Every value that does not come from this repo (org slugs from the platform API, applied versions
and checksums from the database) is shown through :func:`code`: one escaped ASCII line in a
Markdown code span, so it can neither format the summary (links, images, HTML, emphasis) nor
break a one-line error.

Everything here is a plain function over read-only clients; the ops are thin wiring.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestration.release import migrations as migrations_lib
from orchestration.release.migrations import Migration
from orchestration.release.org_sync import org_name
from orchestration.release.sql_scan import SqlScanError, refused_statements, split_statements
from resources.errors import FinalFailure
from resources.identifiers import display
from resources.platform_api import PlatformApiClient
from resources.supabase import SupabaseSqlClient

CODE_VERSION_ENV = "PLATFORM_OPS_CODE_VERSION"
PACKAGE_NAME = "platform-ops"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
ORG_SAMPLE_SIZE = 5
PLAN_ID_RE = re.compile(r"[0-9a-f]{64}")
# Every statement the plan sends (reads only); the tests allow exactly these.
PLAN_QUERIES = (migrations_lib.TRACKING_PRESENT_SQL, migrations_lib.READ_APPLIED_SQL)
# Run tag of a release_plan run: how `release` finds the reviewed plan to say what changed.
PLAN_ID_TAG = "platform/release-plan-id"
BOOTSTRAP_NOTE = (
    "POST /admin/bootstrap in smart mode: a fresh install creates the schema, an existing one "
    "gets missing tables and columns (never destructive). The API has no dry run, so the plan "
    "cannot say which tables or columns it will add."
)


class PlanRefused(FinalFailure):
    """An apply whose plan is missing, blocked or no longer the plan reviewed."""


def plan_required_on_prod(job_name: str) -> PlanRefused:
    """The one refusal of a prod run without a plan id: the preflight's and apply_migrations'
    (which checks again itself, so no step selection can skip the requirement)."""
    return PlanRefused(
        f"Job {job_name} on prod applies only a reviewed plan: run release_plan for prod first, "
        "review it, then paste the YAML it shows (it sets ops.release_preflight.config.plan_id) "
        "into this job's launchpad. Nothing was sent."
    )


def span(text: str) -> str:
    """``text`` (one line already) as a Markdown code span it cannot close: the delimiter is
    longer than any backtick run inside, padded when the text starts or ends with a backtick."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    tick = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{tick}{pad}{text}{pad}{tick}"


def code(value: object) -> str:
    """An untrusted value shown as text: ``display()`` (one escaped ASCII line, so a newline
    cannot break a one-line error) inside a code span (so Markdown renders no link or HTML)."""
    return span(display(value))


@dataclass(frozen=True)
class PlanTarget:
    """What the plan id covers: the state an apply of this plan leads to."""

    environment: str
    api_url: str
    supabase_api_url: str
    project_ref: str  # the Supabase project: which database the migrations go to
    migrations: tuple[tuple[str, str, str], ...]  # (version, name, sha256) in version order
    applied: tuple[tuple[str, str], ...]  # every tracking row (version, checksum), by version

    @property
    def unknown_applied(self) -> tuple[str, ...]:
        """Applied versions this repo has no file for."""
        known = {v for v, _n, _c in self.migrations}
        return tuple(v for v, _c in self.applied if v not in known)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "api_url": self.api_url,
            "supabase_api_url": self.supabase_api_url,
            "project_ref": self.project_ref,
            "migrations": [list(m) for m in self.migrations],
            "applied": [list(a) for a in self.applied],
        }

    @classmethod
    def from_dict(cls, data: object) -> PlanTarget | None:
        """Back from a plan run's metadata; None for anything of another shape."""
        if not isinstance(data, Mapping):
            return None
        try:
            return cls(
                environment=str(data["environment"]),
                api_url=str(data["api_url"]),
                supabase_api_url=str(data["supabase_api_url"]),
                project_ref=str(data["project_ref"]),
                migrations=tuple(
                    (str(v), str(n), str(c))
                    for v, n, c in data["migrations"]  # type: ignore[misc]
                ),
                applied=tuple((str(v), str(c)) for v, c in data["applied"]),  # type: ignore[misc]
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def plan_id(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PendingMigration:
    version: str
    name: str
    filename: str
    checksum: str
    statements: int | None  # None: the scan could not split it (the plan is blocked)
    sql: str


@dataclass(frozen=True)
class ReleasePlan:
    target: PlanTarget
    pending: tuple[PendingMigration, ...]
    applied: tuple[str, ...]  # filenames of repo migrations already applied
    drift: tuple[str, ...]  # one line per applied file whose text changed
    gaps: tuple[str, ...]  # one line per pending file older than an applied version
    not_atomic: tuple[str, ...]  # pending-file statements the apply would refuse
    org_count: int
    org_sample: tuple[str, ...]
    code_version: str

    @property
    def plan_id(self) -> str:
        return self.target.plan_id

    @property
    def blocked_reasons(self) -> list[str]:
        reasons: list[str] = []
        if self.drift:
            reasons.append(
                "checksum drift (applied migrations were edited; restore the applied text and "
                "put the change in a new migration): " + "; ".join(self.drift)
            )
        if self.gaps:
            reasons.append(
                "gap (pending migrations older than an applied one; give them versions after "
                "the newest applied): " + "; ".join(self.gaps)
            )
        if self.not_atomic:
            reasons.append(
                "migrations that cannot apply atomically (see docs/runbook.md, release): "
                + "; ".join(self.not_atomic)
            )
        return reasons

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_reasons)


def _statement_count(sql: str) -> int | None:
    try:
        return len(split_statements(sql))
    except SqlScanError:
        return None


def _not_atomic(migration: Migration) -> list[str]:
    try:
        refused = refused_statements(migration.sql)
    except SqlScanError as exc:
        return [f"{migration.filename} line {exc.line}: {exc.what}"]
    return [f"{migration.filename} line {r.line}: {r.text} ({r.why})" for r in refused]


def build_plan(
    *,
    environment: str,
    api_url: str,
    supabase_api_url: str,
    project_ref: str,
    migrations: Sequence[Migration],
    applied: Mapping[str, str],
    orgs: Sequence[str],
    code_version: str,
) -> ReleasePlan:
    """The plan from what was read: no I/O, so every rule here is tested without a server."""
    drift = tuple(
        f"{m.filename} (applied {code(applied[m.version][:12])}, file now {m.checksum[:12]})"
        for m in migrations
        if m.version in applied and applied[m.version] != m.checksum
    )
    todo = [m for m in migrations if m.version not in applied]
    newest = max(applied, default=None)
    gaps = tuple(
        f"{m.filename} is pending but version {code(newest)} is applied"
        for m in todo
        if newest is not None and m.version < newest
    )
    return ReleasePlan(
        target=PlanTarget(
            environment=environment,
            api_url=api_url,
            supabase_api_url=supabase_api_url,
            project_ref=project_ref,
            migrations=tuple((m.version, m.name, m.checksum) for m in migrations),
            applied=tuple(sorted(applied.items())),
        ),
        pending=tuple(
            PendingMigration(
                m.version, m.name, m.filename, m.checksum, _statement_count(m.sql), m.sql
            )
            for m in todo
        ),
        applied=tuple(m.filename for m in migrations if m.version in applied),
        drift=drift,
        gaps=gaps,
        not_atomic=tuple(line for m in todo for line in _not_atomic(m)),
        org_count=len(orgs),
        org_sample=tuple(span(org_name(o)) for o in orgs[:ORG_SAMPLE_SIZE]),
        code_version=code_version,
    )


def compute_plan(
    *,
    environment: str,
    api_url: str,
    supabase_api_url: str,
    migrations: Sequence[Migration],
    sql: SupabaseSqlClient,
    platform: PlatformApiClient | None,
    code_version: str,
) -> ReleasePlan:
    """Read what is applied (SELECTs only) and, given ``platform``, list the active orgs (GETs),
    then build the plan. ``platform`` None skips the org listing (``release`` verifying an id:
    orgs are not in the id). The project ref is the one ``sql`` sends its queries to."""
    applied = migrations_lib.read_applied_readonly(sql)
    orgs = list(platform.iter_orgs(status="active")) if platform is not None else []
    return build_plan(
        environment=environment,
        api_url=api_url,
        supabase_api_url=supabase_api_url,
        project_ref=sql.project_ref,
        migrations=migrations,
        applied=applied,
        orgs=orgs,
        code_version=code_version,
    )


def code_version(env: Mapping[str, str] | None = None, root: Path = PACKAGE_ROOT) -> str:
    """Which build made the plan: ``PLATFORM_OPS_CODE_VERSION`` (set at image build), else the
    git commit of a checkout (``+dirty`` with uncommitted changes), else the package version."""
    env = os.environ if env is None else env
    given = (env.get(CODE_VERSION_ENV) or "").strip()
    if given:
        # Shown in the UI and Markdown: anything but a plain version string is masked.
        return re.sub(r"[^A-Za-z0-9_.+:/@-]", "?", given)[:100]
    if (root / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "diff", "--quiet", "HEAD"],
                capture_output=True,
                timeout=10,
            ).returncode
            return f"git {head}" + (" +dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return f"{PACKAGE_NAME} {metadata.version(PACKAGE_NAME)}"
    except metadata.PackageNotFoundError:
        return "unknown"


def check_plan_id(value: str) -> str:
    """The id as given, stripped and lower-cased (a pasted id in upper case or with spaces is
    the same id); refused (one line, how to fix) unless it looks like one."""
    text = value.strip().lower()
    if not PLAN_ID_RE.fullmatch(text):
        raise PlanRefused(
            f"ops.release_preflight.config.plan_id {display(value, 80)} is not a plan id (64 "
            "lowercase hex characters): copy it from the release_plan run's metadata. Nothing "
            "was sent."
        )
    return text


def planned_targets(now: PlanTarget) -> Iterator[tuple[int, PlanTarget]]:
    """Every target a plan could have had that leads to ``now`` by applying its first k pending
    files (k = 0, 1, ...): the applied set now minus its k newest rows that are repo files with
    the file's checksum, kept only when those k are the first k pending files of that set."""
    checksums = {v: c for v, _n, c in now.migrations}
    ours = sorted((v for v, c in now.applied if checksums.get(v) == c), reverse=True)
    for k in range(len(ours) + 1):
        since = sorted(ours[:k])
        before = tuple(a for a in now.applied if a[0] not in since)
        before_versions = {v for v, _c in before}
        pending = [v for v, _n, _c in now.migrations if v not in before_versions]
        if pending[:k] == since:
            yield k, replace(now, applied=before)


def match_plan(plan: ReleasePlan, plan_id: str) -> int | None:
    """How many of the planned-pending files were applied since the plan whose id is
    ``plan_id`` (0: none; a resumed apply: some), or None when no such plan leads here."""
    for k, target in planned_targets(plan.target):
        if target.plan_id == plan_id:
            return k
    return None


def _versions(versions: Sequence[str]) -> str:
    return ", ".join(code(v) for v in versions) or "none"


def describe_changes(reviewed: PlanTarget | None, now: PlanTarget) -> list[str]:
    """What differs between the reviewed plan's target and today's, one line per change; values
    read from the database are shown escaped (:func:`code`)."""
    if reviewed is None:
        return [
            "the reviewed plan is not on this Dagster instance, so the changes cannot be "
            f"listed; the plan now covers environment '{now.environment}', Supabase project "
            f"{now.project_ref}, {len(now.migrations)} migration file(s) and "
            f"{len(now.applied)} applied"
        ]
    changes: list[str] = []
    if reviewed.environment != now.environment:
        changes.append(f"environment {reviewed.environment} -> {now.environment}")
    if reviewed.api_url != now.api_url:
        changes.append(f"platform API URL {code(reviewed.api_url)} -> {code(now.api_url)}")
    if reviewed.supabase_api_url != now.supabase_api_url:
        changes.append(
            f"Supabase Management API URL {code(reviewed.supabase_api_url)} -> "
            f"{code(now.supabase_api_url)}"
        )
    if reviewed.project_ref != now.project_ref:
        changes.append(
            f"Supabase project ref {code(reviewed.project_ref)} -> {code(now.project_ref)}"
        )
    before = {v: (n, c) for v, n, c in reviewed.migrations}
    after = {v: (n, c) for v, n, c in now.migrations}
    for version in sorted(after.keys() - before.keys()):
        changes.append(f"file added: {version}_{after[version][0]}.sql")
    for version in sorted(before.keys() - after.keys()):
        changes.append(f"file removed: {version}_{before[version][0]}.sql")
    for version in sorted(before.keys() & after.keys()):
        (old_name, old_sum), (new_name, new_sum) = before[version], after[version]
        if (old_name, old_sum) != (new_name, new_sum):
            changes.append(
                f"file edited: {version}_{new_name}.sql (sha256 {old_sum[:12]} -> {new_sum[:12]})"
            )
    was, now_applied = dict(reviewed.applied), dict(now.applied)
    gone = sorted(was.keys() - now_applied.keys())
    if gone:
        changes.append(
            f"no longer applied (tracking row deleted since the plan): {_versions(gone)}"
        )
    changed = sorted(v for v in was.keys() & now_applied.keys() if was[v] != now_applied[v])
    if changed:
        changes.append(f"applied checksum changed since the plan: {_versions(changed)}")
    added = sorted(now_applied.keys() - was.keys())
    resumed = any(t.applied == reviewed.applied for _k, t in planned_targets(now))
    if added and not resumed:
        changes.append(
            "applied since the plan, not as the plan's next pending files: " + _versions(added)
        )
    return changes or ["the plan's inputs hash differently (nothing named changed)"]


def verify(plan: ReleasePlan, plan_id: str, reviewed: PlanTarget | None) -> int:
    """Refuse unless ``plan`` is where the reviewed plan (``plan_id``) leads, having applied
    its first k pending files (k returned), and is not blocked."""
    applied_since = match_plan(plan, plan_id)
    if applied_since is None:
        raise PlanRefused(
            f"Plan {plan_id[:12]} is not what a release would do now (plan {plan.plan_id[:12]}): "
            + "; ".join(describe_changes(reviewed, plan.target))
            + ". Run release_plan again, review it, and apply the new plan id. Nothing was "
            "changed.",
            plan_id=plan_id,
            current_plan_id=plan.plan_id,
        )
    if plan.blocked:
        raise PlanRefused(
            f"Plan {plan_id[:12]} is blocked: "
            + "; ".join(plan.blocked_reasons)
            + ". Nothing was changed.",
            plan_id=plan_id,
        )
    return applied_since


def fence(text: str, lang: str = "") -> str:
    """A fenced block that ``text`` cannot close (a fence longer than any backtick run in it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def launchpad_yaml(
    plan: ReleasePlan, *, confirm_prod: bool, migrations_dir: str | None = None
) -> str:
    """The run config to paste into the ``release`` launchpad to apply exactly this plan."""
    lines = [
        "resources:",
        "  environment:",
        "    config:",
        f"      name: {plan.target.environment}",
    ]
    # The ref comes from the environment (SUPABASE_PROJECT_REF), not from run config: named
    # here so the person applying sees which database the id was computed for.
    lines.insert(0, f"# Supabase project ref: {plan.target.project_ref} (in the plan id)")
    if plan.target.environment == "prod" or confirm_prod:
        lines.append("      confirm_prod: true")
    lines += ["ops:", "  release_preflight:", "    config:", f"      plan_id: {plan.plan_id}"]
    if migrations_dir is not None:
        # A JSON string is a YAML string: any path quoted safely.
        lines += [
            "  apply_migrations:",
            "    config:",
            f"      migrations_dir: {json.dumps(migrations_dir)}",
        ]
    return "\n".join(lines) + "\n"


def summary_markdown(plan: ReleasePlan) -> str:
    """The plan as the UI shows it: what will be sent, in the order it will be sent."""
    t = plan.target
    out = [f"## Release plan `{plan.plan_id}`", ""]
    if plan.blocked:
        out += ["**BLOCKED** - `release` refuses this plan:", ""]
        out += [f"- {reason}" for reason in plan.blocked_reasons] + [""]
    out += [
        f"- environment: **{t.environment}**",
        f"- platform API: {code(t.api_url)}",
        f"- Supabase Management API: {code(t.supabase_api_url)}",
        f"- Supabase project ref (the database): {code(t.project_ref)}",
        f"- code version: {code(plan.code_version)}",
        "",
        f"### 1. Migrations: {len(plan.pending)} pending, {len(plan.applied)} applied",
        "",
        "Each file is sent as one request wrapped in `BEGIN` / the file / `INSERT` of its "
        "tracking row / `COMMIT`: all of it or none of it.",
        "",
    ]
    if plan.pending:
        out += ["| version | name | sha256 | statements |", "|---|---|---|---|"]
        out += [
            f"| {p.version} | {p.name} | `{p.checksum}` | "
            f"{p.statements if p.statements is not None else 'unreadable'} |"
            for p in plan.pending
        ]
        out.append("")
        for p in plan.pending:
            out += [f"#### {p.filename}", "", fence(p.sql, "sql"), ""]
    else:
        out += ["Nothing pending.", ""]
    if plan.applied:
        out += [f"Applied: {', '.join(plan.applied)}", ""]
    if t.unknown_applied:
        out += [
            "Applied versions this repo has no file for (a newer release ran here?): "
            + _versions(t.unknown_applied),
            "",
        ]
    if plan.drift:
        out += ["Drift:", "", *(f"- {d}" for d in plan.drift), ""]
    out += ["### 2. Bootstrap", "", BOOTSTRAP_NOTE, ""]
    sample = ", ".join(plan.org_sample) or "none"
    rest = plan.org_count - len(plan.org_sample)
    more = f" and {rest} more" if rest > 0 else ""
    out += [
        "### 3. Org sync",
        "",
        f"{plan.org_count} active org(s) would be synced: {sample}{more}. Orgs are not "
        "part of the plan id (they change all the time; each org's sync is idempotent).",
    ]
    return "\n".join(out) + "\n"
