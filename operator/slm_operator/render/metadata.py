"""Names, labels and metadata shared by every child object."""

from __future__ import annotations

from typing import Any

from slm_operator.render.context import RenderContext

MANAGED_BY = "slm-operator"
DEPLOYMENT_LABEL = "slm.dev/deployment"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def selector_labels(name: str) -> dict[str, str]:
    """Labels the Deployment, Service, PDB and NetworkPolicy select pods by; never change them."""
    return {NAME_LABEL: "slm-runtime", INSTANCE_LABEL: name}


def standard_labels(name: str) -> dict[str, str]:
    """Labels on every child; `slm.dev/deployment` lets the operator find (and prune) them."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "slm-operator",
        MANAGED_BY_LABEL: MANAGED_BY,
        DEPLOYMENT_LABEL: name,
    }


def object_meta(ctx: RenderContext, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or ctx.name}
    if ctx.namespace:
        meta["namespace"] = ctx.namespace
    meta["labels"] = standard_labels(ctx.name)
    return meta
