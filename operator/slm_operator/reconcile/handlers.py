"""kopf wiring, kept thin: each handler turns kopf's arguments into plain dicts, calls the pure
reconcile machinery, posts Events, and maps the operator's errors to kopf's once.

Triggers, all running the same level-based reconcile:
- create/update/resume of an SLMDeployment;
- a periodic resync (`--resync-seconds`, default 60) that also re-places when nodes change; it is an
  operator-level loop started at startup rather than a kopf timer, so no finalizer is put on objects;
- events of owned children (label `app.kubernetes.io/managed-by=slm-operator`): a deleted child, or
  one whose fields differ from what was last applied, is re-applied at once (drift correction, one
  `DriftCorrected` Event each) once the live object confirms it (see `correct_drift`);
  Deployment events also refresh `status.readyReplicas` and the Ready/Progressing conditions.

Error mapping: invalid or unsatisfiable spec -> Degraded + Event + `kopf.PermanentError` (nothing
applied); no capacity right now -> Degraded `NoCapacity` + `TemporaryError(60s)`; missing API key
Secret -> Degraded `SecretNotFound` + `TemporaryError(30s)`; API failures -> `TemporaryError(10s)`.
kopf keeps its bookkeeping in `slm.dev/*` annotations, never in `.status`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from slm_operator.api import GROUP, PLURAL, VERSION
from slm_operator.errors import KubeError, PlacementError, SecretNotFoundError, SlmOperatorError, SpecError
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import (
    CHILD_KINDS,
    Key,
    Obj,
    Owner,
    child_owner,
    comparable,
    count_by_kind,
    drifted,
    is_controlled_by,
    key_of,
)
from slm_operator.reconcile.reconciler import Event, reconcile, report_failure
from slm_operator.reconcile.status import (
    FETCH_FAILED,
    fetch_failure,
    fetch_failure_events,
    now_rfc3339,
    observed_status,
    provider_fallback,
)
from slm_operator.render.metadata import DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL

log = logging.getLogger("slm_operator")
ANNOTATION_PREFIX = "slm.dev"
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
}
RETRY_DELAYS = {"NoCapacity": 60.0, "SecretNotFound": 30.0, "KubernetesAPIError": 10.0}


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


def kopf_error(err: SlmOperatorError) -> Exception:
    """Map one of our errors to kopf's retry semantics."""
    if isinstance(err, PlacementError) and err.retryable:
        return kopf.TemporaryError(str(err), delay=RETRY_DELAYS["NoCapacity"])
    if isinstance(err, SpecError):
        return kopf.PermanentError(str(err))
    if isinstance(err, SecretNotFoundError | KubeError):
        return kopf.TemporaryError(str(err), delay=RETRY_DELAYS.get(err.reason, 10.0))
    return kopf.TemporaryError(str(err), delay=10.0)


def post(ctx: OperatorContext, body: Obj, events: list[Event]) -> None:
    """Post Events on the SLMDeployment (best effort: never fails a reconcile).

    Inside a kopf handler through kopf's poster; elsewhere (the resync loop, which kopf does not
    run as a handler, so its posting context is missing) directly through the API.
    """
    target = kopf.Body(cast(kopf.RawBody, body))
    for kind, reason, message in events:
        try:
            # kopf.event, not kopf.info: info() is filtered by settings.posting.level (WARNING here,
            # so that kopf's own log lines do not become Events).
            kopf.event(target, type=kind, reason=reason, message=message)
        except LookupError:
            log.info("event %s %s: %s", kind, reason, message)
            try:
                ctx.cluster.post_event(body, kind, reason, message, now_rfc3339())
            except KubeError as err:
                log.warning("could not post event %s: %s", reason, err)


def run_reconcile(ctx: OperatorContext, body: Obj, trigger: str) -> None:
    """Reconcile under the owner's lock, record metrics and Events; raise kopf's errors on failure."""
    owner = Owner.from_body(body)
    with ctx.locks.hold(owner.namespace, owner.name), ctx.metrics.duration.time():
        ctx.metrics.reconciles.labels(trigger=trigger).inc()
        try:
            outcome = reconcile(
                body,
                ctx.cluster,
                image=ctx.settings.runtime_image,
                gateway_namespace=ctx.settings.gateway_namespace,
                gateway_url=ctx.settings.gateway_url,
            )
        except SlmOperatorError as err:
            ctx.metrics.errors.labels(reason=err.reason).inc()
            log.warning("reconcile of %s/%s failed (%s): %s", owner.namespace, owner.name, err.reason, err)
            if not isinstance(err, KubeError):
                try:
                    post(ctx, body, report_failure(body, err, ctx.cluster))
                except KubeError as status_err:
                    log.warning("could not report the failure: %s", status_err)
            raise kopf_error(err) from err
        ctx.applied.remember(outcome.desired, outcome.applied)
    ctx.metrics.record_children((owner.namespace, owner.name), count_by_kind(outcome.applied))
    post(ctx, body, outcome.events)


def on_change(body: Any, memo: Any, **_: Any) -> None:
    """create / update / resume of an SLMDeployment."""
    run_reconcile(context_of(memo), plain(body), "change")


