"""Just enough of a PostgreSQL lexer to find the statements of a migration file and their
leading keywords, so that transaction control can be refused without being fooled by text.

Words inside string literals ('...', E'...' with backslash escapes), quoted identifiers
("..."), dollar-quoted bodies ($$...$$, $tag$...$tag$), ``--`` and (nested) ``/* */`` comments
are not keywords: a function body that says ``COMMIT`` in a comment or a string, or a plpgsql
``DO $$ BEGIN ... END $$`` block, is fine. Statements end at a ``;`` outside parentheses (rule
actions ``DO INSTEAD (...; ...)``) and outside the ``BEGIN ... END`` body of a
``CREATE FUNCTION/PROCEDURE ... BEGIN ATOMIC`` (or a SQLite ``CREATE TRIGGER``), the same
heuristic psql uses to split a script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
# Placeholder "words" for quoted things: they are never keywords but still count as tokens.
_QUOTED = "<quoted>"

TRANSACTION_CONTROL = "transaction control: the job opens and commits the transaction"
NOT_IN_TRANSACTION = "cannot run inside a transaction block"


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


def _skip_quoted(sql: str, start: int, quote: str, backslash: bool) -> int:
    """End of the literal opened at ``start``; a doubled quote is one quote character."""
    i = start + 1
    while i < len(sql):
        char = sql[i]
        if backslash and char == "\\":
            i += 2
            continue
        if char == quote:
            if sql[i + 1 : i + 2] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    kind = "quoted identifier" if quote == '"' else "string literal"
    raise SqlScanError(_line_at(sql, start), f"unterminated {kind}")


def _body_prefix(words: list[str]) -> bool:
    """CREATE [OR REPLACE] [TEMP|TEMPORARY] FUNCTION|PROCEDURE|TRIGGER: a body may hold ';'."""
    rest = words[1:]
    if not words or words[0] != "CREATE":
        return False
    if rest[:2] == ["OR", "REPLACE"]:
        rest = rest[2:]
    if rest[:1] in (["TEMP"], ["TEMPORARY"]):
        rest = rest[1:]
    return rest[:1] in (["FUNCTION"], ["PROCEDURE"], ["TRIGGER"])


def split_statements(sql: str) -> list[Statement]:
    """Top-level statements of ``sql`` with their words; raises ``SqlScanError`` if unsure."""
    statements: list[Statement] = []
    words: list[str] = []
    first_pos = -1
    parens = begin_depth = 0
    i = 0

    def finish() -> None:
        nonlocal words, first_pos, parens, begin_depth
        if words:
            statements.append(Statement(_line_at(sql, first_pos), tuple(words)))
        words, first_pos, parens, begin_depth = [], -1, 0, 0

    def token(pos: int, word: str) -> None:
        nonlocal first_pos, begin_depth
        if not words:
            first_pos = pos
        words.append(word)
        if parens == 0 and _body_prefix(words):
            if word == "BEGIN" or (word == "CASE" and begin_depth > 0):
                begin_depth += 1
            elif word == "END" and begin_depth > 0:
                begin_depth -= 1

    while i < len(sql):
        char, pair = sql[i], sql[i : i + 2]
        if pair == "--":
            newline = sql.find("\n", i)
            i = len(sql) if newline < 0 else newline + 1
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
        elif word := _WORD.match(sql, i):
            text = word.group()
            if text in ("E", "e") and sql[word.end() : word.end() + 1] == "'":
                token(i, _QUOTED)  # E'...' : backslash escapes, \' does not end it
                i = _skip_quoted(sql, word.end(), "'", backslash=True)
            else:
                token(i, text.upper())
                i = word.end()
        elif number := _NUMBER.match(sql, i):
            i = number.end()
        elif char == "(":
            parens, i = parens + 1, i + 1
        elif char == ")":
            parens, i = max(parens - 1, 0), i + 1
        elif char == ";" and parens == 0 and begin_depth == 0:
            finish()
            i += 1
        else:
            if not char.isspace() and char != ";" and not words:
                token(i, char)
            i += 1
    finish()
    return statements


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


def refused_statements(sql: str) -> list[Refused]:
    """Statements of ``sql`` that would end, split or refuse the job's transaction."""
    refused = []
    for statement in split_statements(sql):
        why = _why(statement.words)
        if why is not None:
            shown = " ".join(w for w in statement.words[:4] if w != _QUOTED)
            refused.append(Refused(statement.line, shown, why))
    return refused
