"""The least-privilege RBAC rules `slm-operator run` needs (`slm-operator rbac` prints a ClusterRole).

No Secret access cluster-wide: RBAC cannot grant a Secret's metadata without its data, so the
cluster-wide operator does not check the API-key Secret a spec names (`--no-check-auth-secrets`, the
default with `--all-namespaces`); a missing one shows on the pods (FailedMount). In namespaced mode
the per-namespace Roles add `get secrets`, and the operator checks it before applying.

| Who needs it | apiGroups / resources | verbs |
|---|---|---|
| reconcile (SLMDeployments) | slm.dev: slmdeployments | get list watch patch |
| status | slm.dev: slmdeployments/status | get patch |
| ownerReferences with blockOwnerDeletion | slm.dev: slmdeployments/finalizers | update |
| children: apply, prune, watch | `plan.CHILDREN` (InferencePool too) | get list watch create patch delete |
| the operator's autoscaler (targetInFlightRequests) | apps: deployments/scale | patch |
| the informers (placement, fetch failures) | "": nodes | get list watch ; "": pods | list watch |
| auth Secret check, namespaced mode only (`namespaced_rules`) | "": secrets | get |
| Events | "", events.k8s.io: events | create patch |
| kopf, optional CRD reads | apiextensions.k8s.io: customresourcedefinitions; "": namespaces | list watch |
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


SECRET_RULE: dict[str, Any] = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
"""Only in the namespaced Roles: the API-key Secret check (`Settings.check_auth_secrets`)."""


def rules(*, peering: bool = True, secrets: bool = False) -> list[dict[str, Any]]:
    """PolicyRules for a ClusterRole (bind it cluster-wide, or per watched namespace plus nodes/pods);
    `secrets`: with the Secret check's `get secrets` (what a namespaced Role grants)."""
    result: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
        *_child_rules(),
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        *([SECRET_RULE] if secrets else []),
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
