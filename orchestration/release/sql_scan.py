r"""Just enough of a PostgreSQL lexer to find the statements of a migration file and their
leading keywords, so that transaction control can be refused without being fooled by text.

Words inside string literals ('...', E'...' with backslash escapes), quoted identifiers
("..."), dollar-quoted bodies ($$...$$, $tag$...$tag$), ``--`` and (nested) ``/* */`` comments
are not keywords: a function body that says ``COMMIT`` in a comment or a string, or a plpgsql
``DO $$ BEGIN ... END $$`` block, is fine. Statements end at a ``;`` outside parentheses (rule
actions ``DO INSTEAD (...; ...)``) and outside the ``BEGIN ... END`` body of a
``CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC`` (or a SQLite ``CREATE TRIGGER``), the same
heuristic psql uses to split a script.

The token rules are PostgreSQL's own (``scan.l``, 15+), because every place where this lexer and
the server disagree is a place to hide a ``COMMIT``: any character from U+0080 up (emoji
included) is a letter of an unquoted identifier and ``$`` continues one, so ``x😀$$`` is one word,
never the start of a dollar body; ``$1`` is a parameter; a number takes no ``$``; ``--`` comments
end at ``\n`` or ``\r``; ``B''``/``X''`` strings do not double quotes; a string continued on a
later line (``'a'<newline>'b'``) keeps its kind (``E'...'`` escapes); only ASCII letters fold to
keywords. What could read two ways is refused instead (``SqlScanError``): a ``\'`` in a plain
string (it ends the string only when ``standard_conforming_strings`` is on) and a backslash
outside any quote (a psql meta-command such as ``\commit``, which is not SQL). A body counts only
from ``BEGIN ATOMIC`` (a function or procedure) or a SQLite trigger's ``BEGIN INSERT|UPDATE|...``,
so a function, parameter or trigger named ``begin`` does not swallow the statements after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# PostgreSQL works on bytes and every byte of a non-ASCII UTF-8 character is >= 0x80, which its
# lexer counts as a letter: so any character >= U+0080 is one (not only up to U+FFFF). Spelled
# "not ASCII" rather than the range \u0080-\U0010ffff inside one class, which takes ``re`` ~20 ms
# to compile: this module is imported by the code location, so every run of every job paid it.
_NON_ASCII = r"[^\x00-\x7f]"
_LETTER = rf"(?:[A-Za-z_]|{_NON_ASCII})"
_WORD = re.compile(rf"{_LETTER}(?:[A-Za-z_0-9$]|{_NON_ASCII})*")
_DIGITS = r"[0-9](?:_?[0-9])*"
_NUMBER = re.compile(
    rf"0[xXoObB](?:_?[0-9A-Fa-f])+|(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})"
    rf"(?:[eE][-+]?{_DIGITS})?"
)
_PARAM = re.compile(rf"\${_DIGITS}")
_DOLLAR_TAG = re.compile(rf"\$(?:{_LETTER}(?:[A-Za-z_0-9]|{_NON_ASCII})*)?\$")
# After a closing quote: whitespace holding a newline (comments allowed), then a quote, continues
# the same string (PostgreSQL's quotecontinue).
_CONTINUE = re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*[\n\r])*'")
# First words of a SQLite trigger body statement (CREATE TRIGGER ... BEGIN INSERT ...; END).
_TRIGGER_BODY_WORDS = {"INSERT", "UPDATE", "DELETE", "SELECT", "REPLACE", "WITH", "VALUES"}
# Placeholder "words" for quoted things: they are never keywords but still count as tokens.
_QUOTED = "<quoted>"

TRANSACTION_CONTROL = "transaction control: the job opens and commits the transaction"
NOT_IN_TRANSACTION = "cannot run inside a transaction block"
_DOLLAR_ADVICE = "use a $$-quoted function body instead (AS $$ ... $$)"


class SqlScanError(ValueError):
    """The text cannot be split safely (an unterminated quote, comment or dollar body)."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(f"line {line}: {what}")
        self.line = line
        self.what = what


@dataclass(frozen=True)
class Statement:
    """One top-level statement: the line of its first token and its words, upper-cased."""

    line: int
    words: tuple[str, ...]


@dataclass(frozen=True)
class Refused:
    line: int
    text: str
    why: str


def _line_at(sql: str, pos: int) -> int:
    return sql.count("\n", 0, pos) + 1


