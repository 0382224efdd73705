"""Per-request endpoint picking, as pure functions over plain values (table-tested, no I/O).

A request is sent to one endpoint of the deployments serving its model:

1. **Health**: endpoints that failed recently are set aside (all of them only if nothing else is left).
2. **Priority and capacity**: the highest-priority deployment with an endpoint below its capacity
   wins (a GPU deployment before its CPU fallback); when every one is full, all are considered.
3. **Prefix affinity with bounded load**: the prompt is cut into blocks whose chained hashes are
   remembered with the endpoint that served them. The endpoint holding the longest matching
   prefix (a shared system prompt, a conversation's history: what sits in its KV cache) is taken
   while its load stays under `load_factor` times the mean; otherwise the least-loaded one is.
4. **Least load**: load is the gateway's own outstanding requests plus what the pod's
   `vllm:num_requests_running` + `vllm:num_requests_waiting` report beyond them. Ties are broken by
   a hash of the request's prefix (rendezvous hashing), so equal endpoints share new traffic.

The result is an ordered list: the pick, then the fallbacks a retry walks.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One endpoint as the picker sees it at this instant."""

    url: str
    deployment: str
    priority: int = 0
    capacity: int = 4
    load: int = 0
    healthy: bool = True


def effective_load(outstanding: int, scraped: int | None, outstanding_at_scrape: int) -> int:
    """Own in-flight requests plus the pod's reported ones that are not ours (other gateways, direct)."""
    if scraped is None:
        return outstanding
    return outstanding + max(0, scraped - outstanding_at_scrape)


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def prefix_chain(text: str, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """Chained hashes of the complete `block_chars`-sized blocks of `text` (first `max_blocks`).

    Block i's hash covers blocks 0..i, so equal hashes mean equal prefixes. A trailing partial block
    is left out: the next turn of a conversation changes it.
    """
    chain: list[int] = []
    previous = b""
    encoded = text.encode("utf-8", "surrogatepass")
    step = block_chars
    for start in range(0, min(len(encoded) // step, max_blocks) * step, step):
        h = _digest(previous + encoded[start : start + step])
        chain.append(h)
        previous = h.to_bytes(8, "big")
    return tuple(chain)


class AffinityTable:
    """Prefix-block hash → the endpoint that last served it; least recently used entries go first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._owner: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def matches(self, chain: Sequence[int]) -> dict[str, int]:
        """For each endpoint, how many leading blocks of `chain` it served (deepest match wins)."""
        found: dict[str, int] = {}
        for depth in range(len(chain), 0, -1):
            url = self._owner.get(chain[depth - 1])
            if url is not None and url not in found:
                found[url] = depth
        return found

    def record(self, chain: Sequence[int], url: str) -> None:
        for h in chain:
            self._owner[h] = url
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def forget(self, url: str) -> None:
        """Drop an endpoint that left the fleet (its cache is gone with it)."""
        for h in [h for h, u in self._owner.items() if u == url]:
            del self._owner[h]


def _tier(pool: Sequence[Candidate]) -> list[Candidate]:
    """The highest-priority group with spare capacity; everything when all are full."""
    for priority in sorted({c.priority for c in pool}, reverse=True):
        group = [c for c in pool if c.priority == priority]
        if any(c.load < c.capacity for c in group):
            return group
    return list(pool)


def load_bound(tier: Sequence[Candidate], load_factor: float) -> int:
    """Most requests one endpoint may hold to still take affinity traffic (bounded-load hashing)."""
    total = sum(c.load for c in tier) + 1
    return max(1, math.ceil(load_factor * total / len(tier)))


def pick(
    candidates: Sequence[Candidate],
    matches: Mapping[str, int],
    *,
    load_factor: float,
    tiebreak: int,
) -> list[Candidate]:
    """Endpoints in the order to try them: the pick first, then the fallbacks. Empty if none."""
    if not candidates:
        return []
    pool = [c for c in candidates if c.healthy] or list(candidates)

    def spread(c: Candidate) -> int:  # rendezvous hash: stable per (request prefix, endpoint)
        return _digest(tiebreak.to_bytes(8, "big", signed=False) + c.url.encode())

    def relative(c: Candidate) -> float:
        return c.load / c.capacity

    tier = _tier(pool)
    bound = load_bound(tier, load_factor)
    sticky = [c for c in tier if matches.get(c.url, 0) > 0 and c.load + 1 <= bound]
    if sticky:
        first = min(sticky, key=lambda c: (-matches[c.url], relative(c), spread(c)))
    else:
        first = min(tier, key=lambda c: (relative(c), spread(c)))
    rest = sorted(
        (c for c in candidates if c is not first),
        key=lambda c: (not c.healthy, -c.priority, relative(c), spread(c)),
    )
    return [first, *rest]
