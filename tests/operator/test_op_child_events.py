"""`reconcile.children.ChildEvents`: the child informers' events, coalesced per object and handed to
a few threads (what kopf's per-object workers did for the child kinds before)."""

from __future__ import annotations

import threading
import time
from typing import Any

from slm_operator.reconcile.children import ChildEvents

Obj = dict[str, Any]


def _obj(name: str, version: int, namespace: str = "ns") -> Obj:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(version)}}


class Recorder:
    """A handler that records what it saw; `gate` holds every call until it is set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running: set[str] = set()
        self.overlaps = 0
        self.lock = threading.Lock()

    def __call__(self, kind: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if name in self.running:
                self.overlaps += 1
            self.running.add(name)
        self.gate.wait(10)
        with self.lock:
            self.running.discard(name)
            self.seen.append((kind, f"{obj['kind']}/{name}", obj["metadata"]["resourceVersion"]))


def test_events_reach_the_handler_typed_by_the_sink_they_came_through() -> None:
    handler = Recorder()
    events = ChildEvents(handler, workers=2)
    events.start()
    try:
        events.sink("v1", "Service").upsert(_obj("a", 1))
        events.sink("apps/v1", "Deployment").remove(_obj("a", 2))
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert sorted(handler.seen) == [("DELETED", "Deployment/a", "2"), ("MODIFIED", "Service/a", "1")]


def test_a_burst_of_events_for_one_object_is_handled_once_on_its_newest_state() -> None:
    handler = Recorder()
    handler.gate.clear()
    events = ChildEvents(handler, workers=1)
    services = events.sink("v1", "Service")
    events.start()
    try:
        services.upsert(_obj("busy", 1))  # taken by the worker, which the gate holds
        time.sleep(0.2)
        for version in (2, 3, 4):
            services.upsert(_obj("a", version))
        services.remove(_obj("a", 5))
        assert events.backlog() == 1  # one pending event for "a", the newest
        handler.gate.set()
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert handler.seen == [("MODIFIED", "Service/busy", "1"), ("DELETED", "Service/a", "5")]


def test_one_object_is_never_handled_twice_at_once() -> None:
    handler = Recorder()
    handler.gate.clear()
    events = ChildEvents(handler, workers=4)
    services = events.sink("v1", "Service")
    events.start()
    try:
        services.upsert(_obj("a", 1))
        time.sleep(0.2)  # a worker holds "a" now
        services.upsert(_obj("a", 2))  # must wait for the first to finish, not go to another worker
        services.upsert(_obj("b", 1))
        time.sleep(0.2)
        handler.gate.set()
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert handler.overlaps == 0
    assert [v for _, name, v in handler.seen if name == "Service/a"] == ["1", "2"]


def test_a_relist_hands_in_only_the_deployments() -> None:
    """A list is the state, not a change: only Deployments (their status feeds the owner's)."""
    handler = Recorder()
    events = ChildEvents(handler, workers=1)
    events.start()
    try:
        events.sink("v1", "ConfigMap").replace([_obj("a", 1), _obj("b", 1)])
        events.sink("apps/v1", "Deployment").replace([_obj("a", 3)], "ns")
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert handler.seen == [("MODIFIED", "Deployment/a", "3")]


def test_a_failing_handler_does_not_end_its_worker() -> None:
    calls: list[str] = []

    def handle(kind: str, obj: Obj) -> None:
        calls.append(obj["metadata"]["name"])
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("boom")

    events = ChildEvents(handle, workers=1)
    events.start()
    try:
        services = events.sink("v1", "Service")
        services.upsert(_obj("bad", 1))
        services.upsert(_obj("good", 1))
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert calls == ["bad", "good"]


def test_events_wait_without_their_managed_fields() -> None:
    got: list[Obj] = []
    events = ChildEvents(lambda kind, obj: got.append(obj), workers=1)
    managed = [{"manager": "slm-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
    obj = _obj("a", 1)
    obj["metadata"]["managedFields"] = managed
    obj["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "slm-operator"}
    events.sink("v1", "Service").upsert(obj)
    events.start()
    try:
        assert events.wait_idle(10)
    finally:
        events.stop()
    assert got[0]["metadata"] == {
        "name": "a",
        "namespace": "ns",
        "resourceVersion": "1",
        "labels": {"app.kubernetes.io/managed-by": "slm-operator"},
    }
    assert obj["metadata"]["managedFields"] == managed  # the informer's copy is left as it was