def _skip_block_comment(sql: str, start: int) -> int:
    """End of the (nested, as in PostgreSQL) comment opened at ``start``."""
    depth, i = 0, start
    while i < len(sql):
        pair = sql[i : i + 2]
        if pair == "/*":
            depth, i = depth + 1, i + 2
        elif pair == "*/":
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise SqlScanError(_line_at(sql, start), "unterminated /* comment")


def _quote_end(sql: str, i: int, quote: str, backslash: bool, doubling: bool) -> int:
    """Index just past the quote closing the literal body starting at ``i``, or -1."""
    while i < len(sql):
        char = sql[i]
        if backslash and char == "\\":
            i += 2
            continue
        if char == quote:
            if doubling and sql[i + 1 : i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def _skip_quoted(sql: str, start: int, quote: str, backslash: bool, doubling: bool = True) -> int:
    """End of the literal opened at ``start``, continuation lines (``'a'\\n'b'``) included.

    ``backslash``: an ``E'...'`` string (``\\'`` does not end it). ``doubling``: ``''`` is one
    quote (not in ``B''``/``X''`` strings). A plain string whose end depends on
    ``standard_conforming_strings`` (a ``\\'`` in it) is refused: the server's setting decides.
    """
    kind = "quoted identifier" if quote == '"' else "string literal"
    i = start
    while True:
        end = _quote_end(sql, i + 1, quote, backslash, doubling)
        if end < 0:
            raise SqlScanError(_line_at(sql, start), f"unterminated {kind}")
        plain = quote == "'" and not backslash and doubling
        if plain and _quote_end(sql, i + 1, quote, True, doubling) != end:
            raise SqlScanError(
                _line_at(sql, start),
                "a backslash before a quote in a '...' string: where it ends depends on "
                "standard_conforming_strings; write it as E'...\\'...' or double the quote",
            )
        more = _CONTINUE.match(sql, end) if quote == "'" else None
        if more is None:
            return end
        i = more.end() - 1


def _body_kind(words: list[str]) -> str | None:
    """FUNCTION, PROCEDURE or TRIGGER for CREATE [OR REPLACE] [TEMP|TEMPORARY] ...: a body may
    hold ';'. None for any other statement."""
    rest = words[1:]
    if not words or words[0] != "CREATE":
        return None
    if rest[:2] == ["OR", "REPLACE"]:
        rest = rest[2:]
    if rest[:1] in (["TEMP"], ["TEMPORARY"]):
        rest = rest[1:]
    kind = rest[0] if rest else None
    return kind if kind in ("FUNCTION", "PROCEDURE", "TRIGGER") else None


def _opens_body(kind: str, word: str) -> bool:
    """Whether ``BEGIN`` followed by ``word`` opens a body (else BEGIN is a name, e.g. a
    function, parameter, type or trigger called ``begin``)."""
    if kind == "TRIGGER":
        return word in _TRIGGER_BODY_WORDS
    return word == "ATOMIC"


def split_statements(sql: str) -> list[Statement]:
    """Top-level statements of ``sql`` with their words; raises ``SqlScanError`` if unsure.

    A routine body (``BEGIN ATOMIC``, or a SQLite trigger's ``BEGIN INSERT ...``) ends where the
    server's grammar ends it: at an ``END`` that starts a statement of the body (right after
    ``ATOMIC`` or after a ``;`` of the body). Inside a body statement no word counts, so ``CASE``
    or ``END`` as a label, after a dot or in ``CASE ... END`` cannot close or keep open the body
    (psql's own heuristic counts every ``CASE`` and ``END`` and is fooled by ``SELECT 1 AS case``,
    while the server, which gets the file in one query, is not). Valid SQL is all that matters:
    a file the server cannot parse runs nothing. What could still read two ways is refused: a
    body inside a body, and a body that never ends.
    """
    statements: list[Statement] = []
    words: list[str] = []
    first_pos = body_pos = -1
    parens = 0
    in_body = False  # inside a routine body: ';' ends a statement of the body, not the file's
    body_start = False  # the next token starts a statement of the body
    top_begin = False  # the previous token is a BEGIN outside parentheses
    i = 0

    def finish() -> None:
        nonlocal words, first_pos, parens, top_begin
        if in_body:
            raise SqlScanError(
                _line_at(sql, body_pos),
                f"a BEGIN ATOMIC body with no END where the server would end it: {_DOLLAR_ADVICE}",
            )
        if words:
            statements.append(Statement(_line_at(sql, first_pos), tuple(words)))
        words, first_pos, parens, top_begin = [], -1, 0, False

    def token(pos: int, word: str) -> None:
        nonlocal first_pos, in_body, body_start, body_pos, top_begin
        if not words:
            first_pos = pos
        words.append(word)
        if in_body:
            if body_start and word == "END":
                in_body = False
            elif top_begin and word == "ATOMIC":
                raise SqlScanError(
                    _line_at(sql, pos), f"a BEGIN ATOMIC body inside another one: {_DOLLAR_ADVICE}"
                )
        else:
            kind = _body_kind(words) if parens == 0 else None
            if kind is not None and top_begin and _opens_body(kind, word):
                # After ATOMIC comes the body's first statement; a trigger's word is its start.
                in_body, body_pos = True, pos
                body_start = kind != "TRIGGER"
                top_begin = False
                return
        body_start = False
        top_begin = parens == 0 and word == "BEGIN"

    def other(pos: int, char: str) -> None:
        """Any other token (a number, an operator, a parenthesis): never a keyword."""
        nonlocal body_start, top_begin
        if not words:
            token(pos, char)
        body_start = top_begin = False

    while i < len(sql):
        char, pair = sql[i], sql[i : i + 2]
        if pair == "--":
            ends = [n for n in (sql.find("\n", i), sql.find("\r", i)) if n >= 0]
            i = min(ends) + 1 if ends else len(sql)
        elif pair == "/*":
            i = _skip_block_comment(sql, i)
        elif char in "'\"":
            token(i, _QUOTED)
            i = _skip_quoted(sql, i, char, backslash=False)
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag.group(), tag.end())
            if end < 0:
                raise SqlScanError(_line_at(sql, i), f"unterminated {tag.group()} body")
            token(i, _QUOTED)
            i = end + len(tag.group())
        elif param := _PARAM.match(sql, i):
            token(i, _QUOTED)
            i = _junk_end(sql, param.end())
        elif word := _WORD.match(sql, i):
            i = _word(sql, i, word.group(), token)
        elif number := _NUMBER.match(sql, i):
            other(i, char)
            i = _junk_end(sql, number.end())
        elif char == "\\":
            raise SqlScanError(
                _line_at(sql, i),
                f"{sql[i:].split(None, 1)[0][:20]!r} is a psql meta-command, not SQL: the file is "
                "sent to the server as SQL; remove it",
            )
        elif char == ";" and parens == 0:
            if in_body:
                body_start, top_begin = True, False
            else:
                finish()
            i += 1
        else:
            if char == "(":
                parens += 1
            elif char == ")":
                parens = max(parens - 1, 0)
            if not char.isspace() and char != ";":
                other(i, char)
            i += 1
    finish()
    return statements


