"""The operator catalog: commands, environments (with variables) and schedules, as YAML or CLI.

Everything is validated before anything is written, and applied in one transaction. Validation is
a strict pydantic schema (``CatalogIn``) plus the checks across entries (duplicate names, a
schedule's unknown command or environment): a ``CatalogError`` lists *every* problem of the file
at once, YAML ones with their line, each naming the entry and the field, and the database is left
exactly as it was.

Why strict: YAML guesses types, and a lax reading turned ``shell: "false"`` into a shell command,
``enabled: "false"`` into enabled and ``timeout_seconds: 1.9`` (or ``true``) into 1. Every value
must already have its type. Why the string checks: a value ``execve`` cannot take (a NUL byte, an
environment-variable name with ``=``) used to be stored and then fail only when its run started,
leaving it ``running`` until the reaper called it ``lost``; the values go through the same checks
here, so nothing that cannot start is ever stored. The CLI ``set-*`` paths build the same specs
and go through the same ``validate`` (no path writes an unvalidated value). Variable values are
never echoed in an error (they may be secrets): an error names the environment and the variable.

``sync`` makes the database match a whole catalog (names missing from it are *disabled*, never
deleted: their run history stays); ``merge`` upserts only what is given (the CLI ``set-*``).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pydantic
import sqlalchemy as sa
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from orchestration.commands import models as m
from orchestration.commands.cron import validate_cron
from orchestration.commands.timeutil import utcnow
from resources.db import SQLITE_WRITER

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_CHARS = 200  # the String(200) columns (PostgreSQL enforces it; SQLite does not)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_YAML_NODES = 200_000  # after alias expansion: an alias bomb is refused, not expanded
# A catalog is 5 levels deep (catalog > environments > [i] > variables > NAME > value); deeper
# nesting is refused while composing, before the recursive parts of PyYAML and pydantic see it
# (5,000 nested brackets were a RecursionError).
MAX_YAML_DEPTH = 64
MAX_INT_CHARS = 32  # a YAML integer longer than this is refused (int() stops at 4,300 digits)
# Set by the runner for every command (they would silently replace an operator's value).
RESERVED_VARIABLES = ("COMMAND_RUN_ID", "COMMAND_NAME", "COMMAND_ENVIRONMENT", "COMMAND_RUN_TOKEN")
SECTIONS = {"commands": "command", "environments": "environment", "schedules": "schedule"}


class CatalogError(ValueError):
    """Every validation problem of a catalog, one per line; ``str()`` is the whole message."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" {source}" if source else ""
        super().__init__(
            f"invalid catalog{where}: {len(problems)} problem(s), nothing was changed:\n"
            + "\n".join(f"- {p}" for p in problems)
        )


# ---- value rules shared by every path ---------------------------------------------------------


def text_problem(value: str) -> str | None:
    """Why ``execve`` / the record store cannot take this string, or None. Never quotes it."""
    if "\x00" in value:
        return "contains a NUL byte (\\0), which no process can receive: remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a character that is not valid UTF-8 (a lone surrogate such as \\ud800)"
    return None


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _name(value: str) -> str:
    _text(value)
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-{MAX_NAME_CHARS} letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def _var_name(value: str) -> str:
    _text(value)
    if len(value) > MAX_NAME_CHARS or not VAR_RE.fullmatch(value):
        raise ValueError(
            f"invalid variable name {value!r}: an environment variable name is letters, digits "
            f"and '_' ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_NAME_CHARS})"
        )
    if value in RESERVED_VARIABLES:
        raise ValueError(f"variable name {value!r} is set by the runner itself: choose another")
    return value


def _env_source(value: str) -> str:
    _text(value)
    if not VAR_RE.fullmatch(value):
        raise ValueError(f"from_env {value!r} is not an environment variable name")
    return value


