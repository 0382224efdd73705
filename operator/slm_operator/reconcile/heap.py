"""The process heap after a burst: glibc's malloc, tuned from inside the process.

Measured on the benchmark (`benchmarks/operator_scale.py`): after a burst of creates the operator's
resident memory stayed several times what its caches hold. Two glibc behaviours cause it:
- every thread that allocates gets its own malloc arena (up to 8 per core), and kopf's workers,
  the informers and the executor threads spread the burst's short-lived objects over them; memory
  freed in one arena is not reused by another. `limit_arenas` is `MALLOC_ARENA_MAX`, set at startup
  (before the threads exist), so that it needs no change to the image or the chart;
- freed memory inside the heap (not at its top) is kept by the process until `malloc_trim` hands
  the free pages back; `trim` is called after each busy resync pass.
A burst's last garbage is freed later than that: kopf's per-object workers let go of their last
event's body only after idling (5 s), and reference cycles wait for the cyclic collector's oldest
generation, which a quiet process seldom reaches. So the first quiet resync pass after a busy one
(`AfterBurst`) collects and trims once more (`release`).

On a libc without these calls (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

log = logging.getLogger("slm_operator")
M_ARENA_MAX = -8
"""mallopt parameter number of M_ARENA_MAX in glibc's malloc.h."""


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(count: int) -> bool:
    """At most `count` malloc arenas from now on (0: glibc's default). True if applied."""
    libc = _libc()
    if libc is None or count <= 0:
        return False
    applied = bool(libc.mallopt(M_ARENA_MAX, count))
    if not applied:
        log.info("mallopt(M_ARENA_MAX, %d) was refused", count)
    return applied


def trim() -> bool:
    """Return the heap's free pages to the system. True if some were released."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def release() -> bool:
    """Free the unreachable cycles, then return the free pages: once, when a burst has settled
    (a full collection walks every object, so not after every pass)."""
    gc.collect()
    return trim()


class AfterBurst:
    """Which heap call follows a full resync pass (or one that found work): `trim` after a busy
    one, `release` after the first quiet one since, nothing while the fleet stays quiet.

    Busy: the pass reconciled something, or the children changed since the pass before
    (`AppliedCache.version`: kopf's handlers applied them; in a burst they do most of the work)."""

    def __init__(self, version: int) -> None:
        self._version = version
        self._settling = False

    def step(self, found_work: bool, version: int) -> Callable[[], bool] | None:
        busy = found_work or version != self._version
        self._version = version
        if busy:
            self._settling = True
            return trim
        if self._settling:
            self._settling = False
            return release
        return None
