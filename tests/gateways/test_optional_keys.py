"""Sorting and reporting over optional values: a domain may be None beside domains that are set.

``poll_devices`` used to sort ``(partition, domain)`` keys directly, and ``None < "site-a"`` is a
``TypeError``: with one partition waiting both with and without a domain, every tick failed
(three attempts) before the no-gateway warning was logged.
"""

import itertools
import logging
import random

from orchestration.gateways import registry
from orchestration.gateways.db import make_engine
from orchestration.gateways.jobs import poll_devices_job
from orchestration.gateways.ops import waiting_key, waiting_rows
from resources.record_store import RecordStoreResource
from tests.support.results import step_metadata


def test_partition_waiting_with_and_without_a_domain_succeeds_and_warns_both(
    instance, sqlite_store_url
):
    engine = make_engine(sqlite_store_url)
    registry.upsert_target(engine, "P1", "127.0.0.1:9", "tcp", "site-a", 3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:10", "tcp", None, 3600)
    registry.upsert_target(engine, "P1", "127.0.0.1:11", "tcp", "site-b", 3600)
    registry.upsert_target(engine, "P0", "127.0.0.1:12", "tcp", None, 3600)
    resources = {"record_store": RecordStoreResource(url=sqlite_store_url)}

    result = poll_devices_job.execute_in_process(instance=instance, resources=resources)

    assert result.success
    steps = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert len(steps) == 1  # no retry: the first attempt went through
    md = step_metadata(result)
    assert md["no_gateway"] == 4
    assert md["no_gateway_by_partition"] == [
        {"partition": "P0", "domain": None, "tasks": 1},
        {"partition": "P1", "domain": None, "tasks": 1},
        {"partition": "P1", "domain": "site-a", "tasks": 1},
        {"partition": "P1", "domain": "site-b", "tasks": 1},
    ]
    warnings = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.level == logging.WARNING and "no live gateway" in e.user_message
    ]
    assert [w.split(" for ", 1)[1] for w in warnings] == [
        "P0",
        "P1",
        "P1 / domain site-a",
        "P1 / domain site-b",
    ]
    engine.dispose()


PARTITIONS = ["", "P1", "P2", "p1"]
DOMAINS = [None, "", "a", "site-a", "Z"]


def test_waiting_key_is_a_total_order_over_mixed_none_and_str():
    """Every (partition, domain) pair of mixed None/str values, in 200 random orders: sorting
    never raises, gives one order whatever the input order, partition first, no domain before
    any domain (the empty one included), and no two distinct pairs compare equal."""
    pairs = list(itertools.product(PARTITIONS, DOMAINS))
    items = [(pair, n) for n, pair in enumerate(pairs)]
    rng = random.Random(14)
    expected = sorted(items, key=waiting_key)
    for _ in range(200):
        shuffled = items[:]
        rng.shuffle(shuffled)
        assert sorted(shuffled, key=waiting_key) == expected
    keys = [waiting_key(i) for i in expected]
    assert all(a < b for a, b in itertools.pairwise(keys))  # strict: injective on pairs
    for (p1, d1), (p2, d2) in itertools.pairwise(pair for pair, _ in expected):
        assert p1 <= p2
        if p1 == p2:
            assert d1 is None or (d2 is not None and d1 < d2)
    for partition in PARTITIONS:
        first = next(pair for pair, _ in expected if pair[0] == partition)
        assert first == (partition, None)


def test_waiting_rows_from_a_counter_with_none_and_str_domains():
    rows = waiting_rows({("P1", "site-a"): 2, ("P1", None): 3, ("P0", "x"): 1})
    assert [(r["partition"], r["domain"], r["tasks"]) for r in rows] == [
        ("P0", "x", 1),
        ("P1", None, 3),
        ("P1", "site-a", 2),
    ]
