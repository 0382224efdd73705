"""Endpoint picking: priority and capacity, least load, prefix affinity with bounded load, health."""

from __future__ import annotations

import random

import pytest

from slm_gateway.picking import AffinityTable, Candidate, effective_load, load_bound, pick, prefix_chain


def c(url: str, load: int = 0, priority: int = 0, capacity: int = 4, healthy: bool = True) -> Candidate:
    return Candidate(
        url=url,
        deployment=url.split("-", maxsplit=1)[0],
        priority=priority,
        capacity=capacity,
        load=load,
        healthy=healthy,
    )


def first(cands: list[Candidate], matches: dict[str, int] | None = None, tiebreak: int = 7) -> str:
    return pick(cands, matches or {}, load_factor=1.25, tiebreak=tiebreak)[0].url


@pytest.mark.parametrize(
    ("cands", "matches", "want"),
    [
        # least load wins
        ([c("a", 3), c("b", 1), c("c", 2)], {}, "b"),
        # a failing endpoint is set aside even if idle
        ([c("a", 0, healthy=False), c("b", 2)], {}, "b"),
        # ...unless nothing else is left
        ([c("a", 0, healthy=False)], {}, "a"),
        # higher priority (GPU) first while it has capacity
        ([c("gpu-1", 3, priority=10), c("cpu-1", 0)], {}, "gpu-1"),
        # a full high-priority tier spills to the next one
        ([c("gpu-1", 4, priority=10), c("cpu-1", 0)], {}, "cpu-1"),
        # every tier full: least relative load across all
        ([c("gpu-1", 8, priority=10, capacity=4), c("cpu-1", 5, capacity=4)], {}, "cpu-1"),
        # prefix affinity beats a lighter endpoint...
        ([c("a", 1), c("b", 0)], {"a": 3}, "a"),
        # ...the deepest match wins among holders
        ([c("a", 0), c("b", 0)], {"a": 1, "b": 4}, "b"),
        # ...but not beyond the load bound (ceil(1.25 * (3+0+1) / 2) = 3: a at 3 would go to 4)
        ([c("a", 3), c("b", 0)], {"a": 9}, "b"),
        # affinity never pulls traffic to an unhealthy endpoint
        ([c("a", 0, healthy=False), c("b", 1)], {"a": 5}, "b"),
        # nor into a lower-priority tier while the higher one has room
        ([c("gpu-1", 1, priority=10), c("cpu-1", 0)], {"cpu-1": 5}, "gpu-1"),
    ],
)
def test_pick_table(cands: list[Candidate], matches: dict[str, int], want: str) -> None:
    assert first(cands, matches) == want


def test_fallbacks_follow_the_pick_healthy_first_then_priority() -> None:
    order = pick(
        [c("cpu-1", 0), c("gpu-1", 1, priority=10), c("gpu-2", 0, priority=10, healthy=False)],
        {},
        load_factor=1.25,
        tiebreak=1,
    )
    assert [x.url for x in order] == ["gpu-1", "cpu-1", "gpu-2"]
    assert pick([], {}, load_factor=1.25, tiebreak=1) == []


def test_ties_are_spread_by_the_request_hash_and_stable_per_request() -> None:
    cands = [c("a"), c("b"), c("c")]
    picks = {first(cands, tiebreak=t) for t in range(64)}
    assert picks == {"a", "b", "c"}
    assert all(first(cands, tiebreak=5) == first(list(reversed(cands)), tiebreak=5) for _ in range(3))


def test_bounded_load_holds_under_shuffled_inputs() -> None:
    """Whatever the order and the matches, an affinity pick never exceeds the bound."""
    rng = random.Random(0)
    for _ in range(2000):
        cands = [c(f"e{i}", rng.randint(0, 6), capacity=8) for i in range(rng.randint(1, 5))]
        rng.shuffle(cands)
        matches = {x.url: rng.randint(0, 4) for x in cands if rng.random() < 0.5}
        chosen = pick(cands, matches, load_factor=1.25, tiebreak=rng.getrandbits(63))[0]
        if matches.get(chosen.url):
            assert chosen.load + 1 <= load_bound(cands, 1.25)
        else:
            assert chosen.load == min(x.load for x in cands)


def test_load_bound_values() -> None:
    assert load_bound([c("a", 0), c("b", 0)], 1.25) == 1
    assert load_bound([c("a", 3), c("b", 0)], 1.25) == 3
    assert load_bound([c("a", 4), c("b", 4)], 1.0) == 5


def test_effective_load_counts_only_foreign_requests_from_the_scrape() -> None:
    assert effective_load(2, None, 0) == 2
    assert effective_load(2, 5, 2) == 5  # 3 requests from elsewhere
    assert effective_load(3, 2, 2) == 3  # the pod only saw ours
    assert effective_load(0, 4, 0) == 4


def test_prefix_chain_shares_leading_blocks_and_drops_the_partial_tail() -> None:
    system = "You are a terse assistant. " * 20  # 540 chars: two 256-char blocks
    a = prefix_chain(system + "user: tell me about cats", 256, 128)
    b = prefix_chain(system + "user: what about dogs?", 256, 128)
    assert len(a) == 2 and a == b
    longer = prefix_chain(system + "x" * 600, 256, 128)
    assert longer[:2] == a and len(longer) == 4
    assert prefix_chain("short", 256, 128) == ()
    assert len(prefix_chain("y" * 10_000, 256, 3)) == 3
    assert prefix_chain("z" * 512, 256, 128) != prefix_chain("w" * 256 + "z" * 256, 256, 128)


def test_affinity_table_deepest_match_lru_and_forget() -> None:
    t = AffinityTable(max_entries=4)
    t.record((1, 2, 3), "a")
    t.record((1, 2, 9), "b")  # b served the shared (1, 2) prefix last
    assert t.matches((1, 2, 3, 4)) == {"a": 3, "b": 2}
    assert t.matches((1, 2, 9)) == {"b": 3}
    assert t.matches((5,)) == {}
    t.record((7, 8), "c")  # 6 entries > 4: the oldest (3, then 1) go
    assert len(t) == 4
    assert "a" not in t.matches((1, 2, 3))
    t.forget("c")
    assert t.matches((7, 8)) == {}
