"""One reconcile of one SLMDeployment: check the Secret, plan (pure), execute (the only I/O).

Level-based and idempotent: every trigger (create, update, resume, periodic resync, a child deleted
or edited) runs the same plan against the current observed state. The cluster is reached only
through the `Cluster` protocol (implemented by `slm_operator.kube.Kube`), so tests pass a fake.
`execute` applies only what the plan says differs, deletes what it prunes, and patches the status
only when it changes: a plan with nothing to do makes no API call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from slm_operator import redact
from slm_operator.api import SLMDeploymentSpec
from slm_operator.autoscale.handover import keep_replicas, replicas_hand_overs
from slm_operator.errors import (
    ApplyError,
    KindNotServedError,
    KubeError,
    NameConflictError,
    NamespaceTerminatingError,
    SecretNotFoundError,
    SlmOperatorError,
)
from slm_operator.placement import Placement
from slm_operator.policy import Policy
from slm_operator.policy import check as check_policy
from slm_operator.reconcile.plan import (
    OPTIONAL_KINDS,
    Event,
    Key,
    Obj,
    Observed,
    Owner,
    Plan,
    Step,
    apply_waves,
    conflicts_of,
    parse_spec,
    placement_events,
    plan,
    unverified_keys,
)
from slm_operator.reconcile.status import condition_message, failed_status, now_rfc3339
from slm_operator.render import DEFAULT_IMAGE, RenderContext, render_all

__all__ = [
    "Cluster",
    "Event",
    "Outcome",
    "Step",
    "check_names",
    "check_secret",
    "execute",
    "parse_spec",
    "placement_events",
    "reconcile",
    "report_failure",
]


class Cluster(Protocol):
    """The API calls a reconcile needs (reads of nodes and pods come from the caches, not here)."""

    def read_secret(self, namespace: str, name: str) -> Obj | None: ...
    def read(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = False
    ) -> Obj | None: ...
    def apply(self, obj: Obj) -> Obj: ...
    def list_labelled(
        self, api_version: str, kind: str, namespace: str | None, selector: str
    ) -> list[Obj]: ...
    def delete(self, obj: Obj) -> None: ...
    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None: ...
    def hand_over(self, obj: Obj) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    """What a reconcile did."""

    placement: Placement
    desired: list[Obj]
    applied: list[Obj]
    pruned: list[Obj]
    status: Obj
    events: list[Event] = field(default_factory=list)
    plan: Plan | None = None
    patched: Obj | None = None
    """The SLMDeployment as the status patch left it (None when no patch was needed or answered)."""
    status_written: bool = False


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


FAN_OUT_THREADS = 8
"""Requests of reconciles in flight at once beside the reconciles' own threads: the name-check
GETs of `check_names` and the applies of one wave (`plan.apply_waves`), a few per reconcile."""
_FAN_OUT = ThreadPoolExecutor(max_workers=FAN_OUT_THREADS, thread_name_prefix="reconcile-io")
"""Shared by every reconcile: a pool per reconcile started and joined threads each time, which in a
burst of creates cost more than the requests themselves. Only reconciles' threads submit to it
(never its own), so it cannot deadlock on itself."""
X = TypeVar("X")
Y = TypeVar("Y")
REJECTED = frozenset({400, 403, 413, 422})
"""API answers to an apply that a retry with the same spec gets again (invalid, forbidden by
admission or RBAC, over quota, too large): reported as ApplyFailed instead of retried quietly."""


def _apply(cluster: Cluster, step: Step) -> Obj:
    try:
        return cluster.apply(step.obj)
    except NamespaceTerminatingError:
        raise  # not a rejection of the spec: the namespace is going away (runs.py leaves it alone)
    except KubeError as err:
        if err.status in REJECTED:
            raise ApplyError(str(err), status=err.status) from err
        if err.status == 404 and step.obj.get("kind") in OPTIONAL_KINDS:
            raise KindNotServedError(str(err), status=404) from err
        raise


def _at_once(call: Callable[[X], Y], items: Sequence[X]) -> list[Y]:
    """`call` on every item, all at once on the shared pool (inline for one); results in order.

    Every call runs to its end even when one fails; then the first failure (in item order) is
    raised, so a failed wave never leaves an apply in flight behind the reconcile."""
    if len(items) <= 1:
        return [call(item) for item in items]
    futures = [_FAN_OUT.submit(call, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


def check_names(the_plan: Plan, observed: Observed, cluster: Cluster) -> None:
    """Raise `NameConflictError` if the plan would take over an object this owner does not control.

    One GET per child the caches do not know (a new SLMDeployment's first reconcile, a child deleted
    since), all at once so that the check costs one round trip, served from the API server's watch
    cache; none when the plan applies nothing new."""
    keys = unverified_keys(the_plan, observed)
    found = _at_once(lambda key: cluster.read(*key, cached=True), keys)
    live: dict[Key, Obj | None] = dict(zip(keys, found, strict=True))
    conflicts = conflicts_of(the_plan, observed, live)
    if conflicts:
        raise NameConflictError(
            "; ".join(c.message for c in conflicts)
            + ": this SLMDeployment does not own it and leaves it alone (nothing was applied); "
            "rename the SLMDeployment or remove that object",
            passing=all(c.passing for c in conflicts),
        )


def execute(plan: Plan, cluster: Cluster, hand_overs: Sequence[Obj] = ()) -> Outcome:
    """Carry out `plan`: apply, prune, patch the status if it changed. The only I/O of a reconcile.

    The applies go in waves (`plan.apply_waves`): the objects of one wave at once, the Deployment
    after what its pods need, the HPA after the Deployment; three round trips, not one per child
    (a reconcile's latency on a cluster with CPU to spare; a burst on a saturated one is bound by
    CPU, not by these waits).
    `hand_overs` (`autoscale.handover.replicas_hand_overs`) are applied first, under their own
    field manager, so that a Deployment keeps its replica count when the operator stops owning it."""
    for obj in hand_overs:
        cluster.hand_over(obj)
    applied = [
        obj for wave in apply_waves(plan.apply) for obj in _at_once(lambda s: _apply(cluster, s), wave)
    ]
    for step in plan.delete:
        cluster.delete(step.obj)
    deployment = next((a for a in applied if a.get("kind") == "Deployment"), None)
    status = plan.status(deployment)
    patched = None
    written = plan.status_changed(status)
    if written:
        patched = cluster.patch_status(plan.owner.namespace, plan.owner.name, status)
    return Outcome(
        placement=plan.placement,
        desired=list(plan.desired),
        applied=applied,
        pruned=[step.obj for step in plan.delete],
        status=status,
        events=list(plan.events) + plan.status_events(status),
        plan=plan,
        patched=patched,
        status_written=written,
    )


def reconcile(
    body: Mapping[str, Any],
    cluster: Cluster,
    observed: Observed,
    *,
    image: str = DEFAULT_IMAGE,
    timestamp: str | None = None,
    render: Callable[[RenderContext], list[Obj]] = render_all,
    gateway_namespace: str | None = None,
    gateway_url: str | None = None,
    policy: Policy | None = None,
    check_secrets: bool = True,
    optional_kinds: frozenset[str] = frozenset(),
    gateway_key_sha256: tuple[str, ...] = (),
) -> Outcome:
    """Bring the children of the SLMDeployment `body` to the desired state and report it in status.

    `gateway_namespace`: where slm-gateway runs (the NetworkPolicy admits it); `gateway_url`: its
    OpenAI URL, shown as status.endpoints.fleet; `policy`: what the spec may ask for (None: no
    policy check); `check_secrets`: whether the API-key Secret is read first (see `Settings`);
    `optional_kinds`: the optional child kinds the API server serves (InferencePool);
    `gateway_key_sha256`: the gateway key digests runtimes with spec.auth trust (`Settings`)."""
    owner = Owner.from_body(body)
    spec = parse_spec(body)
    if policy is not None:
        check_policy(spec, policy, default_image=image)
    if check_secrets:
        check_secret(spec, owner.namespace, cluster)

    def rendered(ctx: RenderContext) -> list[Obj]:
        # autoscaling switched off: the live count stays until spec.replicas says otherwise
        return keep_replicas(render(ctx), owner.namespace, observed.children, observed.deployment)

    the_plan = plan(
        body,
        observed,
        image=image,
        timestamp=timestamp or now_rfc3339(),
        spec=spec,
        render=rendered,
        gateway_namespace=gateway_namespace,
        gateway_url=gateway_url,
        optional_kinds=optional_kinds,
        gateway_key_sha256=gateway_key_sha256,
    )
    check_names(the_plan, observed, cluster)
    return execute(the_plan, cluster, replicas_hand_overs(the_plan, observed.children))


def report_failure(
    body: Mapping[str, Any], error: SlmOperatorError, cluster: Cluster, *, timestamp: str | None = None
) -> list[Event]:
    """Set Degraded (nothing was applied) and return an Event if the message is new.

    Quiet when the status already says exactly this (a retried failure writes nothing)."""
    owner = Owner.from_body(body)
    old_status = body.get("status") or {}
    status = failed_status(
        error, generation=owner.generation, old=old_status, timestamp=timestamp or now_rfc3339()
    )
    if any(old_status.get(k) != v for k, v in status.items()):
        cluster.patch_status(owner.namespace, owner.name, status)
    message = redact.text(str(error))
    if condition_message(old_status, "Degraded") == message:
        return []
    return [("Warning", error.reason, message)]
