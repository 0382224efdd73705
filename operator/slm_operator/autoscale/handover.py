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


KEPT_ANNOTATION = "slm.dev/replicas-kept"
"""On a Deployment whose autoscaling was switched off: `COUNT/SPEC`, the count it kept (what the
autoscaler left) and the `spec.replicas` it was kept against. Dropped once `spec.replicas` changes."""


def _kept(value: object) -> tuple[int, int] | None:
    count, _, spec = str(value or "").partition("/")
    return (int(count), int(spec)) if count.isdigit() and spec.isdigit() else None


def keep_replicas(
    objs: list[Obj],
    namespace: str,
    children: Mapping[Key, Mapping[str, Any]],
    live: Mapping[str, Any] | None,
) -> list[Obj]:
    """`objs` (rendered) with the Deployment's replicas kept at the live count after autoscaling
    was switched off, until `spec.replicas` says otherwise (pure; new dicts for what it changes).

    Switched off = the rendered Deployment carries `spec.replicas` again while the remembered one
    (the operator's last apply) did not. The count kept and the spec it was kept against go into
    `KEPT_ANNOTATION`, so later reconciles (and a restarted operator) keep it too; a new
    `spec.replicas` ends it."""
    out: list[Obj] = []
    for obj in objs:
        spec = obj.get("spec") or {}
        if obj.get("kind") != "Deployment" or "replicas" not in spec:
            out.append(obj)
            continue
        wanted = int(spec["replicas"])
        key = (str(obj["apiVersion"]), "Deployment", namespace, str(obj["metadata"]["name"]))
        remembered = children.get(key)
        annotations = ((remembered or {}).get("metadata") or {}).get("annotations") or {}
        kept = _kept(annotations.get(KEPT_ANNOTATION))
        count: int | None = None
        if kept is not None and kept[1] == wanted:
            count = kept[0]
        elif kept is None and remembered is not None and "replicas" not in (remembered.get("spec") or {}):
            live_count = ((live or {}).get("spec") or {}).get("replicas")
            if live_count is not None and int(live_count) != wanted:
                count = int(live_count)
        if count is None:
            out.append(obj)
            continue
        meta = obj["metadata"]
        out.append(
            {
                **obj,
                "metadata": {
                    **meta,
                    "annotations": {**(meta.get("annotations") or {}), KEPT_ANNOTATION: f"{count}/{wanted}"},
                },
                "spec": {**spec, "replicas": count},
            }
        )
    return out
