"""Pure status computation: conditions (with observedGeneration and stable transition times),
readiness from the owned Deployment, and the failure status for each error family."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from slm_operator import redact
from slm_operator.errors import SlmOperatorError
from slm_operator.placement import Placement
from slm_operator.render import endpoints, selector_labels

Status = dict[str, Any]
Condition = dict[str, Any]
Event = tuple[str, str, str]

FETCH_CONTAINER = "fetch-model"
FETCH_FAILED = "ModelFetchFailed"
RUNTIME_CONTAINER = "runtime"
RUNTIME_FAILED = "RuntimeStartFailed"
"""The runtime container exits at start on a configuration it refuses (e.g. an API-key file with
no usable key: auth would otherwise be silently off) and says why in its termination message."""
PROVIDER_CONTAINER = "select-provider"
PROVIDER_FALLBACK = "ProviderFallback"


def now_rfc3339(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool, reason: str, message: str, generation: int) -> Condition:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Condition], timestamp: str
) -> list[Condition]:
    """New conditions keep the old lastTransitionTime when their status did not change."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        unchanged = before is not None and before.get("status") == cond["status"]
        since = before.get("lastTransitionTime") if unchanged and before is not None else None
        merged.append({**cond, "lastTransitionTime": since or timestamp})
    kinds = {c["type"] for c in new}
    merged += [dict(c) for c in old if c.get("type") not in kinds]
    return sorted(merged, key=lambda c: str(c["type"]))


def _last_failed_run(
    pods: Sequence[Mapping[str, Any]], statuses: str, container: str
) -> tuple[str, Mapping[str, Any], str] | None:
    """The first pod (by name) whose `container` (in `status.<statuses>`) is not ready and last
    exited non-zero: (pod name, its terminated state, the last line of its termination message
    or the reason, redacted). Pods being deleted are skipped: a stop by SIGTERM is not a failure."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        for st in (pod.get("status") or {}).get(statuses) or ():
            if st.get("name") != container or st.get("ready"):
                continue
            term = (st.get("state") or {}).get("terminated") or (st.get("lastState") or {}).get("terminated")
            if not term or int(term.get("exitCode") or 0) == 0:
                continue
            lines = [ln.strip() for ln in str(term.get("message") or "").splitlines() if ln.strip()]
            detail = redact.text(lines[-1])[:512] if lines else str(term.get("reason") or "failed")
            return str(meta.get("name")), term, detail
    return None


def fetch_failure(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a pod could not fetch its model (the init container's last failed run), or None.

    A failed download or checksum keeps the pod in Init:CrashLoopBackOff; the Deployment only
    reports it unavailable, so without this the SLMDeployment would say PodsNotReady and never
    why. The fetch container's last log line (its termination message, FallbackToLogsOnError)
    is the reason, e.g. "sha256 mismatch: expected …, got …".
    """
    found = _last_failed_run(pods, "initContainerStatuses", FETCH_CONTAINER)
    if found is None:
        return None
    name, term, detail = found
    return f"model fetch failed in pod {name} (exit code {term.get('exitCode')}): {detail}"


def runtime_failure(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a pod's runtime container keeps exiting (its last failed run's termination message), or
    None. Without this a refused start (exit 2: no usable API key, a key too short) would show as
    PodsNotReady / CrashLoopBackOff and never say why."""
    found = _last_failed_run(pods, "containerStatuses", RUNTIME_CONTAINER)
    if found is None:
        return None
    name, term, detail = found
    return f"the runtime in pod {name} exited (exit code {term.get('exitCode')}): {detail}"


def provider_fallback(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a pod runs its ONNX model on a provider other than the one placement chose, or None.

    The `select-provider` init container writes a JSON report to its termination message
    (`slm-runtime select-provider`); `fallback: true` means the requested execution provider
    failed to load and the model runs on the next one (at least CPU).
    """
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        for st in (pod.get("status") or {}).get("initContainerStatuses") or ():
            if st.get("name") != PROVIDER_CONTAINER:
                continue
            term = (st.get("state") or {}).get("terminated") or {}
            if int(term.get("exitCode") or 0) != 0:
                continue
            try:
                report = json.loads(str(term.get("message") or ""))
            except ValueError:
                continue
            if isinstance(report, dict) and report.get("fallback") is True:
                name = (pod.get("metadata") or {}).get("name")
                return f"pod {name}: {str(report.get('summary') or 'execution provider fell back')[:900]}"
    return None


