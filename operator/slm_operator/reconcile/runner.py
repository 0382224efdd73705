"""`slm-operator run`: wire the context, the informers and the registry, then hand control to kopf.

Informers (one list + watch each, see `slm_operator.kube.Informer`): nodes (cluster-wide); pods
that still hold resources (not Succeeded/Failed), SLMDeployments and each kind of child the
operator manages (label managed-by, events handed to `reconcile.children`), per watched namespace
or cluster-wide; with `--peering`, the kopf peering object. A namespaced install therefore needs
Roles for pods, SLMDeployments and the child kinds in its namespaces, plus read access to nodes.

High availability: run several replicas with `--peering NAME` (kopf peering, needs kopf's
KopfPeering/ClusterKopfPeering CRDs); the highest-priority replica handles events, the others stand
by with warm caches and do nothing (`context.Leadership`); the peering identity is $POD_ID (the
chart sets it), generated here when unset so that this replica can recognise its own entry.
Without `--peering` the operator runs standalone (one replica).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid

import kopf
from prometheus_client import Counter

from slm_operator.api import API_VERSION, PLURAL
from slm_operator.kube import Informer, Kube, WatchTarget, collection_path, load_config
from slm_operator.reconcile import heap
from slm_operator.reconcile.children import ChildEvents, child_event
from slm_operator.reconcile.context import Background, Leadership, OperatorContext
from slm_operator.reconcile.handlers import build_registry
from slm_operator.reconcile.plan import CHILDREN
from slm_operator.reconcile.reconciler import FAN_OUT_THREADS
from slm_operator.render.metadata import MANAGED_BY, MANAGED_BY_LABEL
from slm_operator.settings import Settings

ACTIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"
CHILD_WORKERS = 4
"""Threads acting on child events (drift corrections, status refreshes), one object at a time each."""
MALLOC_ARENAS = 2
"""glibc malloc arenas (`reconcile.heap`): fewer arenas, less memory stranded after a burst."""
PEERING_API = "kopf.dev/v1"


def informers(kube: Kube, ctx: OperatorContext) -> list[Background]:
    """One informer per resource and scope, feeding `ctx.cache` (and, for the children, the
    workers of `ChildEvents`, started with the informers)."""
    settings, cache = ctx.settings, ctx.cache
    scopes: list[str | None] = list(settings.namespaces) or [None]
    found: list[Background] = [Informer(kube, WatchTarget(collection_path("v1", "nodes")), cache.nodes)]
    events = ChildEvents(lambda kind, obj: child_event(ctx, kind, obj), workers=CHILD_WORKERS)
    managed = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    for namespace in scopes:
        pods = WatchTarget(
            collection_path("v1", "pods", namespace), field_selector=ACTIVE_PODS, namespace=namespace
        )
        owners = WatchTarget(collection_path(API_VERSION, PLURAL, namespace), namespace=namespace)
        found += [Informer(kube, pods, cache.pods), Informer(kube, owners, cache.owners)]
        # No watch of an optional kind: its CRD may go away (InferencePools are re-applied by
        # their owners' reconciles, not on drift).
        for child in (c for c in CHILDREN if not c.optional):
            target = WatchTarget(
                collection_path(child.api_version, child.plural, namespace),
                label_selector=managed,
                namespace=namespace,
            )
            found.append(Informer(kube, target, events.sink(child.api_version, child.kind)))
        if settings.peering:
            plural = "kopfpeerings" if namespace else "clusterkopfpeerings"
            peering = WatchTarget(
                collection_path(PEERING_API, plural, namespace),
                field_selector=f"metadata.name={settings.peering}",
                namespace=namespace,
            )
            found.append(Informer(kube, peering, cache.peering))
    kube.watch_connections = max(kube.watch_connections, len(found))
    return [*found, events]


def autoscalers(kube: Kube, ctx: OperatorContext) -> list[Background]:
    """The operator's own autoscaler (targetInFlightRequests). Without a gateway to read it still
    owns the replica count (keeps it within the bounds) and says NoDemandData in the status."""
    from slm_operator.autoscale.demand import demand_url
    from slm_operator.autoscale.loop import Autoscaler, ContextSources, http_demand, no_demand

    settings = ctx.settings
    url = settings.demand_url or (demand_url(settings.gateway_url) if settings.gateway_url else None)
    return [
        Autoscaler(
            ContextSources(ctx),
            kube,
            http_demand(url) if url else no_demand,
            metrics=ctx.metrics,
            interval=settings.autoscale_seconds,
        )
    ]


def own_identity() -> str:
    """kopf's peering identity for this process: $POD_ID, set here when missing."""
    identity = os.environ.get("POD_ID")
    if not identity:
        identity = f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}-{uuid.uuid4().hex[:6]}"
        os.environ["POD_ID"] = identity
    return identity


def run_operator(settings: Settings) -> None:
    if not os.environ.get("MALLOC_ARENA_MAX"):  # an explicit setting wins (glibc read it already)
        heap.limit_arenas(MALLOC_ARENAS)
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    load_config()
    # a kept connection for every thread that may send at once (else a TLS handshake per request)
    connections = settings.workers + FAN_OUT_THREADS + CHILD_WORKERS + 4
    kube = Kube(field_manager=settings.field_manager, connections=connections)
    leadership = Leadership(settings.peering, own_identity(), settings.priority)
    ctx = OperatorContext(settings=settings, cluster=kube, leadership=leadership)
    requests = Counter(
        "slm_operator_api_requests",
        "HTTP requests of the operator's own client (kopf's are not included) by verb.",
        ["verb"],
        registry=ctx.metrics.registry,
    )
    kube.requests.listen(lambda verb: requests.labels(verb=verb).inc())
    ctx.background = informers(kube, ctx) + autoscalers(kube, ctx)
    kopf.run(
        registry=build_registry(),
        memo=kopf.Memo(ctx=ctx),
        standalone=settings.standalone,
        peering_name=settings.peering,
        priority=settings.priority,
        clusterwide=settings.all_namespaces and not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness,
    )
