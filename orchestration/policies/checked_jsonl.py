"""Archive files both archives share: gzip JSONL with a header line and a checksummed trailer.

A file is ``{"kind": "header", "format": …}``, the payload lines, then
``{"kind": "end", <count_key>: n, "sha256": …}`` over every line before it. It is written to
``.tmp``, fsynced and renamed, so a reader sees a whole file or none; reading it back checks the
format, the count and the checksum, which is what lets the archives delete the source rows.
"""

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
    a bare ``EOFError``/``zlib.error``/``JSONDecodeError``): so a caller can set the file aside
    and a CLI can print one line. Refused: an empty file, a cut or corrupt gzip stream, bytes
    that are not UTF-8 JSON objects with a ``kind``, another format, a missing header or trailer,
    anything after the trailer, a count or checksum that does not match (a truncated or edited
    file). An ``OSError`` of the file itself (missing, unreadable) is not damage and propagates.
    """
    if path.stat().st_size == 0:
        raise error(f"{path}: empty file (0 bytes)")
    try:
        items, trailer, digest = _parse(path)
    except _Damage as exc:
        raise error(f"{path}: {exc}") from exc
    if not items or items[0].get("kind") != "header":
        raise error(f"{path}: no header line (not an archive file, or its start is damaged)")
    if items[0].get("format") != fmt:
        raise error(f"{path}: unknown format {items[0].get('format')!r} (expected {fmt!r})")
    if trailer is None:
        raise error(f"{path}: no trailer (the file was cut short)")
    counted = sum(1 for item in items if item["kind"] == counted_kind)
    if trailer.get(count_key) != counted:
        raise error(
            f"{path}: {count_key} count mismatch: the trailer says {trailer.get(count_key)!r}, "
            f"the file holds {counted}"
        )
    if trailer.get("sha256") != digest:
        raise error(f"{path}: checksum mismatch: the content is not what was written (edited?)")
    return items


class _Damage(Exception):
    """What is wrong with a file, as one line (the path is added by ``read``)."""


def _parse(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """(items before the trailer, the trailer, sha256 of those lines), or ``_Damage``."""
    items: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    trailer = None
    number = 0
    try:
        with gzip.open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                item = _item(raw, number)
                if trailer is not None:
                    raise _Damage(f"line {number} follows the trailer")
                if item["kind"] == "end":
                    trailer = item
                    continue
                digest.update(raw)
                items.append(item)
    except EOFError as exc:
        raise _Damage(f"gzip stream cut short {_where(number)} (truncated file)") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise _Damage(f"not a valid gzip stream {_where(number)} ({_first_line(exc)})") from exc
    return items, trailer, digest.hexdigest()


def _item(raw: bytes, number: int) -> dict[str, Any]:
    """One line as a JSON object with a ``kind``, or ``_Damage`` naming the line."""
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Damage(f"line {number} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise _Damage(f"line {number} is not JSON ({exc.msg})") from exc
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
        raise _Damage(f"line {number} is not an archive record (no 'kind')")
    return item


def _where(lines_read: int) -> str:
    return f"after line {lines_read}" if lines_read else "before its first line"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
