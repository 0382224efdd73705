"""The least-privilege RBAC rules `slm-operator run` needs (`slm-operator rbac` prints a ClusterRole).

| Who needs it | apiGroups / resources | verbs |
|---|---|---|
| reconcile (SLMDeployments) | slm.dev: slmdeployments | get list watch patch |
| status | slm.dev: slmdeployments/status | get patch |
| ownerReferences with blockOwnerDeletion | slm.dev: slmdeployments/finalizers | update |
| children: apply, prune, watch | the 8 `plan.CHILDREN` | get list watch create patch delete |
| the operator's autoscaler (targetInFlightRequests) | apps: deployments/scale | patch |
| the informers (placement, fetch failures) | "": nodes | get list watch ; "": pods | list watch |
| auth Secret check | "": secrets | get |
| Events | "", events.k8s.io: events | create patch |
| kopf itself | apiextensions.k8s.io: customresourcedefinitions; "": namespaces | list watch |
| kopf peering (`--peering`) | kopf.dev: clusterkopfpeerings, kopfpeerings | get list watch patch |
"""

from __future__ import annotations

from typing import Any

from slm_operator.api import GROUP, PLURAL
from slm_operator.reconcile.plan import CHILDREN

CHILD_VERBS = ["get", "list", "watch", "create", "patch", "delete"]


def _child_rules() -> list[dict[str, Any]]:
    by_group: dict[str, list[str]] = {}
    for child in CHILDREN:
        by_group.setdefault(child.group, []).append(child.plural)
    return [
        {"apiGroups": [group], "resources": sorted(plurals), "verbs": CHILD_VERBS}
        for group, plurals in sorted(by_group.items())
    ]


def rules(*, peering: bool = True) -> list[dict[str, Any]]:
    """PolicyRules for a ClusterRole (bind it cluster-wide, or per watched namespace plus nodes/pods)."""
    result: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
        *_child_rules(),
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    if peering:
        result.append(
            {
                "apiGroups": ["kopf.dev"],
                "resources": ["clusterkopfpeerings", "kopfpeerings"],
                "verbs": ["get", "list", "watch", "patch"],
            }
        )
    return result


def cluster_role(name: str = "slm-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "slm-operator"}},
        "rules": rules(),
    }