def _cron(value: str) -> str:
    _text(value)
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"cron longer than {MAX_NAME_CHARS} characters")
    return validate_cron(value)


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[str, AfterValidator(_name)]
VarName = Annotated[str, AfterValidator(_var_name)]
EnvSource = Annotated[str, AfterValidator(_env_source)]
Cron = Annotated[str, AfterValidator(_cron)]


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# ---- the schema -------------------------------------------------------------------------------


class _Strict(BaseModel):
    # strict: no coercion at all (bool is not an int, "false" is not a bool, 1.9 is not an int)
    model_config = ConfigDict(extra="forbid", strict=True)


class VariableIn(_Strict):
    value: Text | None = None
    from_env: EnvSource | None = None
    secret: bool = False

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> VariableIn:
        if (self.value is None) == (self.from_env is None):
            raise ValueError("needs exactly one of value or from_env")
        return self


class EnvironmentIn(_Strict):
    name: Name
    enabled: bool = True
    variables: dict[VarName, VariableIn] = Field(default_factory=dict)

    @field_validator("variables", mode="before")
    @classmethod
    def _short_form(cls, raw: Any) -> Any:
        """``NAME: text`` is ``NAME: {value: text}``; any non-mapping is checked as a value."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            return raw
        return {k: v if isinstance(v, dict) else {"value": v} for k, v in raw.items()}


class CommandIn(_Strict):
    name: Name
    shell: bool = True  # before ``command``: its check reads it
    command: Text
    enabled: bool = True
    timeout_seconds: Annotated[int, Field(gt=0, le=MAX_TIMEOUT_SECONDS)] = 3600
    working_dir: Text | None = None
    description: Text | None = None

    @field_validator("command")
    @classmethod
    def _startable(cls, command: str, info: pydantic.ValidationInfo) -> str:
        """What the runner will exec: a non-empty line; with ``shell: false``, a valid argv."""
        if not command.strip():
            raise ValueError("empty command line")
        if info.data.get("shell") is False:
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise ValueError(
                    f"with shell: false it must split into arguments ({exc})"
                ) from None
            if not argv:
                raise ValueError("with shell: false it must name a program")
        return command


class ScheduleIn(_Strict):
    name: Name
    command: Name
    environments: Annotated[list[Name], Field(min_length=1)]
    cron: Annotated[list[Cron], Field(min_length=1)]
    enabled: bool = True

    @field_validator("environments", "cron", mode="before")
    @classmethod
    def _one_or_many(cls, raw: Any) -> Any:
        """``cron: "0 3 * * *"`` is a list of one."""
        return _listify(raw)


class CatalogIn(_Strict):
    commands: list[CommandIn] = Field(default_factory=list)
    environments: list[EnvironmentIn] = Field(default_factory=list)
    schedules: list[ScheduleIn] = Field(default_factory=list)

    @field_validator("commands", "environments", "schedules", mode="before")
    @classmethod
    def _empty_section(cls, raw: Any) -> Any:
        return [] if raw is None else raw


# ---- the specs the rest of the code uses --------------------------------------------------------


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


# ---- error messages ---------------------------------------------------------------------------

_HINTS = {
    "bool_type": "must be true or false, unquoted",
    "int_type": "must be a whole number, unquoted (e.g. 600)",
    "string_type": "must be text (quote it in YAML, e.g. '8080')",
    "list_type": "must be a list",
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "missing": "is required",
    "too_short": "needs at least one",
    "greater_than": "must be greater than {gt}",
    "less_than_equal": "must be at most {le}",
}


def _allowed_keys(loc: tuple) -> str:
    model: type[BaseModel] = CatalogIn
    if len(loc) >= 3 and loc[0] in SECTIONS:
        model = {"commands": CommandIn, "environments": EnvironmentIn, "schedules": ScheduleIn}[
            loc[0]
        ]
        if loc[0] == "environments" and len(loc) >= 5 and loc[2] == "variables":
            model = VariableIn
    return ", ".join(model.model_fields)


def _field(path: tuple) -> str:
    """``variables.PORT.value``, ``cron[1]``; odd keys (a NUL, spaces) as their repr."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[\w.-]+", str(part)) else repr(part)
            out += f".{text}" if out else text
    return out


