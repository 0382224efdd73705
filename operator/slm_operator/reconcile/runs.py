"""One reconcile as every trigger runs it: under the owner's lock, from the caches, with metrics,
Events, and the operator's errors mapped to kopf's retry semantics once.

Error mapping: invalid or unsatisfiable spec, or one the operator's policy forbids -> Degraded
(`InvalidSpec`, `PlacementFailed`, `PolicyViolation`) + Event + `kopf.PermanentError` (nothing
applied); no capacity right now -> Degraded `NoCapacity` + `TemporaryError(60s)`; missing API key
Secret -> Degraded `SecretNotFound` + `TemporaryError(30s)`; a child's name taken by an object the
SLMDeployment does not control -> Degraded `NameConflict` + Event + `TemporaryError(60s)`; an apply
the API server rejects (400/403/413/422) -> Degraded `ApplyFailed` with the server's message + Event
+ `TemporaryError` in 2 s, then every 60 s while the same rejection repeats; other API failures ->
`TemporaryError`, soon (1 s, doubling to 10 s with kopf's retry count) so that an API server outage
ends in seconds; when that failure is a 404 on an optional kind's apply (`KindNotServedError`), the
kind's CRD is also read again (`discovery`), so the retry leaves the kind out if it is gone.
"""

from __future__ import annotations

import logging
from typing import cast

import kopf

from slm_operator import redact
from slm_operator.errors import (
    ApplyError,
    KindNotServedError,
    KubeError,
    NameConflictError,
    NamespaceTerminatingError,
    PlacementError,
    SecretNotFoundError,
    SlmOperatorError,
    SpecError,
)
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import Event, Obj, Owner, count_by_kind, key_of
from slm_operator.reconcile.reconciler import reconcile, report_failure
from slm_operator.reconcile.status import condition_message, now_rfc3339

log = logging.getLogger("slm_operator")
RETRY_DELAYS = {"NoCapacity": 60.0, "SecretNotFound": 30.0, "NameConflict": 60.0, "NameConflictPassing": 2.0}
API_RETRY_FIRST, API_RETRY_MAX = 1.0, 10.0
REJECTED_RETRY_FIRST, REJECTED_RETRY_MAX = 2.0, 60.0


def kopf_error(err: SlmOperatorError, retry: int = 0, *, repeated: bool = False) -> Exception:
    """Map one of our errors to kopf's retry semantics (`retry`: kopf's count of earlier tries;
    `repeated`: the status already reported this very failure).

    A rejected apply is retried soon the first time (a 403 right after an API server restart, before
    its RBAC caches are warm, passes by itself) and slowly once the same rejection repeats; kopf's
    retry count is no measure here, since it also counts the connection failures of an outage.
    The message kopf logs is redacted: an error may quote a model URI with credentials."""
    message = redact.text(str(err))
    if isinstance(err, ApplyError):
        return kopf.TemporaryError(message, delay=REJECTED_RETRY_MAX if repeated else REJECTED_RETRY_FIRST)
    if isinstance(err, NameConflictError):
        return kopf.TemporaryError(
            message, delay=RETRY_DELAYS["NameConflictPassing" if err.passing else "NameConflict"]
        )
    if isinstance(err, PlacementError) and err.retryable:
        return kopf.TemporaryError(message, delay=RETRY_DELAYS["NoCapacity"])
    if isinstance(err, SpecError):
        return kopf.PermanentError(message)
    if isinstance(err, KubeError):
        return kopf.TemporaryError(message, delay=min(API_RETRY_MAX, API_RETRY_FIRST * 2 ** max(0, retry)))
    if isinstance(err, SecretNotFoundError):
        return kopf.TemporaryError(message, delay=RETRY_DELAYS["SecretNotFound"])
    return kopf.TemporaryError(message, delay=API_RETRY_MAX)


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
                policy=ctx.settings.policy,
                check_secrets=ctx.settings.check_auth_secrets,
                optional_kinds=ctx.served.kinds(),
                gateway_key_sha256=ctx.settings.gateway_key_sha256,
            )
        except SlmOperatorError as err:
            ctx.metrics.errors.labels(reason=err.reason).inc()
            if isinstance(err, KubeError):
                ctx.api_failures.add((owner.namespace, owner.name))
            else:
                ctx.api_failures.discard((owner.namespace, owner.name))
            if isinstance(err, KindNotServedError):
                ctx.served.mark_stale()  # the resync loop reads the CRD again, then retries this owner
            if isinstance(err, NamespaceTerminatingError):
                ctx.mark_terminating(owner.namespace)
                log.info("%s/%s: its namespace is being deleted: %s", owner.namespace, owner.name, err)
                raise kopf_error(err, retry) from err
            log.warning(
                "reconcile of %s/%s failed (%s): %s",
                owner.namespace,
                owner.name,
                err.reason,
                redact.text(str(err)),
            )
            repeated = condition_message(body.get("status"), "Degraded") == redact.text(str(err))
            if not isinstance(err, KubeError):
                try:
                    post(ctx, body, report_failure(body, err, ctx.cluster))
                except KubeError as status_err:
                    # retried soon rather than given up: an owner without a status is left to
                    # kopf's handler (the resync skips it), so the failure must get reported
                    log.warning("could not report the failure: %s", status_err)
                    raise kopf_error(status_err, retry) from err
            raise kopf_error(err, retry, repeated=repeated) from err
        ctx.api_failures.discard((owner.namespace, owner.name))
        if outcome.applied:
            ctx.mark_terminating(owner.namespace, False)
        ctx.applied.remember(outcome.desired, outcome.applied)
        for obj in outcome.pruned:
            ctx.applied.forget(key_of(obj))
        if outcome.patched is not None:
            ctx.cache.owners.upsert(outcome.patched)
    ctx.record_children((owner.namespace, owner.name), count_by_kind(outcome.desired))
    post(ctx, body, outcome.events)
