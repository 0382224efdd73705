"""Drift correction: a child that a watch event shows deleted or edited is re-applied at once.

Only an edit that the operator's last apply did not produce (its resourceVersion differs) and that
changes a field the operator sets counts; the decision is taken on the live object, under the
owner's lock, and each real correction is reported once (`DriftCorrected`).
"""

from __future__ import annotations

import logging

import kopf

from slm_operator.errors import KubeError
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import (
    Key,
    Obj,
    Owner,
    child_owner,
    comparable,
    drifted,
    is_controlled_by,
    key_of,
)
from slm_operator.reconcile.refresh import refresh_status
from slm_operator.reconcile.runs import post, run_reconcile

log = logging.getLogger("slm_operator")


def child_changed(ctx: OperatorContext, type: str | None, obj: Obj) -> None:
    """A managed child changed or vanished: restore it, or refresh status from the Deployment."""
    ref = child_owner(obj)
    if ref is None:
        return
    owner_body = ctx.owner_body(*ref)
    if owner_body is None or (owner_body.get("metadata") or {}).get("deletionTimestamp"):
        return
    owner = Owner.from_body(owner_body)
    if not is_controlled_by(obj, owner):
        return
    key = key_of(obj)
    if obj.get("kind") == "Deployment" and type != "DELETED":
        ctx.applied.observe_deployment(obj)
    desired = ctx.applied.get(key)
    edited = type != "DELETED" and desired is not None and not ctx.applied.is_own_write(obj)
    suspect = type == "DELETED" or (edited and drifted(comparable(desired or {}), comparable(obj)))
    if suspect and (correct_drift(ctx, owner, key) or type == "DELETED"):
        return
    if obj.get("kind") == "Deployment":
        refresh_status(ctx, owner.namespace, owner.name, obj)


def correct_drift(ctx: OperatorContext, owner: Owner, key: Key) -> bool:
    """Re-apply a child that a watch event shows deleted or edited, if it still is; True if it was.

    Decided under the owner's lock, so that a reconcile in flight has finished (the event may show
    that reconcile's own write, not yet remembered when the event arrived), and on the live object
    rather than the event's copy (a stale event of an edit that is already corrected changes
    nothing). Each real correction is then reported once.
    """
    api_version, kind, namespace, name = key
    with ctx.locks.hold(owner.namespace, owner.name):
        try:
            live = ctx.cluster.read(api_version, kind, namespace, name)
            owner_body = ctx.cluster.get_slmdeployment(owner.namespace, owner.name)
        except KubeError as err:
            log.warning("drift check of %s %s/%s: %s", kind, namespace, name, err)
            return False
        if owner_body is None or (owner_body.get("metadata") or {}).get("deletionTimestamp"):
            return True
        desired = ctx.applied.get(key)
        if live is None and desired is None:
            return False  # pruned by the operator itself, or never its to restore
        if live is not None and (
            desired is None
            or ctx.applied.is_own_write(live)
            or not drifted(comparable(desired), comparable(live))
        ):
            return False
        what = "deleted" if live is None else "edited"
        ctx.applied.forget(key)
        try:
            run_reconcile(ctx, owner_body, "drift")
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            log.warning("drift correction failed: %s", err)
            return True
    log.info("%s %s/%s was %s; re-applied", kind, namespace, name, what)
    post(ctx, owner_body, [("Normal", "DriftCorrected", f"restored {what} {kind} {name}")])
    return True
