"""Bootstrap in smart mode: creates the platform schema on a fresh install, syncs it otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resources.platform_api import PlatformApiClient


@dataclass(frozen=True)
class BootstrapResult:
    mode: str
    tables_created: list[str]
    columns_added: dict[str, list[str]]
    tables_existing: int

    @property
    def columns_added_count(self) -> int:
        return sum(len(cols) for cols in self.columns_added.values())

    def summary(self) -> str:
        if self.mode == "fresh":
            return f"fresh install: created {len(self.tables_created)} tables"
        return (
            f"sync: {self.tables_existing} tables existing, {len(self.tables_created)} created, "
            f"{self.columns_added_count} columns added"
        )


def run_bootstrap(client: PlatformApiClient, *, idempotency_key: str) -> BootstrapResult:
    body: dict[str, Any] = client.bootstrap(idempotency_key=idempotency_key)
    return BootstrapResult(
        mode=str(body.get("mode", "unknown")),
        tables_created=list(body.get("tables_created") or []),
        columns_added={k: list(v) for k, v in (body.get("columns_added") or {}).items()},
        tables_existing=int(body.get("tables_existing") or 0),
    )
