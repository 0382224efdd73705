"""`slm-operator run`: wire the context and registry, then hand control to kopf.

High availability: run several replicas with `--peering NAME` (kopf peering, needs kopf's
KopfPeering/ClusterKopfPeering CRDs); the highest-priority replica handles events, others stand by.
Without `--peering` the operator runs standalone (one replica).
"""

from __future__ import annotations

import kopf

from slm_operator.kube import Kube, load_config
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.handlers import build_registry
from slm_operator.settings import Settings


def run_operator(settings: Settings) -> None:
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    load_config()
    ctx = OperatorContext(settings=settings, cluster=Kube(field_manager=settings.field_manager))
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
