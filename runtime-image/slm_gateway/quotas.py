"""Per-key request and token rates: token buckets over an injected clock (pure, no sleeps).

A bucket holds up to one minute's allowance and refills continuously. A request takes one from
the requests bucket; tokens are charged after the answer (the count is known only then), so the
tokens bucket may go below zero, and the key is refused until it is positive again. A refusal
carries the seconds until the request would be admitted (`Retry-After`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slm_gateway.access import ApiKey


@dataclass
class Bucket:
    per_minute: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(float(self.per_minute), self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, need: float) -> float:
        """Seconds until the level reaches `need` (0 if it already has)."""
        return max(0.0, (need - self.level) / self.rate)


@dataclass(frozen=True)
class Refusal:
    reason: str  # "requests" or "tokens"
    retry_after: int
    message: str


class Quotas:
    """Buckets per key id; a key whose limits change gets fresh buckets."""

    def __init__(self) -> None:
        self._requests: dict[str, Bucket] = {}
        self._tokens: dict[str, Bucket] = {}

    @staticmethod
    def _bucket(table: dict[str, Bucket], key_id: str, per_minute: int, now: float) -> Bucket:
        b = table.get(key_id)
        if b is None or b.per_minute != per_minute:
            b = table[key_id] = Bucket(per_minute, float(per_minute), now)
        b.refill(now)
        return b

    def admit(self, key: ApiKey, now: float) -> Refusal | None:
        """Take one request from `key`'s allowance, or say why not and for how long."""
        tokens = None
        if key.tokens_per_minute is not None:
            tokens = self._bucket(self._tokens, key.id, key.tokens_per_minute, now)
            if tokens.level <= 0:
                wait = max(1, math.ceil(tokens.wait_for(1.0)))
                return Refusal(
                    "tokens", wait, f"key '{key.id}' is over {key.tokens_per_minute} tokens per minute"
                )
        if key.requests_per_minute is not None:
            reqs = self._bucket(self._requests, key.id, key.requests_per_minute, now)
            if reqs.level < 1:
                wait = max(1, math.ceil(reqs.wait_for(1.0)))
                return Refusal(
                    "requests", wait, f"key '{key.id}' is over {key.requests_per_minute} requests per minute"
                )
            reqs.level -= 1
        return None

    def charge(self, key: ApiKey, tokens: int, now: float) -> None:
        """Count an answer's prompt + completion tokens against `key`."""
        if key.tokens_per_minute is not None and tokens > 0:
            self._bucket(self._tokens, key.id, key.tokens_per_minute, now).level -= tokens
