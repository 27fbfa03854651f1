"""Routing rules as plain functions: partition always, domain when the target has one."""

from orchestration.gateways.registry import Gateway
from orchestration.gateways.routing import Router


def gw(id, partition, *domains):
    return Gateway(id=id, partition=partition, domains=tuple(domains), lease_expires_at=1e12)


def test_candidates_never_cross_partitions_and_narrow_to_domain():
    router = Router([gw("a", "P1"), gw("b", "P1", "site-a"), gw("c", "P2", "site-a")])
    assert {g.id for g in router.candidates("P1", None)} == {"a", "b"}
    assert {g.id for g in router.candidates("P1", "site-a")} == {"b"}
    assert {g.id for g in router.candidates("P2", None)} == {"c"}
    assert router.candidates("P2", "site-b") == []
    assert router.pick("P3", None) is None


def test_least_loaded_wins_and_picks_spread_a_burst():
    router = Router([gw("a", "P1"), gw("b", "P1"), gw("c", "P1")], load={"a": 5, "b": 0, "c": 1})
    picks = [router.pick("P1", None) for _ in range(6)]
    assert picks == ["b", "b", "c", "b", "c", "b"]  # ties break by id
    assert router.load == {"a": 5, "b": 4, "c": 3}


def test_picks_through_one_key_are_seen_by_another():
    router = Router([gw("a", "P1", "site-a"), gw("b", "P1")])
    for _ in range(3):
        assert router.pick("P1", "site-a") == "a"
    assert [router.pick("P1", None) for _ in range(3)] == ["b", "b", "b"]
    assert router.pick("P1", None) == "a"  # 3 vs 3: tie → smallest id
