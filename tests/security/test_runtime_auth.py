"""Issue 13, items 1 and 3: auth fails closed, keys rotate live, logs cannot be forged or leak.

Against `slm-runtime serve` as its own process; the key file is mounted the way the kubelet
mounts a Secret (a `..data` symlink to a timestamped folder, swapped atomically on update).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from slm_runtime.server.auth import key_id, parse_keys

from .runtime_live import base_config, start_runtime, tiny_gguf

__all__ = ["tiny_gguf"]  # a fixture, imported for pytest

OLD_KEY = "old-key-3f9a0c1d2e4b"
NEW_KEY = "new-key-8b7c6d5e4f3a"


def _secret_volume(root: Path, content: str) -> Path:
    """A folder shaped like a kubelet Secret volume holding `keys`; returns the `keys` path."""
    root.mkdir(parents=True, exist_ok=True)
    _swap(root, content, "..2026_12_01_00_00_00.000000001")
    (root / "keys").symlink_to("..data/keys")
    return root / "keys"


def _swap(root: Path, content: str, stamp: str) -> None:
    """What the kubelet does on a Secret update: a new folder, then `..data` renamed over."""
    (root / stamp).mkdir()
    (root / stamp / "keys").write_text(content, encoding="utf-8")
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp)
    os.replace(tmp, root / "..data")


def _serve_fails(
    tmp_path: Path, model: Path, auth: dict[str, object], env: dict[str, str] | None = None
) -> str:
    """Run `serve` expecting it to refuse to start; its output."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config(model, auth=auth)), encoding="utf-8")
    full_env = {k: v for k, v in os.environ.items() if k != "SLM_API_KEYS"} | (env or {})
    result = subprocess.run(
        [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(config), "--port", "1"],
        check=False, capture_output=True, text=True, timeout=120, env=full_env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "content",
    ["", "# rotated: no key yet\n", "\n   \n"],
    ids=["empty", "only_comments", "only_blank_lines"],
)
def test_attack_key_file_without_a_key_refuses_to_start(
    tiny_gguf: Path, tmp_path: Path, content: str
) -> None:
    """A Secret mid-rotation (no usable key) must not leave the API open: serve exits 2."""
    keys = _secret_volume(tmp_path / "secret", content)
    out = _serve_fails(tmp_path, tiny_gguf, {"apiKeyFile": str(keys)})
    assert "holds no usable key" in out and "apiKeyFile" in out


def test_attack_empty_key_env_refuses_to_start(tiny_gguf: Path, tmp_path: Path) -> None:
    out = _serve_fails(tmp_path, tiny_gguf, {"apiKeyEnv": "SEC_TEST_KEYS"}, env={"SEC_TEST_KEYS": " , "})
    assert "$SEC_TEST_KEYS is set but holds no usable key" in out


def test_attack_short_key_refuses_to_start(tiny_gguf: Path, tmp_path: Path) -> None:
    keys = _secret_volume(tmp_path / "secret", f"{OLD_KEY}\nshort\n")
    out = _serve_fails(tmp_path, tiny_gguf, {"apiKeyFile": str(keys)})
    assert "shorter than 16 characters" in out
    assert "short\n" not in out.replace("shorter", "")  # the key itself is not printed


def test_termination_message_carries_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod, the reason reaches `kubectl describe` through /dev/termination-log."""
    from slm_runtime import cli

    target = tmp_path / "termination-log"
    target.write_text("")
    cli._termination_message("refusing to start with unusable API keys: x", target)
    assert target.read_text().startswith("refusing to start with unusable API keys")
    cli._termination_message("not in a pod", tmp_path / "absent")  # no file: nothing created
    assert not (tmp_path / "absent").exists()


def test_attack_revoked_key_stops_working_without_a_restart(tiny_gguf: Path, tmp_path: Path) -> None:
    """Rotate the Secret (kubelet-style symlink swap): the revoked key is refused within a few
    seconds, the new one works, the pod never restarted, and the logs name ids, never keys."""
    root = tmp_path / "secret"
    keys = _secret_volume(root, f"# team keys\nteam-a:{OLD_KEY}\n")
    live = start_runtime(
        tmp_path, base_config(tiny_gguf, auth={"apiKeyFile": str(keys), "reloadSeconds": 0.5})
    )
    try:

        def status(key: str) -> int:
            return httpx.get(f"{live.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

        assert status(OLD_KEY) == 200
        assert status(NEW_KEY) == 401
        _swap(root, f"{NEW_KEY}\n", "..2026_12_01_00_05_00.000000002")
        deadline = time.monotonic() + 10
        while status(OLD_KEY) != 401 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(OLD_KEY) == 401
        assert status(NEW_KEY) == 200
        assert live.process.poll() is None
        log = live.log()
        assert "team-a" in log and key_id(NEW_KEY) in log  # ids: given, or a hash prefix
        assert OLD_KEY not in log and NEW_KEY not in log
        # a rotation that leaves no key refuses everything (fail closed, never open)
        _swap(root, "# emptied\n", "..2026_12_01_00_10_00.000000003")
        deadline = time.monotonic() + 10
        while status(NEW_KEY) != 401 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(NEW_KEY) == 401
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
    finally:
        live.stop()


def test_attack_log_injection_through_the_path(tiny_gguf: Path, tmp_path: Path) -> None:
    """`%0A` in a path decodes to a newline; the 401 log line escapes it: no forged line."""
    keys = _secret_volume(tmp_path / "secret", f"{OLD_KEY}\n")
    live = start_runtime(tmp_path, base_config(tiny_gguf, auth={"apiKeyFile": str(keys)}))
    try:
        forged = "/v1/models%0A2026-12-01 00:00:00,000 INFO slm_runtime: FORGED admin login ok%1b[2J"
        assert httpx.get(f"{live.url}{forged}").status_code == 401
        deadline = time.monotonic() + 5
        while "401 GET" not in live.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = live.log().splitlines()
        assert not any(line.startswith("2026-12-01 00:00:00") for line in lines), lines
        assert any("\\x0a2026-12-01" in line and "\\x1b" in line for line in lines), lines
    finally:
        live.stop()


def test_key_parsing_forms() -> None:
    """Pure: `ID:KEY` and bare keys, comments, and short keys reported without the key."""
    keys, problems = parse_keys(["# c", "", f"ops:{OLD_KEY}", NEW_KEY, "tiny"], 16, "file")
    assert [k.id for k in keys] == ["ops", key_id(NEW_KEY)]
    assert [k.secret for k in keys] == [OLD_KEY.encode(), NEW_KEY.encode()]
    assert problems == ["file entry 5: key shorter than 16 characters (minKeyLength)"]