def fetch_failure_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Event]:
    """A Warning Event when Ready turns to ModelFetchFailed or RuntimeStartFailed (once per
    transition, not per resync)."""
    before = _condition(old, "Ready")
    after = _condition(new, "Ready")
    reason = None if after is None else after.get("reason")
    if after is None or reason not in (FETCH_FAILED, RUNTIME_FAILED):
        return []
    if before is not None and before.get("reason") == reason:
        return []
    return [("Warning", str(reason), str(after.get("message")))]


def _condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    return next((c for c in (status or {}).get("conditions") or () if c.get("type") == kind), None)


def _with_fetch_failure(
    conds: list[Condition], failure: str | None, generation: int, reason: str = FETCH_FAILED
) -> list[Condition]:
    """Replace a not-Ready reason with the pod's failure (`reason`), and mark the object Degraded."""
    ready = next(c for c in conds if c["type"] == "Ready")
    if failure is None or ready["status"] == "True":
        return conds
    out = [c for c in conds if c["type"] not in ("Ready", "Degraded")]
    out.append(condition("Ready", False, reason, failure, generation))
    out.append(condition("Degraded", True, reason, failure, generation))
    return out


SCALED_TO_ZERO_ON_IDLE = "ScaledToZeroOnIdle"
"""Ready=True reason of a model the autoscaler scaled to zero: it serves on demand (the gateway
holds the next request and the autoscaler wakes it), so GitOps health stays Healthy."""


def scaled_to_zero_on_idle(status: Mapping[str, Any] | None) -> bool:
    """Whether the operator's autoscaler put the model at zero (status.autoscaling says so)."""
    scaling = (status or {}).get("autoscaling") or {}
    return scaling.get("desiredReplicas") == 0


def deployment_conditions(
    deployment: Mapping[str, Any] | None,
    generation: int,
    pods: Sequence[Mapping[str, Any]] = (),
    *,
    idle: bool = False,
) -> tuple[list[Condition], int, int]:
    """Ready and Progressing (plus Degraded on a missed progress deadline) from the Deployment.

    Ready is True when the Deployment controller has seen the latest template (observedGeneration)
    and at least the desired number of pods are updated and available. Returns (conditions,
    desired replicas, ready replicas).
    """
    if deployment is None:
        return (
            [
                condition(
                    "Ready", False, "DeploymentMissing", "the Deployment does not exist yet", generation
                ),
                condition("Progressing", True, "Creating", "creating the Deployment", generation),
            ],
            0,
            0,
        )
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    total = int(status.get("replicas") or 0)
    counts = f"{available}/{desired} pods available, {updated} updated"
    conds: list[Condition] = []
    if desired == 0 and idle:
        message = "scaled to zero while idle; the gateway holds the next request until a pod is ready"
        conds.append(condition("Ready", True, SCALED_TO_ZERO_ON_IDLE, message, generation))
    elif desired == 0:
        conds.append(condition("Ready", False, "ScaledToZero", "no pods are wanted", generation))
    elif current and updated >= desired and available >= desired:
        conds.append(condition("Ready", True, "PodsAvailable", counts, generation))
    else:
        conds.append(condition("Ready", False, "PodsNotReady", counts, generation))
    deadline = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or ()
    )
    rolling = not current or updated < desired or total > updated or available < desired
    if deadline:
        conds.append(condition("Progressing", False, "ProgressDeadlineExceeded", counts, generation))
        conds.append(
            condition("Degraded", True, "ProgressDeadlineExceeded", f"rollout stalled: {counts}", generation)
        )
    elif rolling:
        conds.append(condition("Progressing", True, "RollingOut", counts, generation))
    else:
        conds.append(condition("Progressing", False, "RolloutComplete", counts, generation))
    fetch = fetch_failure(pods)
    if fetch is not None:
        conds = _with_fetch_failure(conds, fetch, generation)
    else:
        conds = _with_fetch_failure(conds, runtime_failure(pods), generation, RUNTIME_FAILED)
    fallback = provider_fallback(pods)
    if fallback is not None and not any(c["type"] == "Degraded" for c in conds):
        # The model serves (Ready may be True), but not on the accelerator it was placed on.
        conds.append(condition("Degraded", True, PROVIDER_FALLBACK, fallback, generation))
    return conds, desired, ready


