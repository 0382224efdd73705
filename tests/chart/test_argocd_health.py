"""The Argo CD health check for SLMDeployment, run by a real Lua interpreter.

Needs `lua5.4` (or `lua`) on PATH: `bash hack/install-test-deps.sh` installs it. Each case turns an
SLMDeployment (a dict) into a Lua table, defines it as the global `obj` (as Argo CD does), runs
examples/gitops/argocd/slmdeployment-health.lua and reads back the returned status and message.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "examples" / "gitops" / "argocd"
SCRIPT = ARGOCD / "slmdeployment-health.lua"


def to_lua(value: Any) -> str:
    """A Lua expression for a JSON-like value (JSON null becomes nil, as in Argo CD)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_string(str(k))}] = {to_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot convert {type(value).__name__} to Lua")


def _lua_string(text: str) -> str:
    """A double-quoted Lua string; every byte outside printable ASCII as a decimal escape."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def _lua() -> str:
    for name in ("lua5.4", "lua"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Lua interpreter on PATH: run `bash hack/install-test-deps.sh`", pytrace=False)


def health(obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    """(status, message) that the health script returns for `obj`."""
    harness = tmp_path / "harness.lua"
    harness.write_text(
        f"obj = {to_lua(obj)}\n"
        f"local hs = dofile({_lua_string(str(SCRIPT))})\n"
        'io.write(hs.status, "\\0", hs.message)\n'
    )
    result = subprocess.run([_lua(), str(harness)], capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr.decode()
    status, message = result.stdout.decode("utf-8").split("\0")
    return status, message


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


def test_ready_for_current_generation_is_healthy(tmp_path: Path) -> None:
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
    assert health(obj, tmp_path) == ("Healthy", "Serving Q4_K_M on gpu (2/2 replicas ready)")


def test_healthy_falls_back_to_reason(tmp_path: Path) -> None:
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available")]})
    assert health(obj, tmp_path) == ("Healthy", "Available")


def test_no_status_is_progressing(tmp_path: Path) -> None:
    assert health(slmd(), tmp_path) == ("Progressing", "Waiting for the slm-operator to reconcile")


def test_stale_generation_is_progressing_even_if_ready(tmp_path: Path) -> None:
    obj = slmd(
        generation=3,
        status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available", "old news")]},
    )
    assert health(obj, tmp_path) == (
        "Progressing",
        "Waiting for the slm-operator to observe generation 3 (observed 2)",
    )


def test_missing_observed_generation_is_progressing(tmp_path: Path) -> None:
    obj = slmd(status={"conditions": [cond("Ready", "True", "Available")]})
    assert health(obj, tmp_path) == ("Progressing", "Waiting for the slm-operator to observe generation 2")


def test_stale_degraded_is_progressing(tmp_path: Path) -> None:
    obj = slmd(
        generation=4,
        status={
            "observedGeneration": 3,
            "conditions": [cond("Degraded", "True", "ImagePullBackOff", generation=3)],
        },
    )
    assert health(obj, tmp_path)[0] == "Progressing"


def test_rolling_out_is_progressing(tmp_path: Path) -> None:
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
    assert health(obj, tmp_path) == ("Progressing", "Downloading qwen2.5-0.5b-instruct-q4_k_m.gguf")


def test_ready_unknown_without_progressing_is_progressing(tmp_path: Path) -> None:
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "Unknown", "Reconciling", "")]})
    assert health(obj, tmp_path) == ("Progressing", "Reconciling")


def test_degraded_wins(tmp_path: Path) -> None:
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
    assert health(obj, tmp_path) == ("Degraded", "runtime container keeps crashing: OOMKilled")


def test_not_ready_and_not_progressing_is_degraded(tmp_path: Path) -> None:
    obj = slmd(
        status={
            "observedGeneration": 2,
            "conditions": [
                cond("Ready", "False", "NoFittingHardware", "no node has room for any variant"),
                cond("Progressing", "False", "Stalled"),
            ],
        }
    )
    assert health(obj, tmp_path) == ("Degraded", "no node has room for any variant")


def test_messages_survive_quotes_newlines_and_unicode(tmp_path: Path) -> None:
    message = 'model "qwen" \\ ready\nnext line — ✓'
    obj = slmd(status={"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available", message)]})
    assert health(obj, tmp_path) == ("Healthy", message)


def test_the_cm_patch_embeds_the_same_script() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"]["resource.customizations.health.slm.dev_SLMDeployment"] == SCRIPT.read_text()


def test_script_keeps_to_lua_5_1() -> None:
    """Argo CD runs gopher-lua (Lua 5.1): no 5.3+ operators, goto or attributes."""
    code = "\n".join(line.split("--", 1)[0] for line in SCRIPT.read_text().splitlines())
    for pattern in (r"//", r"\bgoto\b", r"<const>", r"<close>", r"\butf8\.", r"[&|]", r"<<|>>"):
        assert not re.search(pattern, code), pattern


def test_to_lua_keys_are_quoted() -> None:
    assert to_lua({"a-b": [1, True, None], "x": 1.5}) == '{["a-b"] = {1, true, nil}, ["x"] = 1.5}'
