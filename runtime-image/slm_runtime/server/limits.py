"""Admission control: at most N generations at once, at most Q waiting, the rest refused.

Refusing early (429/503 + Retry-After) lets a load balancer or client go elsewhere instead of
piling requests onto a pod that would answer them minutes late. Lives on the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from slm_runtime.errors import NotReadyError, OverloadedError


class Limiter:
    """Counts running and waiting generations; `slot()` admits or raises `OverloadedError`."""

    def __init__(self, max_concurrent: int, queue_length: int) -> None:
        self.max_concurrent = max_concurrent
        self.queue_length = queue_length
        self._free = asyncio.Semaphore(max_concurrent)
        self.running = 0
        self.waiting = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self.running + self.waiting

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.draining:
            raise NotReadyError("server is shutting down")
        if self._free.locked() and self.waiting >= self.queue_length:
            raise OverloadedError(
                f"too many requests: {self.running} running, {self.waiting} queued", retry_after=1
            )
        self.waiting += 1
        self._idle.clear()
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._free.release()
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new work, wait for in-flight work; True if it finished within `timeout`."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
