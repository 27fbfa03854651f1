"""One way for every CLI to end on an error: one line on stderr and an exit code, no traceback.

``platform-ops``, ``platform-ops-commands`` and the gateway agent wrap their ``main`` in ``run``:
an error becomes ``<prog>: error: <one line naming the input and the fix>``. Exit codes:

- 2: the input is wrong (an argument, a file, YAML, a catalog, the store URL's form, a refusal
  such as ``FinalFailure``): fix it and run again; nothing was changed.
- 1: a failure that may pass (the record store unreachable, a ``dagster.Failure``), or an
  unexpected error: that line ends with a hint to set ``PLATFORM_OPS_DEBUG=1``, which prints the
  traceback as well (for every error).

Nothing secret is printed: a store URL is shown by ``resources.db.show_url`` (scheme, host, port,
database; never the userinfo or the query; nothing at all of a value that is not a URL), and every
4+ character piece of any password the URL could hold is masked anywhere else in the line (a
driver may echo its DSN, or a password's tail it took for the host).
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
# user:password@ of any other URL in a line; greedy to the token's last '@' (a password may hold
# an unescaped one).
_PASSWORD_IN_URL = re.compile(r"(://[^/:@\s]*:)\S*@")
_NOT_SET_UP = re.compile(r"no such table|relation \S+ does not exist", re.IGNORECASE)


class CliInputError(Exception):
    """A bad input found by the CLI itself; ``str()`` is the one line to print (exit 2)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (argparse prints the usage block first) and exit 2.

    Sub-parsers inherit the class (``add_subparsers`` uses ``type(self)``).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(INPUT, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _shown_arg(text: str, limit: int = 24) -> str:
    """An argument's value for an error line: repr'd, cut (a 5,000-digit number is not echoed)."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def bounded_number(
    low: float, high: float, *, unit: str = "seconds", integer: bool = False
) -> Callable[[str], float | int]:
    """An argparse ``type``: a finite number from ``low`` to ``high`` (a whole one if
    ``integer``), else one line naming the range. The text is checked before conversion: no
    ``int()`` of thousands of digits (Python refuses over 4,300), no ``nan`` / ``inf``."""
    kind = "a whole number" if integer else "a number"
    rule = f"must be {kind} of {unit} from {low:g} to {high:g}"
    pattern = (
        r"[+-]?[0-9]{1,12}" if integer else r"[+-]?(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})"
    )

    def parse(text: str) -> float | int:
        if not re.fullmatch(pattern, text.strip()):
            raise argparse.ArgumentTypeError(f"{rule} (got {_shown_arg(text)})")
        value = int(text) if integer else float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{rule} (got {_shown_arg(text)})")
        return value

    return parse


def identifier(max_chars: int, what: str = "name") -> Callable[[str], str]:
    """An argparse ``type``: ``[A-Za-z0-9][A-Za-z0-9_.-]*`` of at most ``max_chars`` (the column
    width), else one line: an empty id, spaces, a NUL or a 10 kB value never reach the store."""
    pattern = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{max_chars - 1}}}")

    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"a {what} is 1 to {max_chars} letters, digits, '_', '.' or '-', starting with "
                f"a letter or digit (got {_shown_arg(text)})"
            )
        return text

    return parse


_store_url: str | None = None


def store_url(url: str) -> str:
    """Note the record-store URL this CLI uses (for the error line) and check its form."""
    from resources import db

    global _store_url
    _store_url = url
    try:
        db.checked_url(url)
    except db.RecordStoreUrlError as exc:
        raise CliInputError(str(exc)) from None
    return url


def safe_url(url: str) -> str:
    """``url`` as a person may see it: ``resources.db.show_url`` (no userinfo, no query)."""
    from resources import db

    return db.show_url(url)


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
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message of its own: Python prints it, exit 1
            raise
        return exc.code or 0  # argparse (its one line is printed already) or --help
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
    setting_error = _loaded("resources.db", "RecordStoreSettingError")
    final_failure = _loaded("resources.errors", "FinalFailure")
    archive_error = _loaded("orchestration.policies.archive", "ArchiveError")

    url = safe_url(_store_url) if _store_url else "the configured URL"
    if isinstance(exc, CliInputError | final_failure | setting_error):
        return _one_line(str(exc)), INPUT
    if isinstance(exc, sa.exc.ArgumentError):
        return f"invalid record store URL {url}: {_first_line(exc)}; {STORE_HINT}", INPUT
    if isinstance(exc, sa.exc.DBAPIError) and _NOT_SET_UP.search(_driver_line(exc)):
        return (
            f"record store at {url} is not set up ({_driver_line(exc)}): its tables are created "
            f"by the first run that uses it or by `platform-ops-commands list-runs`; {STORE_HINT}"
        ), FAILURE
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        hint = f"{STORE_HINT}{_url_hint()}"
        return f"record store unreachable at {url}: {_driver_line(exc)}; {hint}", FAILURE
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
    """Mask the store URL's password (every 4+ character piece of it) wherever it appears in
    ``text``, and the password of any other ``scheme://user:password@`` in it."""
    from resources import db

    text = _PASSWORD_IN_URL.sub(r"\1***@", text)
    return db.hide_url_secrets(text, _store_url)


def _url_hint() -> str:
    from resources import db

    return db.url_hint(_store_url) if _store_url else ""


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
