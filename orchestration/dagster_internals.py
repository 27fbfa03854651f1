"""The one place production code reaches into Dagster's private modules, and why.

Everything else in ``orchestration/``, ``assets/`` and ``resources/`` uses the public ``dagster``
namespace (``import dagster as dg``). A Dagster upgrade that moves or renames something private
breaks this module only; ``tests/core/test_private_imports.py`` lists every private import of the
shipped packages, so adding one anywhere is a visible decision. Per use, why no public API serves:

``DeserializationError`` (``dagster_shared.serdes.errors``)
    ``dg.deserialize_value`` (public) raises it for a well-formed JSON value that is not a known
    serdes object (an archive written by another tool, or by a Dagster with other classes). The
    run archive turns it into its own clear ``ArchiveError``; Dagster exports the function but not
    the error class it raises, and catching ``Exception`` instead would hide real bugs.

``SqliteEventLogStorage`` (``dagster._core.storage.event_log.sqlite.sqlite_event_log``)
    On SQLite storage Dagster keeps one event-log database file per run, and
    ``DagsterInstance.delete_run`` (public) empties it but leaves it on disk, so an archived
    instance would never shrink. There is no public API to find or drop that file:
    :func:`forget_sqlite_shard` needs the storage class (to tell SQLite from PostgreSQL storage),
    ``path_for_shard`` and the storage's cache of initialized shards (``_initialized_dbs``), which
    must forget the run so a later write recreates the file's schema instead of assuming it.

Private attributes used outside this module (no import, so the test above cannot list them):
``QueuedRunCoordinator._instance`` in ``run_coordinator.py``: a subclass of the public
coordinator adds tags to a run before queueing it; the coordinator receives its instance through
Dagster's ``ConfigurableClass`` machinery and exposes it only under that name.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster_shared.serdes.errors import DeserializationError

__all__ = ["DeserializationError", "forget_sqlite_shard"]


def forget_sqlite_shard(instance: dg.DagsterInstance, run_id: str) -> list[Path]:
    """The files of a deleted run's SQLite event-log shard (to remove), the shard forgotten.

    Empty on any other event-log storage (PostgreSQL keeps events in shared tables). The caller
    removes the files: this module only answers what Dagster's internals know.
    """
    storage = instance.event_log_storage
    if not isinstance(storage, SqliteEventLogStorage):
        return []
    shard = Path(storage.path_for_shard(run_id))
    storage._initialized_dbs.discard(run_id)
    return [shard, shard.with_name(shard.name + "-wal"), shard.with_name(shard.name + "-shm")]
