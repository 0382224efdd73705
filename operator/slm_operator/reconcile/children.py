"""Watch events of the operator's children (the kinds of `plan.CHILDREN`, label
`app.kubernetes.io/managed-by=slm-operator`), from the operator's own informers rather than kopf.

kopf runs a per-object worker, keeps per-object state and a queue of full bodies, and builds a
handler invocation for every event of every watched object: for five or six children per
SLMDeployment that was most of the operator's CPU and the peak of its memory in a burst. Here one
informer per child kind (and watched namespace) hands each event to `ChildEvents`, which keeps only
the latest event of each object and lets a few threads act on them (`drift.child_changed`):
an object's events are never handled twice at once, and a burst of events for one object is
handled once, on its newest state.

The informers' lists (at start and after a 410 Gone) are not events of a change: only the
Deployments among them are handled (their status is what the SLMDeployment's status reads).
On a standby replica nothing is handled; nothing is restored in a namespace being deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.drift import child_changed
from slm_operator.reconcile.plan import Key, Obj, key_of

log = logging.getLogger("slm_operator")

Handle = Callable[[str, Obj], None]
"""Called with ("ADDED" | "MODIFIED" | "DELETED", the object) for one child."""


class ChildEvents:
    """An informer sink that coalesces events per object and hands them to `workers` threads.

    Pure plumbing (no API calls of its own): `handle` does the work. `pending` holds at most one
    event per object; a key being handled is not handed out again until that handling ends."""

    def __init__(self, handle: Handle, *, workers: int = 4) -> None:
        self._handle = handle
        self._workers = workers
        self._cond = threading.Condition()
        self._pending: dict[Key, tuple[str, Obj]] = {}
        self._order: list[Key] = []
        self._busy: set[Key] = set()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def sink(self, api_version: str, kind: str) -> KindSink:
        """The sink of one kind's informer (a list's items carry no apiVersion and kind)."""
        return KindSink(self, api_version, kind)

    # --- the workers --------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"child-events-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def backlog(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait_idle(self, timeout: float) -> bool:
        """Whether every event handed in so far was handled within `timeout` seconds (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def put(self, kind: str, obj: Obj) -> None:
        """Hand in one event; an older pending event of the same object is dropped."""
        key = key_of(obj)
        with self._cond:
            if key not in self._pending:
                self._order.append(key)
            self._pending[key] = (kind, obj)
            self._cond.notify()

    def _next(self) -> tuple[Key, str, Obj] | None:
        with self._cond:
            while True:
                if self._stopped:
                    return None
                for i, key in enumerate(self._order):
                    if key not in self._busy:
                        del self._order[i]
                        kind, obj = self._pending.pop(key)
                        self._busy.add(key)
                        return key, kind, obj
                self._cond.wait()

    def _done(self, key: Key) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            key, kind, obj = item
            try:
                self._handle(kind, obj)
            except Exception:  # one object's failure must not end the worker
                log.exception("handling the %s event of %s %s/%s", kind, key[1], key[2], key[3])
            finally:
                self._done(key)


class KindSink:
    """What one child kind's informer feeds (`kube.Sink`)."""

    def __init__(self, events: ChildEvents, api_version: str, kind: str) -> None:
        self._events, self._api_version, self._kind = events, api_version, kind

    def _typed(self, obj: Mapping[str, Any]) -> Obj:
        """The event's object with its kind, less `metadata.managedFields`: nothing here reads
        them, and they are often the larger part of the object, held until the event is handled
        (in a burst, thousands of events wait; that backlog is the operator's memory peak)."""
        meta = obj.get("metadata") or {}
        if "managedFields" in meta:
            meta = {k: v for k, v in meta.items() if k != "managedFields"}
        return {"apiVersion": self._api_version, "kind": self._kind, **obj, "metadata": meta}

    def replace(self, objects: list[Obj], namespace: str | None = None) -> None:
        if self._kind == "Deployment":
            for obj in objects:
                self._events.put("MODIFIED", self._typed(obj))

    def upsert(self, obj: Mapping[str, Any]) -> None:
        self._events.put("MODIFIED", self._typed(obj))

    def remove(self, obj: Mapping[str, Any]) -> None:
        self._events.put("DELETED", self._typed(obj))


def child_event(ctx: OperatorContext, kind: str, obj: Obj) -> None:
    """One child's event: restore it if it was deleted or edited, else refresh the status."""
    namespace = str((obj.get("metadata") or {}).get("namespace") or "")
    if not ctx.active() or ctx.namespace_terminating(namespace):
        return
    child_changed(ctx, kind, obj)
