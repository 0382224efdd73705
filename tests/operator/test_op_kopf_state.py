"""kopf's per-object state in memory (`reconcile/kopf_state.py`): a handled change writes nothing
to the SLMDeployment, a delayed retry is still woken by a write, and a gone object is forgotten."""

from __future__ import annotations

from typing import Any

import kopf

from slm_operator.reconcile.kopf_state import KopfState


def body(uid: str = "u1", **annotations: str) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": uid, "annotations": annotations},
        "spec": {"model": {"name": "tiny"}},
        "status": {"phase": "Ready"},
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


def test_storing_the_handled_essence_writes_nothing_and_is_fetched_back() -> None:
    state, patch = KopfState(), kopf.Patch()
    essence = state.diffbase.build(body=body())
    state.diffbase.store(body=body(), patch=patch, essence=essence)
    assert not patch
    assert state.diffbase.fetch(body=body()) == essence
    assert state.diffbase.fetch(body=body("other-uid")) is None


def test_the_stored_essence_is_a_copy_that_later_edits_do_not_change() -> None:
    state = KopfState()
    essence = state.diffbase.build(body=body())
    state.diffbase.store(body=body(), patch=kopf.Patch(), essence=essence)
    essence["spec"]["model"]["name"] = "edited"
    assert state.diffbase.fetch(body=body())["spec"]["model"]["name"] == "tiny"  # type: ignore[index]


def test_handler_progress_is_kept_in_memory_until_purged() -> None:
    state, patch = KopfState(), kopf.Patch()
    record = kopf.ProgressRecord(started="2026-12-02T00:00:00", retries=2, delayed="2026-12-02T00:01:00")
    state.progress.store(key=kopf.HandlerId("on_change"), record=record, body=body(), patch=patch)
    assert not patch
    assert state.progress.fetch(key=kopf.HandlerId("on_change"), body=body()) == record
    state.progress.purge(key=kopf.HandlerId("on_change"), body=body(), patch=patch)
    assert not patch
    assert state.progress.fetch(key=kopf.HandlerId("on_change"), body=body()) is None


def test_a_delayed_retry_is_still_woken_by_kopfs_touch_annotation() -> None:
    """kopf wakes a handler it delayed by writing a dummy annotation (the only write left)."""
    state, patch = KopfState(), kopf.Patch()
    state.progress.touch(body=body(), patch=patch, value="2026-12-02T00:01:00")
    assert patch["metadata"]["annotations"]["slm.dev/touch-dummy"] == "2026-12-02T00:01:00"


def test_the_touch_annotation_is_not_part_of_the_compared_essence() -> None:
    """Otherwise each wake-up would look like a change of the spec to kopf."""
    state = KopfState()
    touched = body(**{"slm.dev/touch-dummy": "x", "team": "a"})
    cleared = state.progress.clear(essence=state.diffbase.build(body=touched))
    assert cleared["metadata"]["annotations"] == {"team": "a"}  # type: ignore[index]


def test_forgetting_an_object_drops_its_essence_and_progress_only() -> None:
    state = KopfState()
    handler, record = kopf.HandlerId("on_change"), kopf.ProgressRecord(retries=1)
    for uid in ("gone", "kept"):
        essence = state.diffbase.build(body=body(uid))
        state.diffbase.store(body=body(uid), patch=kopf.Patch(), essence=essence)
        state.progress.store(key=handler, record=record, body=body(uid), patch=kopf.Patch())
    state.forget("gone")
    assert (len(state.diffbase), len(state.progress)) == (1, 1)
    assert state.diffbase.fetch(body=body("kept")) is not None


class StockDiffBase(kopf.DiffBaseStorage):
    """kopf's own essence (the base class's `build`), to compare with."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def test_the_essence_is_the_one_kopf_builds_without_copying_status_and_managed_fields() -> None:
    raw: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "7",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "labels": {"team": "a"},
            "annotations": {
                "note": "kept",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "slm.dev/kopf-managed": "yes",
                "slm.dev/touch-dummy": "x",
            },
        },
        "spec": {"model": {"name": "tiny"}, "replicas": 2},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    ours = KopfState().diffbase.build(body=kopf.Body(raw))  # type: ignore[arg-type]
    assert ours == StockDiffBase().build(body=kopf.Body(raw))  # type: ignore[arg-type]
    assert ours["spec"] == raw["spec"] and "status" not in ours
    raw["spec"]["replicas"] = 3
    assert ours["spec"]["replicas"] == 2  # a copy, not a view of the body
