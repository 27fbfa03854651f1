"""The operator catalog: commands, environments (with variables) and schedules, as YAML or CLI.

Everything is validated before anything is written, and applied in one transaction: an invalid
cron, an unknown command or environment, or a duplicate name is a ``CatalogError`` listing every
problem, and the database is left exactly as it was.

``sync`` makes the database match a whole catalog (names missing from it are *disabled*, never
deleted: their run history stays); ``merge`` upserts only what is given (the CLI ``set-*``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from orchestration.commands import models as m
from orchestration.commands.cron import InvalidCron, validate_cron
from orchestration.commands.timeutil import utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CatalogError(ValueError):
    """Every validation problem of a catalog, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid catalog:\n" + "\n".join(f"- {p}" for p in problems))


@dataclass
class Variable:
    name: str
    value: str
    secret: bool = False


@dataclass
class EnvironmentSpec:
    name: str
    enabled: bool = True
    variables: list[Variable] = field(default_factory=list)


@dataclass
class CommandSpec:
    name: str
    command: str
    enabled: bool = True
    timeout_seconds: int = 3600
    working_dir: str | None = None
    use_shell: bool = True
    description: str | None = None


@dataclass
class ScheduleSpec:
    name: str
    command: str
    environments: list[str]
    crons: list[str]
    enabled: bool = True


@dataclass
class Catalog:
    commands: list[CommandSpec] = field(default_factory=list)
    environments: list[EnvironmentSpec] = field(default_factory=list)
    schedules: list[ScheduleSpec] = field(default_factory=list)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _parse_variable(env: str, name: str, raw: Any, problems: list[str]) -> Variable | None:
    if not VAR_RE.match(str(name)):
        problems.append(f"environment {env!r}: invalid variable name {name!r}")
        return None
    if isinstance(raw, dict):
        secret = bool(raw.get("secret", False))
        if "from_env" in raw:
            source = str(raw["from_env"])
            if source not in os.environ:
                problems.append(
                    f"environment {env!r}: variable {name} reads ${source}, which is not set"
                )
                return None
            return Variable(str(name), os.environ[source], secret)
        if "value" not in raw:
            problems.append(f"environment {env!r}: variable {name} needs value or from_env")
            return None
        return Variable(str(name), str(raw["value"]), secret)
    if raw is None:
        problems.append(f"environment {env!r}: variable {name} has no value")
        return None
    return Variable(str(name), str(raw), False)