def on_child_event(type: str | None, body: Any, memo: Any, **_: Any) -> None:
    """A managed child changed or vanished: restore it, or refresh status from the Deployment."""
    ctx = context_of(memo)
    obj = plain(body)
    ref = child_owner(obj)
    if ref is None:
        return
    owner_body = ctx.cluster.get_slmdeployment(*ref)
    if owner_body is None or (owner_body.get("metadata") or {}).get("deletionTimestamp"):
        return
    owner = Owner.from_body(owner_body)
    if not is_controlled_by(obj, owner):
        return
    key = key_of(obj)
    desired = ctx.applied.get(key)
    edited = type != "DELETED" and desired is not None and not ctx.applied.is_own_write(obj)
    suspect = type == "DELETED" or (edited and drifted(desired, comparable(obj)))
    if suspect and (correct_drift(ctx, owner, key) or type == "DELETED"):
        return
    if obj.get("kind") == "Deployment":
        refresh_status(ctx, owner.namespace, owner.name, obj)


def refresh_status(ctx: OperatorContext, namespace: str, name: str, deployment: Obj | None) -> None:
    """Status from the Deployment and its pods, after a watch event on either.

    Under the owner's lock and with a fresh owner: a reconcile that is patching status from its
    (older) apply response must not overwrite what this newer state says.
    """
    with ctx.locks.hold(namespace, name):
        fresh = ctx.cluster.get_slmdeployment(namespace, name)
        if fresh is None:
            return
        if deployment is None:
            deployment = ctx.cluster.read("apps/v1", "Deployment", namespace, name)
        pods = ctx.cluster.list_labelled("v1", "Pod", namespace, f"{DEPLOYMENT_LABEL}={name}")
        old = fresh.get("status") or {}
        update = observed_status(deployment, old, now_rfc3339(), pods)
        if update is None:
            return
        ctx.cluster.patch_status(namespace, name, update)
    post(ctx, fresh, fetch_failure_events(old, update))


def on_pod_event(body: Any, memo: Any, **_: Any) -> None:
    """A model pod changed: report a failed model fetch now rather than at the next resync.

    Only pods whose fetch failed, and pods of an SLMDeployment that currently says it failed (to
    clear it), cost an API call; routine pod updates are ignored.
    """
    ctx = context_of(memo)
    pod = plain(body)
    meta = pod.get("metadata") or {}
    namespace, name = meta.get("namespace"), (meta.get("labels") or {}).get(DEPLOYMENT_LABEL)
    if not namespace or not name:
        return
    if fetch_failure([pod]) is None and provider_fallback([pod]) is None:
        owner = ctx.cluster.get_slmdeployment(namespace, name)
        ready = next(
            (
                c
                for c in ((owner or {}).get("status") or {}).get("conditions") or ()
                if c.get("type") == "Ready"
            ),
            None,
        )
        if ready is None or ready.get("reason") != FETCH_FAILED:
            return
    try:
        refresh_status(ctx, namespace, name, None)
    except KubeError as err:
        log.warning("status of %s/%s from its pods: %s", namespace, name, err)


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
        if live is not None and (
            desired is None or ctx.applied.is_own_write(live) or not drifted(desired, comparable(live))
        ):
            return False
        what = "deleted" if live is None else "edited"
        try:
            run_reconcile(ctx, owner_body, "drift")
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            log.warning("drift correction failed: %s", err)
            return True
    log.info("%s %s/%s was %s; re-applied", kind, namespace, name, what)
    post(ctx, owner_body, [("Normal", "DriftCorrected", f"restored {what} {kind} {name}")])
    return True


async def resync_forever(ctx: OperatorContext) -> None:
    """Periodic level-based reconcile of every SLMDeployment (drift, node inventory changes)."""
    interval = ctx.settings.resync_seconds
    while True:
        await asyncio.sleep(interval)
        namespaces: list[str | None] = list(ctx.settings.namespaces) or [None]
        for namespace in namespaces:
            try:
                bodies = await asyncio.to_thread(ctx.cluster.list_slmdeployments, namespace)
            except KubeError as err:
                log.warning("resync: %s", err)
                continue
            for body in bodies:
                if (body.get("metadata") or {}).get("deletionTimestamp"):
                    continue
                try:
                    await asyncio.to_thread(run_reconcile, ctx, body, "resync")
                except (kopf.PermanentError, kopf.TemporaryError) as err:
                    log.info("resync of %s: %s", (body.get("metadata") or {}).get("name"), err)


async def on_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Annotations (not .status) for kopf's state, quiet logging Events, metrics, the resync loop."""
    ctx = context_of(memo)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    try:
        ctx.metrics.serve(ctx.settings.metrics_port)
    except OSError as err:  # a busy port must not keep the operator from reconciling
        log.error("metrics server on port %s: %s", ctx.settings.metrics_port, err)
    if ctx.settings.resync_seconds > 0:
        memo.resync_task = asyncio.create_task(resync_forever(ctx))


async def on_cleanup(memo: Any, **_: Any) -> None:
    task = getattr(memo, "resync_task", None)
    if task is not None:
        task.cancel()


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
    kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY}, registry=registry)(on_pod_event)
    for api_version, kind in CHILD_KINDS:
        group, _, version = api_version.rpartition("/")
        kopf.on.event(
            group, version, PLURALS[kind], labels={MANAGED_BY_LABEL: MANAGED_BY}, registry=registry
        )(on_child_event)
    return registry