def _junk_end(sql: str, end: int) -> int:
    """A number or ``$1`` followed by letters is one token (PostgreSQL: "trailing junk", an
    error), so a ``$`` in those letters never opens a dollar body."""
    junk = _WORD.match(sql, end)
    return junk.end() if junk else end


def _word(sql: str, i: int, text: str, token: Callable[[int, str], None]) -> int:
    """Emit the word at ``i`` (or the string it prefixes) and return where scanning goes on."""
    if sql[i + len(text) : i + len(text) + 1] == "'" and text.upper() in ("E", "B", "X", "N"):
        token(i, _QUOTED)  # E'...': backslash escapes; B'...'/X'...': no doubled quotes
        upper = text.upper()
        return _skip_quoted(sql, i + 1, "'", backslash=upper == "E", doubling=upper in "EN")
    if text.upper() == "U" and sql[i + 1 : i + 3] in ("&'", '&"'):
        token(i, _QUOTED)  # U&'...' / U&"...": standard quoting rules
        return _skip_quoted(sql, i + 2, sql[i + 2], backslash=False)
    # Only ASCII letters fold: PostgreSQL never reads COMMIT with a dotless i (U+0131) as COMMIT.
    token(i, text.upper() if text.isascii() else text)
    return i + len(text)


_TRANSACTION_WORDS = {"BEGIN", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"}


def _why(words: tuple[str, ...]) -> str | None:
    """Why a statement cannot be part of the job's transaction (None: it can)."""
    w = [*words, "", "", ""]
    first, second = w[0], w[1]
    if first in _TRANSACTION_WORDS or (first, second) in {
        ("START", "TRANSACTION"),
        ("PREPARE", "TRANSACTION"),
    }:
        return TRANSACTION_CONTROL
    concurrently = "CONCURRENTLY" in words
    if (
        first == "VACUUM"
        or (first in ("CREATE", "DROP") and second in ("DATABASE", "TABLESPACE", "SUBSCRIPTION"))
        or (first == "ALTER" and second in ("SYSTEM", "SUBSCRIPTION"))
        or (first == "ALTER" and second == "DATABASE" and "TABLESPACE" in words)
        or (first == "CREATE" and "INDEX" in w[1:3] and concurrently)
        or (first == "DROP" and second == "INDEX" and concurrently)
        or (first == "REINDEX" and (concurrently or {"DATABASE", "SYSTEM"} & set(words)))
        or (first == "ALTER" and "DETACH" in words and concurrently)
        or (first == "CLUSTER" and len(words) <= 2 and w[1] in ("", "VERBOSE"))
        or (first, second) == ("DISCARD", "ALL")
    ):
        return NOT_IN_TRANSACTION
    if first == "COPY" and {"STDIN", "STDOUT"} & set(words):
        return "needs a client data stream the Management API does not have"
    return None


OTHER_SESSION = (
    "runs SQL outside the migration's transaction (another session commits it on its own): "
    "do that change in a migration of its own, without dblink/pg_background"
)
# Functions that run SQL in another session, which commits whatever the migration's transaction
# does: dblink (dblink_exec, dblink_connect, dblink(...)) and the pg_background extension.
_OTHER_SESSION = re.compile(r"(?:dblink|pg_background)[A-Za-z0-9_$]*", re.IGNORECASE)
_UESCAPE = re.compile(r"UESCAPE\s*'(.)'", re.IGNORECASE)
_E_ESCAPE = re.compile(
    r"\\(?:(\\)|x([0-9A-Fa-f]{1,2})|([0-7]{1,3})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8}))"
)


def _chr(code: int) -> str:
    return chr(code) if code <= 0x10FFFF else ""


def _e_char(match: re.Match[str]) -> str:
    """The character an ``E'...'`` escape stands for: ``\\x62``, ``\\142``, ``\\u0062``..."""
    if match[1]:
        return "\\"
    hexa = match[2] or match[4] or match[5]
    return _chr(int(hexa, 16)) if hexa else _chr(int(match[3], 8))


def _readings(line: str, escapes: set[str]) -> set[str]:
    """``line`` as written and with every escape PostgreSQL decodes in a name or a string
    (``U&"d\\0062link"``, ``U&"d!0062link" UESCAPE '!'``, ``E'd\\x62link'``), decoded wherever
    it stands and again in what that gives (a string executed by a ``DO`` block is decoded
    twice): a name spelled with escapes is still that name, and a string may be executed."""
    decoders = [lambda text: _E_ESCAPE.sub(_e_char, text)]
    for esc in escapes:
        pattern = re.compile(re.escape(esc) + r"(?:\+([0-9A-Fa-f]{6})|([0-9A-Fa-f]{4}))")
        decoders.append(lambda text, p=pattern: p.sub(lambda m: _chr(int(m[1] or m[2], 16)), text))
    readings, latest = {line}, {line}
    for _ in range(3):
        latest = {decode(text) for text in latest for decode in decoders} - readings
        readings |= latest
    return readings


def other_session_calls(sql: str) -> list[Refused]:
    """Lines naming a function that runs SQL in another session (dblink, pg_background).

    Searched in the whole text, strings, dollar bodies and comments included, because a ``DO``
    block runs its body at once: refusing a mention in a comment is the price of never missing
    a call. SQL assembled at run time from pieces (``'dbl' || 'ink_exec'``) is not found: that
    needs the migration role to have no EXECUTE on those functions (docs/runbook.md).
    """
    escapes = {"\\", *(m[1] for m in _UESCAPE.finditer(sql))}
    found = []
    for number, line in enumerate(sql.splitlines(), start=1):
        for reading in _readings(line, escapes):
            if match := _OTHER_SESSION.search(reading):
                found.append(Refused(number, match.group().lower(), OTHER_SESSION))
                break
    return found


def refused_statements(sql: str) -> list[Refused]:
    """Statements of ``sql`` that would end, split or refuse the job's transaction, or that
    run SQL in another session (which commits on its own), in line order."""
    refused = []
    for statement in split_statements(sql):
        why = _why(statement.words)
        if why is not None:
            shown = " ".join(w for w in statement.words[:4] if w != _QUOTED)
            refused.append(Refused(statement.line, shown, why))
    return sorted(refused + other_session_calls(sql), key=lambda r: r.line)
