"""One reconcile of one SLMDeployment: parse, check the Secret, place, render, apply, prune, report.

Level-based and idempotent: every trigger (create, update, resume, periodic resync, a child deleted
or edited) runs the same function against the current state. The cluster is reached only through
the `Cluster` protocol (implemented by `slm_operator.kube.Kube`), so tests pass a fake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from slm_operator.api import MAX_NAME_LENGTH, SLMDeploymentSpec
from slm_operator.errors import SecretNotFoundError, SlmOperatorError, SpecError
from slm_operator.placement import Placement, place
from slm_operator.reconcile.plan import (
    CHILD_KINDS,
    Obj,
    Owner,
    foreign_pods,
    own_pods,
    owned,
    prune_plan,
)
from slm_operator.reconcile.status import (
    condition_message,
    failed_status,
    fetch_failure_events,
    now_rfc3339,
    reconciled_status,
)
from slm_operator.render import DEFAULT_IMAGE, DEPLOYMENT_LABEL, RenderContext, render_all

Event = tuple[str, str, str]
"""(type Normal|Warning, reason, message) of a Kubernetes Event to post on the SLMDeployment."""


class Cluster(Protocol):
    """The API calls a reconcile needs."""

    def list_nodes(self) -> list[Obj]: ...
    def list_pods(self) -> list[Obj]: ...
    def read_secret(self, namespace: str, name: str) -> Obj | None: ...
    def apply(self, obj: Obj) -> Obj: ...
    def list_labelled(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]: ...
    def delete(self, obj: Obj) -> None: ...
    def patch_status(self, namespace: str, name: str, status: Obj) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What a successful reconcile did."""

    placement: Placement
    desired: list[Obj]
    applied: list[Obj]
    pruned: list[Obj]
    status: Obj
    events: list[Event] = field(default_factory=list)


def parse_spec(body: Mapping[str, Any]) -> SLMDeploymentSpec:
    """The spec as the API server stored it (defaults applied); a violation is permanent."""
    owner = Owner.from_body(body)
    if len(owner.name) > MAX_NAME_LENGTH:
        raise SpecError(f"metadata.name must be at most {MAX_NAME_LENGTH} characters")
    try:
        return SLMDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SpecError(f"invalid spec: {problems}") from err


def check_secret(spec: SLMDeploymentSpec, namespace: str, cluster: Cluster) -> None:
    """The API key Secret must exist and hold the key, or the pods could never start."""
    if spec.auth is None:
        return
    ref = spec.auth.api_key_secret_ref
    secret = cluster.read_secret(namespace, ref.name)
    if secret is None:
        raise SecretNotFoundError(f"Secret {namespace}/{ref.name} (spec.auth.apiKeySecretRef) not found")
    if ref.key not in (secret.get("data") or {}) and ref.key not in (secret.get("stringData") or {}):
        raise SecretNotFoundError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")


def existing_children(cluster: Cluster, owner: Owner) -> list[Obj]:
    selector = f"{DEPLOYMENT_LABEL}={owner.name}"
    found: list[Obj] = []
    for api_version, kind in CHILD_KINDS:
        found += cluster.list_labelled(api_version, kind, owner.namespace, selector)
    return found


def placement_events(old_status: Mapping[str, Any], placement: Placement) -> list[Event]:
    """Events only when the decision changes, so periodic resyncs stay quiet."""
    old_variant = old_status.get("variant") or {}
    changed = (
        old_status.get("hardware") != placement.hardware
        or old_variant.get("quantization") != placement.variant.quantization
        or old_variant.get("uri") != placement.variant.uri
    )
    if not changed:
        return []
    events: list[Event] = [("Normal", "Placed", placement.message)]
    if placement.skipped:
        events.append(("Warning", "FallbackPlacement", "; ".join(placement.skipped)))
    return events


def reconcile(
    body: Mapping[str, Any],
    cluster: Cluster,
    *,
    image: str = DEFAULT_IMAGE,
    timestamp: str | None = None,
    gateway_namespace: str | None = None,
    gateway_url: str | None = None,
) -> Outcome:
    """Bring the children of the SLMDeployment `body` to the desired state and report it in status."""
    owner = Owner.from_body(body)
    old_status = body.get("status") or {}
    spec = parse_spec(body)
    check_secret(spec, owner.namespace, cluster)
    pods = cluster.list_pods()
    placement = place(spec, cluster.list_nodes(), foreign_pods(pods, owner))
    ctx = RenderContext(
        name=owner.name,
        namespace=owner.namespace,
        spec=spec,
        placement=placement,
        default_image=image,
        gateway_namespace=gateway_namespace,
    )
    desired = owned(render_all(ctx), owner)
    applied = [cluster.apply(obj) for obj in desired]
    stale = prune_plan(desired, existing_children(cluster, owner), owner)
    for obj in stale:
        cluster.delete(obj)
    deployment = next((a for a in applied if a.get("kind") == "Deployment"), None)
    status = reconciled_status(
        name=owner.name,
        namespace=owner.namespace,
        generation=owner.generation,
        port=spec.networking.port,
        placement=placement,
        deployment=deployment,
        old=old_status,
        timestamp=timestamp or now_rfc3339(),
        pods=own_pods(pods, owner),
        fleet_endpoint=gateway_url,
    )
    cluster.patch_status(owner.namespace, owner.name, status)
    events = placement_events(old_status, placement) + fetch_failure_events(old_status, status)
    events += [("Normal", "Pruned", f"deleted {o['kind']} {o['metadata']['name']}") for o in stale]
    return Outcome(placement, desired, applied, stale, status, events)


def report_failure(
    body: Mapping[str, Any], error: SlmOperatorError, cluster: Cluster, *, timestamp: str | None = None
) -> list[Event]:
    """Set Degraded (nothing was applied) and return an Event if the message is new."""
    owner = Owner.from_body(body)
    old_status = body.get("status") or {}
    status = failed_status(
        error, generation=owner.generation, old=old_status, timestamp=timestamp or now_rfc3339()
    )
    cluster.patch_status(owner.namespace, owner.name, status)
    if condition_message(old_status, "Degraded") == str(error):
        return []
    return [("Warning", error.reason, str(error))]
