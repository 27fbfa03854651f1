"""Routing: which live gateway polls a target.

Candidates are exactly the live gateways of the target's partition (address spaces of partitions
overlap, so another partition's gateway would poll a different device), narrowed to the target's
domain when it has one. The least-loaded candidate wins; ties go to the smallest id so a tick is
deterministic. Each pick counts against the winner, so one tick spreads a burst evenly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from orchestration.gateways.registry import Gateway


class Router:
    def __init__(self, live: Iterable[Gateway], load: dict[str, int] | None = None) -> None:
        self._gateways = list(live)
        self.load: dict[str, int] = {g.id: 0 for g in self._gateways}
        for gateway_id, n in (load or {}).items():
            if gateway_id in self.load:
                self.load[gateway_id] = n
        # (partition, domain) -> heap of (load, id); lazily built, kept in step with self.load.
        self._heaps: dict[tuple[str, str | None], list[tuple[int, str]]] = {}

    @property
    def gateways(self) -> list[Gateway]:
        return list(self._gateways)

    def candidates(self, partition: str, domain: str | None) -> list[Gateway]:
        return [g for g in self._gateways if g.serves(partition, domain)]

    def pick(self, partition: str, domain: str | None) -> str | None:
        """The least-loaded candidate's id (its load incremented), or None when there is none."""
        key = (partition, domain)
        heap = self._heaps.get(key)
        if heap is None:
            heap = [(self.load[g.id], g.id) for g in self.candidates(partition, domain)]
            heapq.heapify(heap)
            self._heaps[key] = heap
        while heap:
            load, gateway_id = heap[0]
            if load != self.load[gateway_id]:  # stale entry: another key's pick moved it
                heapq.heapreplace(heap, (self.load[gateway_id], gateway_id))
                continue
            self.load[gateway_id] = load + 1
            heapq.heapreplace(heap, (load + 1, gateway_id))
            return gateway_id
        return None

    def release(self, gateway_id: str | None) -> None:
        """A task left this gateway (reassigned away): it no longer counts against it."""
        if gateway_id in self.load and self.load[gateway_id] > 0:
            self.load[gateway_id] -= 1
            for heap in self._heaps.values():
                if any(g == gateway_id for _, g in heap):
                    heapq.heappush(heap, (self.load[gateway_id], gateway_id))
