"""Archive files both archives share: gzip JSONL with a header line and a checksummed trailer.

A file is ``{"kind": "header", "format": …}``, the payload lines, then
``{"kind": "end", <count_key>: n, "sha256": …}`` over every line before it. It is written to
``.tmp``, fsynced and renamed, so a reader sees a whole file or none; reading it back checks the
format, the count and the checksum, which is what lets the archives delete the source rows.

Reading is bounded (docs/policies.md, "Reading limits"): one decompressed line is at most
``MAX_LINE_BYTES`` and one file at most ``MAX_FILE_BYTES``. The writers stay far below both: a
line is one Dagster event or one record-store row (a command run with its events, output tails
capped at 64 KiB), a file is one run's event log or one batch of at most 10,000 rows. Anything
larger is damage (or a gzip bomb) and is refused before it is held in memory.
"""

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024 * 1024


def write(
    dest: Path, lines: Iterable[str], count_key: str, count: int, *, deterministic: bool = False
) -> None:
    """Write ``lines`` (JSON, header first) and the trailer to ``dest`` atomically.

    ``deterministic``: ``mtime=0`` in the gzip header, so the same lines give the same bytes.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    extra: dict[str, Any] = {"filename": "", "mtime": 0} if deterministic else {}
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", **extra) as gz:
            for line in lines:
                data = (line + "\n").encode()
                digest.update(data)
                gz.write(data)
            trailer = {"kind": "end", count_key: count, "sha256": digest.hexdigest()}
            gz.write((json.dumps(trailer, sort_keys=True) + "\n").encode())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, dest)


def read(
    path: Path, fmt: str, counted_kind: str, count_key: str, error: type[Exception]
) -> list[dict[str, Any]]:
    """The lines of ``path`` before its trailer (header first), after checking all of it.

    Every kind of damage raises ``error`` with one line naming the file and what is wrong (never
    a bare ``EOFError``/``zlib.error``/``JSONDecodeError``/``RecursionError``): so a caller can
    set the file aside and a CLI can print one line. Refused: an empty file, a cut or corrupt
    gzip stream, bytes that are not UTF-8 JSON objects with a ``kind``, a line over
    ``MAX_LINE_BYTES`` or a file over ``MAX_FILE_BYTES`` decompressed (a gzip bomb), JSON nested
    too deeply to parse, another format, a missing header or trailer, anything after the
    trailer, a count or checksum that does not match (a truncated or edited file). An
    ``OSError`` of the file itself (missing, unreadable) is not damage and propagates.

    Two passes, so that memory is bounded before the file is trusted: the first checks all of
    it keeping nothing but one line at a time (a damaged file never costs more); only a file
    that verified is parsed again and kept, and it must give the same checksum again.
    """
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file (0 bytes)")
    try:
        digest = _verify(path, fmt, counted_kind, count_key)
        items: list[dict[str, Any]] = []
        again = hashlib.sha256()
        for raw, item in _scan(path):
            if item["kind"] == "end":
                break
            again.update(raw)
            items.append(item)
        if again.hexdigest() != digest:
            raise _Damage("changed while being read (read it again)")
    except _Damage as exc:
        raise error(f"{path}: {exc}") from exc
    return items


class _Damage(Exception):
    """What is wrong with a file, as one line (the path is added by ``read``)."""


def _verify(path: Path, fmt: str, counted_kind: str, count_key: str) -> str:
    """Check every line of ``path`` keeping only counts; sha256 of the lines before the trailer."""
    digest = hashlib.sha256()
    trailer: dict[str, Any] | None = None
    counted = 0
    number = 0
    for number, (raw, item) in enumerate(_scan(path), start=1):
        if number == 1:
            _check_header(item, fmt)
        if trailer is not None:
            raise _Damage(f"line {number} follows the trailer")
        if item["kind"] == "end":
            trailer = item
            continue
        digest.update(raw)
        counted += item["kind"] == counted_kind
    if number == 0:
        _check_header({}, fmt)  # a gzip stream of no lines at all
    if trailer is None:
        raise _Damage("no trailer (the file was cut short)")
    if trailer.get(count_key) != counted:
        raise _Damage(
            f"{count_key} count mismatch: the trailer says {trailer.get(count_key)!r}, "
            f"the file holds {counted}"
        )
    if trailer.get("sha256") != digest.hexdigest():
        raise _Damage("checksum mismatch: the content is not what was written (edited?)")
    return digest.hexdigest()


def _check_header(item: dict[str, Any], fmt: str) -> None:
    """The first line must be this format's header: checked first, so a foreign file stops at
    line 1 instead of being read to its end."""
    if item.get("kind") != "header":
        raise _Damage("no header line (not an archive file, or its start is damaged)")
    if item.get("format") != fmt:
        raise _Damage(f"unknown format {_short(item.get('format'))} (expected {fmt!r})")


def _scan(path: Path) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(raw line, parsed line) one at a time, within the size caps, or ``_Damage``."""
    number = 0
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while raw := fh.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise _Damage(
                        f"line {number} is over {_mib(MAX_LINE_BYTES)} decompressed, longer than "
                        "any line the archive writes (a damaged file or a gzip bomb)"
                    )
                total += len(raw)
                if total > MAX_FILE_BYTES:
                    raise _Damage(
                        f"over {_mib(MAX_FILE_BYTES)} decompressed by line {number}, more than "
                        "the archive writes to one file (a damaged file or a gzip bomb)"
                    )
                yield raw, _item(raw, number)
    except EOFError as exc:
        raise _Damage(f"gzip stream cut short {_where(number)} (truncated file)") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _Damage(f"not a valid gzip stream {_where(number)} ({_first_line(exc)})") from exc


def _item(raw: bytes, number: int) -> dict[str, Any]:
    """One line as a JSON object with a ``kind``, or ``_Damage`` naming the line."""
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Damage(f"line {number} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise _Damage(f"line {number} is not JSON ({exc.msg})") from exc
    except RecursionError as exc:  # the C decoder's depth guard; no writer nests this deep
        raise _Damage(f"line {number} is JSON nested too deeply to read") from exc
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
        raise _Damage(f"line {number} is not an archive record (no 'kind')")
    return item


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}… ({len(text)} characters)"


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"


def _where(lines_read: int) -> str:
    return f"after line {lines_read}" if lines_read else "before its first line"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