def reconciled_status(
    *,
    name: str,
    namespace: str,
    generation: int,
    port: int,
    placement: Placement,
    deployment: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    timestamp: str,
    pods: Sequence[Mapping[str, Any]] = (),
    fleet_endpoint: str | None = None,
) -> Status:
    """Status after a successful apply; `fleet_endpoint` is the gateway's URL, if the chart runs one."""
    conds, desired, ready = deployment_conditions(
        deployment, generation, pods, idle=scaled_to_zero_on_idle(old)
    )
    if not any(c["type"] == "Degraded" for c in conds):
        reason = "FallbackPlacement" if placement.skipped else "Reconciled"
        conds.append(condition("Degraded", False, reason, placement.message, generation))
    variant = placement.variant
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions((old or {}).get("conditions") or (), conds, timestamp),
        "hardware": placement.hardware,
        "variant": {
            "format": variant.format,
            "quantization": variant.quantization,
            "uri": redact.uri(variant.uri),
        },
        "endpoints": {
            **endpoints(name, namespace, port),
            **({"fleet": fleet_endpoint} if fleet_endpoint else {}),
        },
        "replicas": desired,
        "readyReplicas": ready,
        "selector": ",".join(f"{k}={v}" for k, v in selector_labels(name).items()),
        "message": placement.message,
    }


def failed_status(
    error: SlmOperatorError, *, generation: int, old: Mapping[str, Any] | None, timestamp: str
) -> Status:
    """Status when nothing could be applied: Degraded with the error's reason, Ready unchanged if known."""
    message = redact.text(str(error))
    conds = [
        condition("Degraded", True, error.reason, message, generation),
        condition("Progressing", False, error.reason, message, generation),
    ]
    previous = (old or {}).get("conditions") or ()
    if not any(c.get("type") == "Ready" for c in previous):
        conds.append(condition("Ready", False, error.reason, message, generation))
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous, conds, timestamp),
        "message": message,
    }


def observed_status(
    deployment: Mapping[str, Any] | None,
    old: Mapping[str, Any],
    timestamp: str,
    pods: Sequence[Mapping[str, Any]] = (),
) -> Status | None:
    """Status update from a watched Deployment event, or None when nothing changes.

    Conditions carry the generation the operator last reconciled (status.observedGeneration), not
    the newest one, because the Deployment reflects what was applied for that generation.
    """
    generation = int(old.get("observedGeneration") or 0)
    conds, desired, ready = deployment_conditions(
        deployment, generation, pods, idle=scaled_to_zero_on_idle(old)
    )
    previous = old.get("conditions") or ()
    degraded_before = next((c for c in previous if c.get("type") == "Degraded"), None)
    recovering = degraded_before is not None and degraded_before.get("reason") in (
        "ProgressDeadlineExceeded",
        FETCH_FAILED,
        RUNTIME_FAILED,
        PROVIDER_FALLBACK,
    )
    if recovering and not any(c["type"] == "Degraded" for c in conds):
        conds.append(condition("Degraded", False, "Recovered", "rollout progressing again", generation))
    update = {
        "conditions": merge_conditions(previous, conds, timestamp),
        "replicas": desired,
        "readyReplicas": ready,
    }
    if all(old.get(k) == v for k, v in update.items()):
        return None
    return update


def condition_message(status: Mapping[str, Any] | None, kind: str) -> str | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return str(cond.get("message"))
    return None
