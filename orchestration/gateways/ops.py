"""The poll_devices op: one coordinator tick, with the gateway registry shown as run metadata."""

import time

import dagster as dg

from orchestration.gateways.assignment import run_tick
from orchestration.gateways.registry import gateway_overview
from resources.record_store import RecordStoreResource


def _gateways_markdown(rows: list[dict]) -> str:
    lines = [
        "| gateway | partition | domains | live | held tasks | lease left (s) |",
        "|---|---|---|---|---|---|",
    ]
    for g in rows:
        domains = ", ".join(g["domains"]) or "—"
        live = "yes" if g["live"] else "**no**"
        lines.append(
            f"| {g['id']} | {g['partition']} | {domains} | {live} | {g['held_tasks']} "
            f"| {g['lease_left_s']} |"
        )
    return "\n".join(lines)


def waiting_key(item: tuple[tuple[str, str | None], int]) -> tuple[str, bool, str]:
    """Sort key of a ``((partition, domain), tasks)`` pair that always compares.

    ``domain`` is None for targets any gateway of the partition may poll; ``None < "x"`` raises
    ``TypeError``, so a partition waiting both with and without a domain used to fail the tick
    before its warnings were logged. Order: partition, then no domain first, then domain.
    """
    (partition, domain), _tasks = item
    return (partition or "", domain is not None, domain or "")


def waiting_rows(no_gateway: dict[tuple[str, str | None], int]) -> list[dict]:
    """One row per (partition, domain) with waiting tasks, in ``waiting_key`` order."""
    return [
        {"partition": p, "domain": d, "tasks": n}
        for (p, d), n in sorted(no_gateway.items(), key=waiting_key)
    ]


class PollDevicesConfig(dg.Config):
    max_new_tasks: int = 50_000
    keep_done_seconds: float = 3600.0


@dg.op(
    description="Creates poll tasks for due targets, routes them to the least-loaded live gateway "
    "of the target's partition (and domain), fails over tasks of expired gateways, records status."
)
def poll_devices_tick(
    context: dg.OpExecutionContext, config: PollDevicesConfig, record_store: RecordStoreResource
) -> None:
    engine = record_store.engine()
    report = run_tick(
        engine, max_new=config.max_new_tasks, keep_done_seconds=config.keep_done_seconds
    )
    context.log.info(f"Tick: {report.summary()}")
    for move in report.reassigned:
        context.log.info(
            f"Task {move['task']} failed over from {move['from']} ({move['was']}) "
            f"to {move['to'] or 'no gateway'}"
        )
    waiting = waiting_rows(report.no_gateway)
    for w in waiting:
        where = w["partition"] + (f" / domain {w['domain']}" if w["domain"] else "")
        context.log.warning(f"{w['tasks']} poll task(s) wait with no live gateway for {where}")
    gateways = gateway_overview(engine, time.time())
    context.add_output_metadata(
        {
            "created": report.created,
            "assigned": report.assigned,
            "reassigned": len(report.reassigned),
            "recorded": report.recorded,
            "purged": report.purged,
            "no_gateway": report.waiting,
            "no_gateway_by_partition": dg.MetadataValue.json(waiting),
            "tick_ms": round(report.seconds * 1000, 1),
            "live_gateways": sum(1 for g in gateways if g["live"]),
            "gateways": dg.MetadataValue.md(_gateways_markdown(gateways)),
            "gateways_json": dg.MetadataValue.json(gateways),
        }
    )