def parse_catalog(data: Any) -> Catalog:
    """A ``Catalog`` from the YAML structure; ``CatalogError`` for anything malformed."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise CatalogError(["the catalog must be a mapping with commands/environments/schedules"])
    unknown = set(data) - {"commands", "environments", "schedules"}
    if unknown:
        problems.append(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    catalog = Catalog()
    for raw in _as_list(data.get("environments")):
        if not isinstance(raw, dict) or "name" not in raw:
            problems.append(f"environment entry without a name: {raw!r}")
            continue
        name = str(raw["name"])
        env = EnvironmentSpec(name=name, enabled=bool(raw.get("enabled", True)))
        for var_name, value in (raw.get("variables") or {}).items():
            var = _parse_variable(name, var_name, value, problems)
            if var:
                env.variables.append(var)
        catalog.environments.append(env)
    for raw in _as_list(data.get("commands")):
        if not isinstance(raw, dict) or "name" not in raw or "command" not in raw:
            problems.append(f"command entry needs name and command: {raw!r}")
            continue
        try:
            timeout = int(raw.get("timeout_seconds", 3600))
        except (TypeError, ValueError):
            timeout = -1
        if timeout <= 0:
            problems.append(f"command {raw['name']!r}: timeout_seconds must be a positive integer")
        catalog.commands.append(
            CommandSpec(
                name=str(raw["name"]),
                command=str(raw["command"]),
                enabled=bool(raw.get("enabled", True)),
                timeout_seconds=timeout,
                working_dir=raw.get("working_dir"),
                use_shell=bool(raw.get("shell", True)),
                description=raw.get("description"),
            )
        )
    for raw in _as_list(data.get("schedules")):
        if not isinstance(raw, dict) or "name" not in raw or "command" not in raw:
            problems.append(f"schedule entry needs name and command: {raw!r}")
            continue
        catalog.schedules.append(
            ScheduleSpec(
                name=str(raw["name"]),
                command=str(raw["command"]),
                environments=[str(e) for e in _as_list(raw.get("environments"))],
                crons=[str(c) for c in _as_list(raw.get("cron"))],
                enabled=bool(raw.get("enabled", True)),
            )
        )
    if problems:
        raise CatalogError(problems)
    return catalog


def load_catalog(path: str | Path) -> Catalog:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise CatalogError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_catalog(data)


def _dupes(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def validate(catalog: Catalog, known_commands: set[str], known_envs: set[str]) -> None:
    """Every problem at once; ``known_*`` are names already in the database (merge mode)."""
    problems: list[str] = []
    for kind, items in (
        ("command", catalog.commands),
        ("environment", catalog.environments),
        ("schedule", catalog.schedules),
    ):
        for dup in _dupes([i.name for i in items]):
            problems.append(f"duplicate {kind} name {dup!r}")
        for item in items:
            if not NAME_RE.match(item.name):
                problems.append(f"invalid {kind} name {item.name!r}")
    for env in catalog.environments:
        for dup in _dupes([v.name for v in env.variables]):
            problems.append(f"environment {env.name!r}: duplicate variable {dup!r}")
    for cmd in catalog.commands:
        if not cmd.command.strip():
            problems.append(f"command {cmd.name!r}: empty command line")
        if cmd.timeout_seconds <= 0:
            problems.append(f"command {cmd.name!r}: timeout_seconds must be positive")
    commands = known_commands | {c.name for c in catalog.commands}
    envs = known_envs | {e.name for e in catalog.environments}
    for sched in catalog.schedules:
        if sched.command not in commands:
            problems.append(f"schedule {sched.name!r}: unknown command {sched.command!r}")
        if not sched.environments:
            problems.append(f"schedule {sched.name!r}: needs at least one environment")
        for env in sched.environments:
            if env not in envs:
                problems.append(f"schedule {sched.name!r}: unknown environment {env!r}")
        if not sched.crons:
            problems.append(f"schedule {sched.name!r}: needs at least one cron expression")
        for expr in sched.crons:
            try:
                validate_cron(expr)
            except InvalidCron as exc:
                problems.append(f"schedule {sched.name!r}: {exc}")
    if problems:
        raise CatalogError(problems)


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.disabled)} disabled"
        )


def _ids(conn: sa.Connection, table: sa.Table) -> dict[str, int]:
    return {r.name: r.id for r in conn.execute(sa.select(table.c.name, table.c.id))}


def _upsert(
    conn: sa.Connection, table: sa.Table, name: str, values: dict, ids: dict, result: SyncResult
) -> int:
    label = f"{table.name[:-1]} {name}"
    if name in ids:
        conn.execute(table.update().where(table.c.id == ids[name]).values(**values))
        result.updated.append(label)
        return ids[name]
    new_id = conn.execute(table.insert().values(name=name, **values)).inserted_primary_key[0]
    ids[name] = new_id
    result.created.append(label)
    return new_id


def apply(engine: sa.Engine, catalog: Catalog, *, prune: bool) -> SyncResult:
    """Validate against the database, then write everything in one transaction.

    ``prune=True`` (sync): names absent from the catalog are disabled.
    """
    now = utcnow()
    result = SyncResult()
    with engine.begin() as conn:
        cmd_ids = _ids(conn, m.commands)
        env_ids = _ids(conn, m.environments)
        sched_ids = _ids(conn, m.schedules)
        known_cmds = set() if prune else set(cmd_ids)
        known_envs = set() if prune else set(env_ids)
        validate(catalog, known_cmds, known_envs)
        for env in catalog.environments:
            env_id = _upsert(
                conn, m.environments, env.name,
                {"enabled": env.enabled, "updated_at": now}, env_ids, result,
            )  # fmt: skip
            conn.execute(m.variables.delete().where(m.variables.c.environment_id == env_id))
            if env.variables:
                conn.execute(
                    m.variables.insert(),
                    [
                        {"environment_id": env_id, "name": v.name, "value": v.value,
                         "secret": v.secret}
                        for v in env.variables
                    ],
                )  # fmt: skip
        for cmd in catalog.commands:
            values = {
                "command": cmd.command,
                "enabled": cmd.enabled,
                "timeout_seconds": cmd.timeout_seconds,
                "working_dir": cmd.working_dir,
                "use_shell": cmd.use_shell,
                "description": cmd.description,
                "updated_at": now,
            }
            _upsert(conn, m.commands, cmd.name, values, cmd_ids, result)
        for sched in catalog.schedules:
            values = {"command_id": cmd_ids[sched.command], "enabled": sched.enabled,
                      "updated_at": now}  # fmt: skip
            if sched.name not in sched_ids:
                values["created_at"] = now
            sid = _upsert(conn, m.schedules, sched.name, values, sched_ids, result)
            conn.execute(m.schedule_crons.delete().where(m.schedule_crons.c.schedule_id == sid))
            crons = sorted({validate_cron(c) for c in sched.crons})
            conn.execute(
                m.schedule_crons.insert(), [{"schedule_id": sid, "cron": c} for c in crons]
            )
            conn.execute(
                m.schedule_environments.delete().where(m.schedule_environments.c.schedule_id == sid)
            )
            conn.execute(
                m.schedule_environments.insert(),
                [{"schedule_id": sid, "environment_id": env_ids[e]}
                 for e in sorted(set(sched.environments))],
            )  # fmt: skip
        if prune:
            for table, given in (
                (m.commands, {c.name for c in catalog.commands}),
                (m.environments, {e.name for e in catalog.environments}),
                (m.schedules, {s.name for s in catalog.schedules}),
            ):
                stale = (
                    conn.execute(
                        sa.select(table.c.name).where(
                            table.c.enabled.is_(True), table.c.name.not_in(given)
                        )
                    )
                    .scalars()
                    .all()
                )
                if stale:
                    conn.execute(
                        table.update().where(table.c.name.in_(stale)).values(enabled=False)
                    )
                    result.disabled += [f"{table.name[:-1]} {n}" for n in stale]
    return result


def sync_file(engine: sa.Engine, path: str | Path) -> SyncResult:
    return apply(engine, load_catalog(path), prune=True)