class _Located:
    """Names a place in the raw data: "line 12: command 'backup' (commands[1])"."""

    def __init__(self, data: Any, lines: dict[tuple, int] | None) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.lines = lines or {}

    def line(self, path: tuple) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def entry(self, section: str, index: int) -> str:
        kind = SECTIONS[section]
        items = self.data.get(section)
        raw = items[index] if isinstance(items, list) and index < len(items) else None
        name = raw.get("name") if isinstance(raw, dict) else None
        return f"{kind} {name!r}" if isinstance(name, str) else f"{section}[{index}]"

    def where(self, path: tuple) -> tuple[str, tuple]:
        """(the entry's label with its line, the rest of the path: the field)."""
        line = self.line(path)
        at = f"line {line}: " if line else ""
        if len(path) >= 2 and path[0] in SECTIONS and isinstance(path[1], int):
            return at + self.entry(path[0], path[1]), path[2:]
        return at + "catalog", path

    def problem(self, path: tuple, message: str) -> str:
        label, rest = self.where(path)
        field_name = _field(rest)
        return f"{label}: {field_name}: {message}" if field_name else f"{label}: {message}"


def _message(err: Any, loc: tuple) -> str:
    kind = err["type"]
    if kind == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
    if kind == "extra_forbidden":
        return f"unknown key; allowed: {_allowed_keys(loc)}"
    text = _HINTS.get(kind, err["msg"][:1].lower() + err["msg"][1:]).format(**err.get("ctx", {}))
    value = err.get("input")
    if kind in ("missing", "too_short") or "variables" in loc:
        return text  # a variable's value may be a secret: its type at most
    shown = f" {value!r}" if isinstance(value, bool | int | float) or value is None else ""
    return f"{text} (got {type(value).__name__}{shown})"


def _schema_problems(data: Any, where: _Located) -> tuple[CatalogIn | None, list[str]]:
    if not isinstance(data, dict):
        return None, [
            "the catalog must be a mapping with commands / environments / schedules "
            f"(got {type(data).__name__})"
        ]
    try:
        return CatalogIn.model_validate(data), []
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p != "[key]")
            problems.append(where.problem(loc, _message(err, loc)))
        return None, problems


