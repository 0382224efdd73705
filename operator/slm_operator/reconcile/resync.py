"""The periodic resync: re-plan every SLMDeployment from the caches, act only on a difference.

An operator-level loop (not a kopf timer: no finalizers on objects). Each SLMDeployment has a
fingerprint of what its plan reads (its generation, the node and pod stores' versions, the applied
children's version); an owner whose fingerprint did not change since its last successful reconcile
is skipped without even planning, and a plan with nothing to do makes no API call, so a steady
fleet costs neither CPU nor requests. Owners whose last reconcile (here or in a kopf handler)
failed on an API error are retried every `RETRY_SECONDS`; specs with an API key Secret are
re-checked every period (one GET).
An owner without any status has never been reconciled: its create (or, after a restart, resume)
handler is queued in kopf, and the resync leaves it to that handler, so that a burst of creates is
not reconciled twice (measured: 1,356 resync reconciles during a burst of 1,000).

On a standby replica (kopf peering) the loop does nothing, and it runs a full pass as soon as this
replica takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from slm_operator.errors import KubeError
from slm_operator.reconcile import heap
from slm_operator.reconcile.context import OperatorContext, OwnerKey
from slm_operator.reconcile.runs import run_reconcile

log = logging.getLogger("slm_operator")
RETRY_SECONDS = 2.0
Fingerprint = tuple[int, int, int, int]


def fingerprint(ctx: OperatorContext, body: Mapping[str, Any]) -> Fingerprint:
    nodes, pods = ctx.cache.placement_version()
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    return generation, nodes, pods, ctx.applied.version


def resync_once(
    ctx: OperatorContext, done: dict[OwnerKey, Fingerprint], failed: set[OwnerKey], *, full: bool
) -> int:
    """One pass over the cached SLMDeployments; returns how many were reconciled.

    `full`: every owner whose fingerprint changed (and every failed one); otherwise only the
    owners whose last reconcile failed."""
    count = 0
    present: set[OwnerKey] = set()
    retry = failed | ctx.api_failures  # failed here, or in a kopf handler

    for body in sorted(
        ctx.cache.owners.items(), key=lambda b: (b["metadata"].get("namespace"), b["metadata"].get("name"))
    ):
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        present.add(key)
        if meta.get("deletionTimestamp") or ctx.namespace_terminating(key[0]) or not ctx.active():
            continue
        if not body.get("status") and key not in retry:
            continue  # never reconciled yet: kopf's create (or resume) handler is on its way
        stamp = fingerprint(ctx, body)
        checks_secret = bool((body.get("spec") or {}).get("auth"))
        if key not in retry and (not full or (done.get(key) == stamp and not checks_secret)):
            continue
        count += 1
        try:
            run_reconcile(ctx, dict(body), "resync")
        except (kopf.PermanentError, kopf.TemporaryError) as err:
            done.pop(key, None)
            if isinstance(err.__cause__, KubeError):
                failed.add(key)
            else:
                failed.discard(key)
            log.info("resync of %s/%s: %s", key[0], key[1], err)
            continue
        failed.discard(key)
        done[key] = stamp
    for gone in set(done) - present:
        done.pop(gone, None)
    failed &= present
    ctx.api_failures &= present
    return count


def refresh_served(ctx: OperatorContext) -> None:
    """Read the CRDs of the optional child kinds again (`discovery`); where what is served changed,
    forget the applied children of the kinds that went and re-plan every SLMDeployment once (each
    gets its InferencePool, or goes on without one). A failed read is logged and left stale: the
    loop below reads again within `RETRY_SECONDS`."""
    try:
        before, now = ctx.served.refresh(ctx.cluster.read_crd)
    except KubeError as err:
        log.warning("reading the CRDs of optional child kinds failed (read again soon): %s", err)
        return
    if before == now:
        return
    log.info("optional child kinds served: %s (were %s)", sorted(now) or "none", sorted(before) or "none")
    ctx.applied.forget_kind(before - now)
    resync_once(ctx, {}, set(), full=True)


async def resync_forever(ctx: OperatorContext) -> None:
    """Every `--resync-seconds`: a pass; every `RETRY_SECONDS`: the failed owners, and the optional
    kinds' CRDs if a refresh is owed; a full pass when this replica becomes active after having
    been a standby."""
    interval = ctx.settings.resync_seconds
    done: dict[OwnerKey, Fingerprint] = {}
    failed: set[OwnerKey] = set()
    last_full = time.monotonic()
    was_active = True
    after_burst = heap.AfterBurst(ctx.applied.version)
    while True:
        await asyncio.sleep(min(interval, RETRY_SECONDS))
        if not ctx.cache.synced():
            continue
        if not ctx.active():
            if was_active:
                log.info("standby: another replica is active; the resync waits")
            was_active = False
            done.clear()
            failed.clear()
            continue
        full = not was_active or time.monotonic() - last_full >= interval
        if not was_active:
            log.info("this replica is now active: re-planning every SLMDeployment")
        was_active = True
        if ctx.served.stale:
            await asyncio.to_thread(refresh_served, ctx)
        if full:
            last_full = time.monotonic()
        elif not failed and not ctx.api_failures:
            continue
        found_work = await asyncio.to_thread(resync_once, ctx, done, failed, full=full) > 0
        give_back = after_burst.step(found_work, ctx.applied.version) if full or found_work else None
        if give_back is not None:  # after a burst, its garbage goes back to the system (reconcile.heap)
            await asyncio.to_thread(give_back)
