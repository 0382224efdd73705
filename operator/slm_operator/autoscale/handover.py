"""Hand `spec.replicas` of a model Deployment over from the operator's apply to its new owner.

Server-side apply removes a field from the live object when the last field manager that applied
it stops applying it. When autoscaling is switched on, the operator's apply stops carrying
`spec.replicas` (the autoscaler owns it now), so the API server would drop the field and the
Deployment would fall to its default of one pod before the autoscaler scales it back. The
documented fix (Kubernetes "Server-Side Apply: transferring ownership") is to apply the live
value once under a second field manager (`slm-operator-handover`, `Kube.hand_over`) before the
operator's apply leaves the field out: the field then still has an owner, keeps its value, and
the autoscaler takes ownership with its first write of the scale subresource.

The hand-over is applied *without* force: when someone else already owns `spec.replicas` with a
different value (the HPA scaled, or `kubectl scale`), the API server answers 409 and nothing needs
handing over, because the field no longer depends on the operator's apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slm_operator.reconcile.plan import Key, Obj, Plan


def replicas_hand_overs(plan: Plan, children: Mapping[Key, Mapping[str, Any]]) -> list[Obj]:
    """The partial Deployments to apply under the hand-over field manager before `plan` runs (pure).

    One for each Deployment the plan applies without `spec.replicas` whose remembered form (what
    the operator last applied, or listed at startup) still has it: the operator owned the field
    and is about to let go. Carries the live replica count of the observed Deployment."""
    live = plan.deployment
    live_replicas = ((live or {}).get("spec") or {}).get("replicas")
    if live_replicas is None:
        return []
    out: list[Obj] = []
    for step in plan.apply:
        obj = step.obj
        if obj.get("kind") != "Deployment" or "replicas" in (obj.get("spec") or {}):
            continue
        remembered = children.get(step.key)
        if remembered is None or "replicas" not in (remembered.get("spec") or {}):
            continue
        meta = obj["metadata"]
        out.append(
            {
                "apiVersion": obj["apiVersion"],
                "kind": "Deployment",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": int(live_replicas)},
            }
        )
    return out
