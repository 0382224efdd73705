"""kopf wiring, kept thin: each handler turns kopf's arguments into plain dicts and calls one
function of the reconcile machinery (`runs`, `drift`, `refresh`, `resync`).

Triggers, all running the same level-based plan:
- create/update/resume of an SLMDeployment (the only kind kopf watches);
- events of owned children (label `app.kubernetes.io/managed-by=slm-operator`, the kinds of
  `plan.CHILDREN`), from the operator's own informers (`children`, started here): a deleted or
  edited child is re-applied (`drift`), Deployment events refresh the status (`refresh`);
- events of the CRDs of optional child kinds (InferencePool): the CRD is read again, and if what
  the API server serves changed, every SLMDeployment is re-planned once (`discovery`);
- the informers' stores (nodes, pods, SLMDeployments, the peering object), started here at startup:
  pod changes report failed model fetches (`refresh.pod_changed`), and the periodic resync
  (`resync`) re-plans from the caches.

kopf keeps its per-object state in memory (`kopf_state`): a successful reconcile writes nothing of
kopf's; only a delayed retry is woken by kopf's `slm.dev/touch-dummy` annotation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from slm_operator.api import GROUP, PLURAL, VERSION
from slm_operator.errors import KubeError
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.discovery import OPTIONAL_CHILDREN, crd_name
from slm_operator.reconcile.drift import correct_drift
from slm_operator.reconcile.plan import PLURALS
from slm_operator.reconcile.refresh import pod_changed, refresh_status
from slm_operator.reconcile.resync import refresh_served, resync_forever
from slm_operator.reconcile.runs import kopf_error, post, run_reconcile

log = logging.getLogger("slm_operator")

__all__ = [
    "PLURALS",
    "build_registry",
    "correct_drift",
    "kopf_error",
    "on_change",
    "plain",
    "post",
    "refresh_status",
    "run_reconcile",
]


def plain(value: Any) -> Any:
    """kopf's read-only body views as plain dicts/lists (the parsing boundary)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def context_of(memo: Any) -> OperatorContext:
    ctx = memo.ctx
    assert isinstance(ctx, OperatorContext)
    return ctx


def on_change(body: Any, memo: Any, retry: int = 0, reason: str = "", **_: Any) -> None:
    """create / update / resume of an SLMDeployment.

    kopf calls every SLMDeployment a create after a restart (its state is in memory, `kopf_state`):
    one that has a status was reconciled before and may have children to list."""
    body = plain(body)
    created = reason == "create" and not body.get("status")
    run_reconcile(context_of(memo), body, "change", retry, created=created)


def on_owner_gone(ctx: OperatorContext, kind: str, body: dict[str, Any]) -> None:
    """The SLMDeployment store lost an object: forget what was remembered about its children."""
    if kind == "DELETED":
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        ctx.applied.forget_owner(namespace, name)
        ctx.kopf_state.forget(str(meta.get("uid") or ""))
        ctx.render.forget(namespace, name)
        ctx.record_children((namespace, name), {})


def on_crd_event(memo: Any, **_: Any) -> None:
    """The CRD of an optional child kind (kopf's filter: by name) was created, changed or deleted:
    read it again; the event's own body may be older than another's (`discovery`)."""
    refresh_served(context_of(memo))


async def on_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """kopf's state in memory (`kopf_state`: never in .status, no write per change), quiet
    logging Events, metrics, informers, the resync loop."""
    ctx = context_of(memo)
    settings.persistence.progress_storage = ctx.kopf_state.progress
    settings.persistence.diffbase_storage = ctx.kopf_state.diffbase
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = ctx.settings.workers
    settings.peering.lifetime = ctx.settings.peering_lifetime
    try:
        ctx.metrics.serve(ctx.settings.metrics_port)
    except OSError as err:  # a busy port must not keep the operator from reconciling
        log.error("metrics server on port %s: %s", ctx.settings.metrics_port, err)
    try:
        await asyncio.to_thread(ctx.served.refresh, ctx.cluster.read_crd)
    except KubeError as err:  # unknown: not served until the resync loop reads it again
        log.warning("reading the CRDs of optional child kinds: %s", err)
    ctx.cache.pods.listen(lambda kind, pod: pod_changed(ctx, kind, pod))
    ctx.cache.owners.listen(lambda kind, body: on_owner_gone(ctx, kind, body))
    for informer in ctx.background:
        informer.start()
    if ctx.settings.resync_seconds > 0:
        memo.resync_task = asyncio.create_task(resync_forever(ctx))


async def on_cleanup(memo: Any, **_: Any) -> None:
    task = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()
    for informer in context_of(memo).background:
        informer.stop()


def on_login(**kwargs: Any) -> Any:
    """Credentials from the in-cluster ServiceAccount or $KUBECONFIG, via the kubernetes client."""
    return kopf.login_via_client(**kwargs)


def build_registry() -> kopf.OperatorRegistry:
    """A fresh registry with every handler (no import-time registration into kopf's default one)."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(on_startup)
    kopf.on.cleanup(registry=registry)(on_cleanup)
    kopf.on.login(registry=registry)(on_login)
    for cause in (kopf.on.create, kopf.on.update, kopf.on.resume):
        cause(GROUP, VERSION, PLURAL, registry=registry)(on_change)
    for child in OPTIONAL_CHILDREN:
        kopf.on.event(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            field="metadata.name",
            value=crd_name(child),
            id=f"crd-{child.plural}",
            registry=registry,
        )(on_crd_event)
    return registry
