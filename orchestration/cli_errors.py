"""One way for every CLI to end on an error: one line on stderr and an exit code, no traceback.

``platform-ops``, ``platform-ops-commands`` and the gateway agent wrap their ``main`` in ``run``:
an error becomes ``<prog>: error: <one line naming the input and the fix>``. Exit codes:

- 2: the input is wrong (an argument, a file, YAML, a catalog, the store URL's form, a refusal
  such as ``FinalFailure``): fix it and run again; nothing was changed.
- 1: a failure that may pass (the record store unreachable, a ``dagster.Failure``), or an
  unexpected error: that line ends with a hint to set ``PLATFORM_OPS_DEBUG=1``, which prints the
  traceback as well (for every error).

Nothing secret is printed: a store URL is shown by SQLAlchemy's ``render_as_string(
hide_password=True)`` (or with its password masked when it does not even parse), and its
password is masked anywhere else in the line (a driver may echo its DSN).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "PLATFORM_OPS_DEBUG"
INPUT = 2
FAILURE = 1
STORE_HINT = "check RECORD_STORE_URL / --store-url"
_PASSWORD_IN_URL = re.compile(r"(://[^/:@\s]*:)[^@/\s]*@")
_NOT_SET_UP = re.compile(r"no such table|relation \S+ does not exist", re.IGNORECASE)


class CliInputError(Exception):
    """A bad input found by the CLI itself; ``str()`` is the one line to print (exit 2)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (argparse prints the usage block first) and exit 2.

    Sub-parsers inherit the class (``add_subparsers`` uses ``type(self)``).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(INPUT, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


_store_url: str | None = None


def store_url(url: str) -> str:
    """Note the record-store URL this CLI uses (for the error line) and check its form."""
    global _store_url
    _store_url = url
    import sqlalchemy as sa

    try:
        sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise CliInputError(
            f"invalid record store URL {safe_url(url)}: {_first_line(exc)}; {STORE_HINT}"
        ) from None
    return url


def safe_url(url: str) -> str:
    """``url`` without its password (``***``), whether or not SQLAlchemy can parse it."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


def run(
    prog: str,
    body: Callable[[], int],
    *,
    input_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """``body()``'s exit code; any exception is one line on stderr and exit 1 or 2.

    ``input_errors``: the CLI's own exception types that mean "the input is wrong" (exit 2).
    """
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line, code = describe(exc, input_errors)
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        elif code == FAILURE and not _known(exc):
            line += f" (run with {DEBUG_ENV}=1 for the traceback)"
        print(f"{prog}: error: {scrub(line)}", file=sys.stderr)
        return code


def describe(
    exc: BaseException, input_errors: tuple[type[BaseException], ...] = ()
) -> tuple[str, int]:
    """(one line, exit code) for an exception a CLI did not handle.

    Dagster and the archive are looked up in ``sys.modules`` rather than imported: an exception
    of theirs can only exist once they are loaded, and the gateway agent stays Dagster-free.
    """
    import sqlalchemy as sa
    import yaml

    failure = _loaded("dagster", "Failure")
    final_failure = _loaded("orchestration.errors", "FinalFailure")
    archive_error = _loaded("orchestration.policies.archive", "ArchiveError")

    url = safe_url(_store_url) if _store_url else "the configured URL"
    if isinstance(exc, CliInputError | final_failure):
        return _one_line(str(exc)), INPUT
    if isinstance(exc, sa.exc.ArgumentError):
        return f"invalid record store URL {url}: {_first_line(exc)}; {STORE_HINT}", INPUT
    if isinstance(exc, sa.exc.DBAPIError) and _NOT_SET_UP.search(_driver_line(exc)):
        return (
            f"record store at {url} is not set up ({_driver_line(exc)}): its tables are created "
            f"by the first run that uses it or by `platform-ops-commands list-runs`; {STORE_HINT}"
        ), FAILURE
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return f"record store unreachable at {url}: {_driver_line(exc)}; {STORE_HINT}", FAILURE
    if isinstance(exc, OSError) and _is_store_path(exc.filename):
        line = f"{exc.filename}: {exc.strerror or _first_line(exc)}"
        return f"record store unreachable at {url}: {line}; {STORE_HINT}", INPUT
    if isinstance(exc, sa.exc.DBAPIError):
        return f"record store error at {url}: {_driver_line(exc)}", FAILURE
    if isinstance(exc, archive_error):
        return f"damaged archive {_one_line(str(exc))}", INPUT
    if isinstance(exc, yaml.YAMLError):
        return _yaml_line(exc), INPUT
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or _first_line(exc)}", INPUT
    if isinstance(exc, failure):
        return _one_line(getattr(exc, "description", None) or str(exc)), FAILURE
    if input_errors and isinstance(exc, input_errors):
        return _problems_line(exc), INPUT
    return f"unexpected {type(exc).__name__}: {_first_line(exc)}", FAILURE


def scrub(text: str) -> str:
    """Mask the store URL's password wherever it appears in ``text``."""
    text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    if _store_url:
        text = text.replace(_store_url, safe_url(_store_url))
        password = _password_of(_store_url)
        if password:
            text = text.replace(password, "***")
    return text


def _known(exc: BaseException) -> bool:
    """Errors whose one line says all there is (no traceback hint)."""
    import sqlalchemy as sa

    return isinstance(exc, sa.exc.DBAPIError | OSError | _loaded("dagster", "Failure"))


class _NeverRaised(Exception):
    """Stands in for an exception class whose module is not loaded (``isinstance`` is False)."""


def _loaded(module: str, name: str) -> type[BaseException]:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else _NeverRaised


def _is_store_path(filename: object) -> bool:
    """Whether an ``OSError``'s file is the SQLite store's file or one of its directories."""
    import sqlalchemy as sa

    if filename is None or not _store_url or not _store_url.startswith("sqlite"):
        return False
    try:
        database = sa.engine.make_url(_store_url).database
    except Exception:
        return False
    if not database:
        return False
    db, name = os.path.abspath(database), os.path.abspath(os.fsdecode(filename))  # type: ignore[arg-type]
    return db == name or db.startswith(name.rstrip(os.sep) + os.sep)


def _password_of(url: str) -> str | None:
    import sqlalchemy as sa

    try:
        password = sa.engine.make_url(url).password
    except Exception:
        match = _PASSWORD_IN_URL.search(url)
        password = match[0][len(match[1]) : -1] if match else None
    return str(password) if password else None


def _driver_line(exc: BaseException) -> str:
    """The driver's own first line (psycopg2/sqlite3), without SQLAlchemy's statement dump."""
    orig = getattr(exc, "orig", None)
    return _first_line(orig if orig is not None else exc)


def _yaml_line(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    where = "" if str(mark.name).startswith("<") else f"{mark.name}: "
    return f"{where}invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _problems_line(exc: BaseException) -> str:
    """Every problem of ``exc`` on one line (a catalog error lists one problem per line)."""
    lines = [ln.strip().removeprefix("- ") for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} " + "; ".join(lines[1:])
    return "; ".join(lines) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
