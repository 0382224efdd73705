"""One reconcile as every trigger runs it: under the owner's lock, from the caches, with metrics,
Events, and the operator's errors mapped to kopf's retry semantics once.

Error mapping: invalid or unsatisfiable spec -> Degraded + Event + `kopf.PermanentError` (nothing
applied); no capacity right now -> Degraded `NoCapacity` + `TemporaryError(60s)`; missing API key
Secret -> Degraded `SecretNotFound` + `TemporaryError(30s)`; API failures -> `TemporaryError`,
soon (1 s, doubling to 10 s with kopf's retry count) so that an API server outage ends in seconds.
"""

from __future__ import annotations

import logging
from typing import cast

import kopf

from slm_operator.errors import KubeError, PlacementError, SecretNotFoundError, SlmOperatorError, SpecError
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import Event, Obj, Owner, count_by_kind, key_of
from slm_operator.reconcile.reconciler import reconcile, report_failure
from slm_operator.reconcile.status import now_rfc3339

log = logging.getLogger("slm_operator")
RETRY_DELAYS = {"NoCapacity": 60.0, "SecretNotFound": 30.0}
API_RETRY_FIRST, API_RETRY_MAX = 1.0, 10.0


def kopf_error(err: SlmOperatorError, retry: int = 0) -> Exception:
    """Map one of our errors to kopf's retry semantics (`retry`: kopf's count of earlier tries)."""
    if isinstance(err, PlacementError) and err.retryable:
        return kopf.TemporaryError(str(err), delay=RETRY_DELAYS["NoCapacity"])
    if isinstance(err, SpecError):
        return kopf.PermanentError(str(err))
    if isinstance(err, KubeError):
        return kopf.TemporaryError(str(err), delay=min(API_RETRY_MAX, API_RETRY_FIRST * 2 ** max(0, retry)))
    if isinstance(err, SecretNotFoundError):
        return kopf.TemporaryError(str(err), delay=RETRY_DELAYS["SecretNotFound"])
    return kopf.TemporaryError(str(err), delay=API_RETRY_MAX)


def post(ctx: OperatorContext, body: Obj, events: list[Event]) -> None:
    """Post Events on the SLMDeployment (best effort: never fails a reconcile).

    Inside a kopf handler through kopf's poster; elsewhere (the resync loop, the pod listener,
    which kopf does not run as handlers) directly through the API.
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


def run_reconcile(
    ctx: OperatorContext, body: Obj, trigger: str, retry: int = 0, *, created: bool = False
) -> None:
    """Reconcile under the owner's lock, record metrics and Events; raise kopf's errors on failure.

    The first reconcile of an existing owner in this process lists every managed child once
    (`OperatorContext.prime`: what a previous process applied, for pruning); a newly created owner
    (`created`) needs no list: children are controlled by the owner's uid, so it has none yet.
    """
    owner = Owner.from_body(body)
    with ctx.locks.hold(owner.namespace, owner.name), ctx.metrics.duration.time():
        body = ctx.freshest(body)
        ctx.metrics.reconciles.labels(trigger=trigger).inc()
        try:
            if not ctx.applied.known(owner):
                if created:
                    ctx.applied.seed(owner, {})
                else:
                    ctx.prime()
            outcome = reconcile(
                body,
                ctx.cluster,
                ctx.observed(owner),
                image=ctx.settings.runtime_image,
                render=ctx.render,
                gateway_namespace=ctx.settings.gateway_namespace,
                gateway_url=ctx.settings.gateway_url,
                optional_kinds=ctx.served.kinds(),
            )
        except SlmOperatorError as err:
            ctx.metrics.errors.labels(reason=err.reason).inc()
            log.warning("reconcile of %s/%s failed (%s): %s", owner.namespace, owner.name, err.reason, err)
            if not isinstance(err, KubeError):
                try:
                    post(ctx, body, report_failure(body, err, ctx.cluster))
                except KubeError as status_err:
                    log.warning("could not report the failure: %s", status_err)
            raise kopf_error(err, retry) from err
        ctx.applied.remember(outcome.desired, outcome.applied)
        for obj in outcome.pruned:
            ctx.applied.forget(key_of(obj))
        if outcome.patched is not None:
            ctx.cache.owners.upsert(outcome.patched)
    ctx.record_children((owner.namespace, owner.name), count_by_kind(outcome.desired))
    post(ctx, body, outcome.events)
