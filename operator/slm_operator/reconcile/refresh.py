"""Status from the Deployment and the pods, after a watch event on either (no reconcile)."""

from __future__ import annotations

import logging

from slm_operator.errors import KubeError
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import Obj
from slm_operator.reconcile.runs import post
from slm_operator.reconcile.status import (
    FETCH_FAILED,
    RUNTIME_FAILED,
    fetch_failure,
    fetch_failure_events,
    now_rfc3339,
    observed_status,
    provider_fallback,
    runtime_failure,
)
from slm_operator.render import DEPLOYMENT_LABEL

log = logging.getLogger("slm_operator")


def refresh_status(ctx: OperatorContext, namespace: str, name: str, deployment: Obj | None) -> None:
    """Patch Ready/Progressing/replicas when the Deployment or the pods say something new.

    Under the owner's lock, and with the owner as the cache has it (a status patch of this process
    is written through into the cache), so a reconcile that is patching status from its older
    apply response and this newer state never overwrite each other.
    """
    with ctx.locks.hold(namespace, name):
        fresh = ctx.owner_body(namespace, name)
        if fresh is None:
            return
        if deployment is None:
            deployment = ctx.applied.deployment(namespace, name)
        if deployment is None:
            deployment = ctx.cluster.read("apps/v1", "Deployment", namespace, name)
        pods = ctx.cache.pods.owned_by(namespace, name)
        old = fresh.get("status") or {}
        update = observed_status(deployment, old, now_rfc3339(), pods)
        if update is None:
            return
        patched = ctx.cluster.patch_status(namespace, name, update)
        if patched is not None:
            ctx.cache.owners.upsert(patched)
    post(ctx, fresh, fetch_failure_events(old, update))


def pod_changed(ctx: OperatorContext, kind: str, pod: Obj) -> None:
    """A model pod changed (the pod informer's listener): report a failed model fetch now rather
    than at the next reconcile. Only pods whose fetch failed, and pods of an SLMDeployment that
    currently says it failed (to clear it), cost an API call; nothing happens on a standby."""
    meta = pod.get("metadata") or {}
    namespace, name = meta.get("namespace"), (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
    if not namespace or not name or not ctx.active():
        return
    quiet = (
        fetch_failure([pod]) is None and runtime_failure([pod]) is None and provider_fallback([pod]) is None
    )
    if kind == "DELETED" or quiet:
        owner = ctx.cache.owners.get(str(namespace), str(name))
        ready = next(
            (
                c
                for c in ((owner or {}).get("status") or {}).get("conditions") or ()
                if c.get("type") == "Ready"
            ),
            None,
        )
        if ready is None or ready.get("reason") not in (FETCH_FAILED, RUNTIME_FAILED):
            return
    try:
        refresh_status(ctx, str(namespace), str(name), None)
    except KubeError as err:
        log.warning("status of %s/%s from its pods: %s", namespace, name, err)