def _dupes(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def _names(data: dict, section: str) -> Iterator[tuple[int, Any]]:
    items = data.get(section)
    for index, raw in enumerate(items if isinstance(items, list) else []):
        if isinstance(raw, dict):
            yield index, raw


def _cross_problems(
    data: dict, where: _Located, known_commands: set[str], known_envs: set[str], *, merge: bool
) -> list[str]:
    """Duplicates and references, from whatever entries have a usable name (even invalid ones)."""
    problems = []
    for section, kind in SECTIONS.items():
        named = [(i, r["name"]) for i, r in _names(data, section) if isinstance(r.get("name"), str)]
        for dup in _dupes([name for _, name in named]):
            at = [where.line((section, i)) for i, name in named if name == dup]
            lines = ", ".join(str(n) for n in at if n)
            problems.append(
                f"duplicate {kind} name {dup!r}" + (f" (lines {lines})" if lines else "")
            )
    commands = known_commands | {
        raw["name"] for _, raw in _names(data, "commands") if isinstance(raw.get("name"), str)
    }
    envs = known_envs | {
        raw["name"] for _, raw in _names(data, "environments") if isinstance(raw.get("name"), str)
    }
    scope = "not in the store" if merge else "not in this catalog"
    for index, raw in _names(data, "schedules"):
        command = raw.get("command")
        if isinstance(command, str) and command not in commands:
            problems.append(
                where.problem(("schedules", index, "command"),
                              f"unknown command {command!r} ({scope})")
            )  # fmt: skip
        env_list = _listify(raw.get("environments"))
        for env in env_list if isinstance(env_list, list) else []:
            if isinstance(env, str) and env not in envs:
                problems.append(
                    where.problem(("schedules", index, "environments"),
                                  f"unknown environment {env!r} ({scope})")
                )  # fmt: skip
    return problems


def _check(
    data: Any,
    lines: dict[tuple, int] | None = None,
    known_commands: frozenset[str] | set[str] = frozenset(),
    known_envs: frozenset[str] | set[str] = frozenset(),
    *,
    merge: bool = False,
) -> tuple[CatalogIn | None, list[str]]:
    """The schema and the cross-entry checks together: every problem, in one list."""
    where = _Located(data, lines)
    model, problems = _schema_problems(data, where)
    if isinstance(data, dict):
        problems += _from_env_problems(data, where)
        problems += _cross_problems(data, where, set(known_commands), set(known_envs), merge=merge)
    return model, sorted(problems, key=_line_of)


def _line_of(problem: str) -> int:
    """Problems in file order (those without a line last, in the order found)."""
    found = re.match(r"line (\d+)", problem)
    return int(found.group(1)) if found else 1 << 30


def _from_env_problems(data: dict, where: _Located) -> list[str]:
    """``from_env`` sources that are unset or hold what no process can receive (never quoted)."""
    problems = []
    for index, raw in _names(data, "environments"):
        variables = raw.get("variables")
        for name, var in variables.items() if isinstance(variables, dict) else ():
            source = var.get("from_env") if isinstance(var, dict) else None
            if not isinstance(source, str) or not VAR_RE.fullmatch(source):
                continue
            path = ("environments", index, "variables", name)
            value = os.environ.get(source)
            if value is None:
                problems.append(
                    where.problem(path, f"reads ${source}, which is not set: export it, then sync")
                )
            elif text_problem(value):
                problems.append(
                    where.problem(path, f"the value of ${source} {text_problem(value)}")
                )
    return problems


def _resolve(model: CatalogIn, where: _Located, problems: list[str]) -> Catalog:
    """The specs; ``from_env`` values are read now (a problem when unset or unusable)."""
    catalog = Catalog()
    for index, env in enumerate(model.environments):
        spec = EnvironmentSpec(env.name, env.enabled)
        for var_name, var in env.variables.items():
            # from_env was checked in _check; read it again here, at the moment of use
            value = var.value if var.from_env is None else os.environ.get(var.from_env)
            if value is None or text_problem(value):
                path = ("environments", index, "variables", var_name)
                problems.append(where.problem(path, f"${var.from_env} changed while syncing"))
                continue
            spec.variables.append(Variable(var_name, value, var.secret))
        catalog.environments.append(spec)
    catalog.commands = [
        CommandSpec(c.name, c.command, c.enabled, c.timeout_seconds, c.working_dir, c.shell,
                    c.description)
        for c in model.commands
    ]  # fmt: skip
    catalog.schedules = [
        ScheduleSpec(s.name, s.command, list(s.environments), list(s.cron), s.enabled)
        for s in model.schedules
    ]
    return catalog


def parse_catalog(
    data: Any, *, lines: dict[tuple, int] | None = None, source: str | None = None,
    problems: list[str] | None = None,
) -> Catalog:  # fmt: skip
    """A ``Catalog`` from the YAML structure; ``CatalogError`` with every problem otherwise.

    ``problems`` are earlier (YAML-stage) ones to report together with these.
    """
    found = list(problems or [])
    model, schema = _check(data, lines)
    found += schema
    catalog = _resolve(model, _Located(data, lines), found) if model is not None else None
    if found or catalog is None:
        raise CatalogError(found, source)
    return catalog


# ---- YAML with line numbers -------------------------------------------------------------------


@dataclass
class _Walk:
    """What one pass over the YAML node tree finds (before any value is constructed)."""

    lines: dict[tuple, int] = field(default_factory=dict)  # path -> 1-based line
    dupes: list[tuple[tuple, str, int, int]] = field(default_factory=list)  # path, key, lines
    budget: int = MAX_YAML_NODES
    too_deep: int | None = None  # the line where aliases nest past MAX_YAML_DEPTH

    def visit(self, node: yaml.Node, path: tuple = ()) -> None:
        self.budget -= 1
        if self.budget < 0:
            return  # an alias bomb (or a cycle) stops here; reported by the caller
        if len(path) > MAX_YAML_DEPTH:  # composed nodes are bounded; aliases can stack them
            self.too_deep = self.too_deep or node.start_mark.line + 1
            return
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key.start_mark.line + 1
                if key.value in first:
                    self.dupes.append((path, key.value, first[key.value], line))
                first.setdefault(key.value, line)
                self.visit(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.visit(item, (*path, index))


class _Refused(yaml.MarkedYAMLError):
    """A YAML value the catalog refuses while loading (too deep, a number too long, a value the
    YAML constructor cannot build): reported with its line like a syntax error."""


class _CatalogLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting depth while composing, the length of an integer
    before ``int()``, and any error of a value's constructor (a date like 2024-02-30) named with
    the value's line instead of escaping as a bare ``ValueError``."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(
                    problem=f"nested more than {MAX_YAML_DEPTH} levels deep (a catalog needs 5)",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = str(node.value).replace("_", "")
        if len(digits) > MAX_INT_CHARS:
            raise _Refused(
                problem=f"a number of {len(digits)} characters (at most {MAX_INT_CHARS})",
                problem_mark=node.start_mark,
            )
        return super().construct_yaml_int(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise _Refused(
                problem=f"{node.tag.rsplit(':', 1)[-1]} value that cannot be read ({exc})",
                problem_mark=node.start_mark,
            ) from None


_CatalogLoader.add_constructor("tag:yaml.org,2002:int", _CatalogLoader.construct_yaml_int)


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> str:
    """A character YAML does not accept (NUL, other controls): its line and column."""
    before = text[: max(exc.position, 0)]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return (
        f"line {line}, column {column}: not valid YAML: character U+{ord(char):04X} is not "
        "allowed in YAML text (remove it; write control characters as escapes in a "
        'double-quoted string, e.g. "\\t")'
    )


def loads_catalog(text: str, source: str = "<catalog>") -> Catalog:
    """Parse YAML text: syntax errors with their line, then every schema/cross-entry problem.

    Every way loading can fail is a ``CatalogError`` naming the source and the line: a character
    YAML refuses (NUL), nesting deeper than ``MAX_YAML_DEPTH``, an integer longer than
    ``MAX_INT_CHARS``, a value its constructor cannot build, an alias bomb.
    """
    try:
        loader = _CatalogLoader(text)
    except yaml.reader.ReaderError as exc:
        raise CatalogError([_reader_problem(exc, text)], source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            empty = "the file is empty (a sync of nothing would disable everything)"
            raise CatalogError([empty], source)
        walk = _Walk()
        walk.visit(node)
        if walk.budget < 0:
            raise CatalogError(
                [f"more than {MAX_YAML_NODES} values once YAML aliases are expanded"], source
            )
        if walk.too_deep is not None:
            raise CatalogError(
                [f"line {walk.too_deep}: nested more than {MAX_YAML_DEPTH} levels deep once YAML "
                 "aliases are expanded (a catalog needs 5)"], source,
            )  # fmt: skip
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        raise CatalogError([_reader_problem(exc, text)], source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(filter(None, [exc.context, exc.problem]))
        kind = "refused" if isinstance(exc, _Refused) else "not valid YAML"
        raise CatalogError([f"{at}{kind}: {what}"], source) from None
    except yaml.YAMLError as exc:
        raise CatalogError([f"not valid YAML: {exc}"], source) from None
    except RecursionError:  # a path not bounded above; named, never a traceback
        raise CatalogError(
            [f"nested too deeply (at most {MAX_YAML_DEPTH} levels)"], source
        ) from None
    finally:
        loader.dispose()
    where = _Located(data, walk.lines)
    problems = [
        where.problem(path, f"duplicate key {key!r} on lines {first} and {again}; YAML would "
                            "keep only the last: remove one")
        for path, key, first, again in walk.dupes
    ]  # fmt: skip
    return parse_catalog(data, lines=walk.lines, source=source, problems=problems)


def load_catalog(path: str | Path) -> Catalog:
    """The catalog file at ``path``; every problem (unreadable, YAML, schema) as a CatalogError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CatalogError([f"{size} bytes, over the {MAX_FILE_BYTES} byte limit"], str(path))
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(
            [f"not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x})"], str(path)
        ) from None
    return loads_catalog(text, str(path))


# ---- validation of specs (every write path) ---------------------------------------------------


def _as_data(catalog: Catalog) -> dict:
    """The specs back in the schema's shape, so CLI-built specs get the very same checks."""
    return {
        "commands": [
            {"name": c.name, "command": c.command, "enabled": c.enabled,
             "timeout_seconds": c.timeout_seconds, "working_dir": c.working_dir,
             "shell": c.use_shell, "description": c.description}
            for c in catalog.commands
        ],
        "environments": [
            {"name": e.name, "enabled": e.enabled,
             "variables": {v.name: {"value": v.value, "secret": v.secret} for v in e.variables}}
            for e in catalog.environments
        ],
        "schedules": [
            {"name": s.name, "command": s.command, "environments": list(s.environments),
             "cron": list(s.crons), "enabled": s.enabled}
            for s in catalog.schedules
        ],
    }  # fmt: skip


def validate(
    catalog: Catalog, known_commands: set[str], known_envs: set[str], *, merge: bool = False
) -> None:
    """Every problem at once; ``known_*`` are names already in the database (merge mode)."""
    problems = []
    for env in catalog.environments:
        problems += [
            f"environment {env.name!r}: duplicate variable {d!r}"
            for d in _dupes([v.name for v in env.variables])
        ]
    _, found = _check(_as_data(catalog), None, known_commands, known_envs, merge=merge)
    problems += found
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
    # SQLite: a writer from BEGIN (reads, then writes; see resources.db.SQLITE_WRITER).
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:
        cmd_ids = _ids(conn, m.commands)
        env_ids = _ids(conn, m.environments)
        sched_ids = _ids(conn, m.schedules)
        known_cmds = set() if prune else set(cmd_ids)
        known_envs = set() if prune else set(env_ids)
        validate(catalog, known_cmds, known_envs, merge=not prune)
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


def set_variable(engine: sa.Engine, environment: str, name: str, value: str, secret: bool) -> str:
    """One variable of an existing environment (CLI ``set-variable``), with the catalog's checks.

    The value is never part of an error (it may be a secret).
    """
    problems = []
    for label, rule, raw in (("variable name", _var_name, name), ("value", _text, value)):
        if not isinstance(raw, str):
            problems.append(f"{label}: must be text (got {type(raw).__name__})")
            continue
        try:
            rule(raw)
        except ValueError as exc:
            problems.append(f"variable {name!r} of {environment!r}: {label}: {exc}"
                            if label == "value" else f"{label}: {exc}")  # fmt: skip
    if not isinstance(secret, bool):
        problems.append(f"secret: must be true or false (got {type(secret).__name__})")
    if problems:
        raise CatalogError(problems)
    with engine.execution_options(**SQLITE_WRITER).begin() as conn:  # reads, then writes
        env_id = conn.execute(
            sa.select(m.environments.c.id).where(m.environments.c.name == environment)
        ).scalar()
        if env_id is None:
            raise CatalogError([f"unknown environment {environment!r}"])
        conn.execute(
            m.variables.delete().where(
                m.variables.c.environment_id == env_id, m.variables.c.name == name
            )
        )
        conn.execute(
            m.variables.insert().values(
                environment_id=env_id, name=name, value=value, secret=secret
            )
        )
    return f"variable {name} of {environment} set" + (" (secret)" if secret else "")


def sync_file(engine: sa.Engine, path: str | Path) -> SyncResult:
    return apply(engine, load_catalog(path), prune=True)
