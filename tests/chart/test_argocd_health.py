"""The Argo CD health check for SLMDeployment, run in the VM Argo CD runs it in.

Argo CD embeds gopher-lua (a Lua 5.1 VM written in Go) and calls a health script with the live
object as the global `obj`, without Lua's standard libraries unless `useOpenLibs` is set, and reads
the returned table's `status` and `message`. `bin/argocd-lua` (hack/argocd-lua, built from the Go
module proxy by hack/build-argocd-lua.sh, cached) does exactly that, so a script that a newer Lua
accepts but Argo CD rejects fails here too.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "examples" / "gitops" / "argocd"
SCRIPT = ARGOCD / "slmdeployment-health.lua"


@pytest.fixture(scope="module")
def argocd_lua() -> Path:
    """bin/argocd-lua, built (or linked from the cache) on first use."""
    subprocess.run(["bash", str(ROOT / "hack" / "build-argocd-lua.sh")], check=True, timeout=600)
    return ROOT / "bin" / "argocd-lua"


def run_health(harness: Path, obj: dict[str, Any], script: Path = SCRIPT) -> dict[str, str]:
    """What Argo CD makes of `script` for `obj`: {status, message} or {error}."""
    result = subprocess.run(
        [str(harness), str(script)],
        input=json.dumps(obj) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, str] = json.loads(result.stdout)
    return out


def health(obj: dict[str, Any], harness: Path) -> tuple[str, str]:
    """(status, message) that the health script returns for `obj`; fails on a Lua error."""
    out = run_health(harness, obj)
    assert "error" not in out, out["error"]
    return out["status"], out.get("message", "")


def slmd(generation: int = 2, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "qwen", "namespace": "models", "generation": generation},
        "spec": {"model": {"name": "qwen2.5:0.5b"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(kind: str, status: str, reason: str = "", message: str = "", generation: int = 2) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


# ---------------------------------------------------------------------------------------------


def test_ready_for_current_generation_is_healthy(argocd_lua: Path) -> None:
    obj = slmd(
        status={
            "observedGeneration": 2,
            "replicas": 2,
            "readyReplicas": 2,
            "conditions": [
                cond("Ready", "True", "Available", "Serving Q4_K_M on gpu"),
                cond("Progressing", "False", "Complete"),
                cond("Degraded", "False", "AsExpected"),
            ],
        }
    )
    assert health(obj, argocd_lua) == ("Healthy", "Serving Q4_K_M on gpu (2/2 replicas ready)")


def test_healthy_falls_back_to_reason(argocd_lua: Path) -> None:
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available")]})
    assert health(obj, argocd_lua) == ("Healthy", "Available")


def test_no_status_is_progressing(argocd_lua: Path) -> None:
    assert health(slmd(), argocd_lua) == ("Progressing", "Waiting for the slm-operator to reconcile")


def test_stale_generation_is_progressing_even_if_ready(argocd_lua: Path) -> None:
    obj = slmd(
        generation=3,
        status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available", "old news")]},
    )
    assert health(obj, argocd_lua) == (
        "Progressing",
        "Waiting for the slm-operator to observe generation 3 (observed 2)",
    )


def test_missing_observed_generation_is_progressing(argocd_lua: Path) -> None:
    obj = slmd(status={"conditions": [cond("Ready", "True", "Available")]})
    assert health(obj, argocd_lua) == ("Progressing", "Waiting for the slm-operator to observe generation 2")


def test_stale_degraded_is_progressing(argocd_lua: Path) -> None:
    obj = slmd(
        generation=4,
        status={
            "observedGeneration": 3,
            "conditions": [cond("Degraded", "True", "ImagePullBackOff", generation=3)],
        },
    )
    assert health(obj, argocd_lua)[0] == "Progressing"


def test_rolling_out_is_progressing(argocd_lua: Path) -> None:
    obj = slmd(
        status={
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "ModelLoading", "0/1 replicas ready"),
                cond("Progressing", "True", "RollingOut", "Downloading qwen2.5-0.5b-instruct-q4_k_m.gguf"),
                cond("Degraded", "False", "AsExpected"),
            ],
        }
    )
    assert health(obj, argocd_lua) == ("Progressing", "Downloading qwen2.5-0.5b-instruct-q4_k_m.gguf")


def test_ready_unknown_without_progressing_is_progressing(argocd_lua: Path) -> None:
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "Unknown", "Reconciling", "")]})
    assert health(obj, argocd_lua) == ("Progressing", "Reconciling")


def test_degraded_wins(argocd_lua: Path) -> None:
    obj = slmd(
        status={
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "Unavailable", "0/2 replicas ready"),
                cond("Progressing", "True", "RollingOut", "rolling out"),
                cond("Degraded", "True", "CrashLoopBackOff", "runtime container keeps crashing: OOMKilled"),
            ],
        }
    )
    assert health(obj, argocd_lua) == ("Degraded", "runtime container keeps crashing: OOMKilled")


def test_not_ready_and_not_progressing_is_degraded(argocd_lua: Path) -> None:
    obj = slmd(
        status={
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "NoFittingHardware", "no node has room for any variant"),
                cond("Progressing", "False", "Stalled"),
            ],
        }
    )
    assert health(obj, argocd_lua) == ("Degraded", "no node has room for any variant")


def test_messages_survive_quotes_newlines_and_unicode(argocd_lua: Path) -> None:
    message = 'model "qwen" \\ ready\nnext line — ✓'
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available", message)]})
    assert health(obj, argocd_lua) == ("Healthy", message)


def test_the_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"]["resource.customizations.health.slm.dev_SLMDeployment"] == SCRIPT.read_text()


# --- the harness behaves as Argo CD does, so the cases above would catch what Argo CD rejects ---


def test_a_lua_5_2_feature_fails_as_in_argo_cd(argocd_lua: Path, tmp_path: Path) -> None:
    """What lua5.4 runs and gopher-lua does not: `//` and `&` (5.3), `<const>` (5.4), `utf8` (5.3)."""
    for body in (
        "return { status = 'Healthy', message = tostring(7 // 2) }",
        "return { status = 'Healthy', message = tostring(1 & 3) }",
        "local x <const> = 1 return { status = 'Healthy' }",
        "return { status = 'Healthy', message = utf8.char(72) }",
    ):
        script = tmp_path / "newer-lua.lua"
        script.write_text(body)
        assert "error" in run_health(argocd_lua, slmd(), script), body


def test_standard_libraries_are_closed_by_default(argocd_lua: Path, tmp_path: Path) -> None:
    """Argo CD opens only base, table and a safe os unless useOpenLibs: `string.*` is nil there."""
    script = tmp_path / "string-lib.lua"
    script.write_text("return { status = 'Healthy', message = string.format('%d', 1) }")
    assert "error" in run_health(argocd_lua, slmd(), script)


def test_an_unknown_status_becomes_unknown(argocd_lua: Path, tmp_path: Path) -> None:
    script = tmp_path / "bad-status.lua"
    script.write_text("return { status = 'Ready', message = 'x' }")
    assert run_health(argocd_lua, slmd(), script) == {
        "status": "Unknown",
        "message": "Lua returned an invalid health status",
    }


def test_a_non_table_return_is_an_error(argocd_lua: Path, tmp_path: Path) -> None:
    script = tmp_path / "string-return.lua"
    script.write_text("return 'Healthy'")
    assert "expect table output" in run_health(argocd_lua, slmd(), script)["error"]


def test_a_model_scaled_to_zero_when_idle_stays_healthy(argocd_lua: Path) -> None:
    """The status the operator computes (not a hand-written one) for a Deployment its autoscaler
    scaled to zero: Healthy, where a Deployment at 0 by hand (`spec.replicas: 0`) is Degraded."""
    from slm_operator.reconcile.status import observed_status

    deployment = {
        "metadata": {"generation": 5},
        "spec": {"replicas": 0},
        "status": {"observedGeneration": 5},
    }
    old = {
        "observedGeneration": 2,
        "conditions": [cond("Ready", "True", "PodsAvailable"), cond("Degraded", "False", "Reconciled")],
        "autoscaling": {"desiredReplicas": 0, "currentReplicas": 1, "reason": "ScaledToZero"},
    }
    idle = observed_status(deployment, old, "2026-01-01T01:00:00Z")
    assert idle is not None
    status, message = health(slmd(status={**old, **idle}), argocd_lua)
    assert status == "Healthy", message
    assert "scaled to zero while idle" in message
    by_hand = observed_status(deployment, {**old, "autoscaling": None}, "2026-01-01T01:00:00Z")
    assert by_hand is not None
    assert health(slmd(status={**old, **by_hand, "autoscaling": None}), argocd_lua)[0] == "Degraded"
