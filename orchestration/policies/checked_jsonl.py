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

    Raises ``error`` for another format, a missing header or trailer, or a count or checksum
    that does not match (a truncated or edited file).
    """
    items: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    trailer = None
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            if item["kind"] == "end":
                trailer = item
                continue
            digest.update(line.encode())
            items.append(item)
    if not items or items[0].get("kind") != "header" or trailer is None:
        raise error(f"{path}: truncated file (no header or no trailer)")
    if items[0].get("format") != fmt:
        raise error(f"{path}: unknown format {items[0].get('format')!r}")
    counted = sum(1 for item in items if item["kind"] == counted_kind)
    if trailer.get(count_key) != counted or trailer.get("sha256") != digest.hexdigest():
        raise error(f"{path}: checksum or {count_key} count mismatch")
    return items
