"""Issue 13, item 8: the gateway sends one key of its own upstream; the runtimes trust its digest.

Against a real `slm-runtime` (tiny model) whose config has a user key file and the gateway key's
SHA-256 (`auth.trustedKeySha256`, what the operator renders for a spec with `auth`): requests
through the gateway pass with the gateway's key, the key file rotates without a restart, a direct
client with a wrong key is refused, and the gateway reads no Secret (Kubernetes mode takes
`gatewayKey` from spec.auth).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from slm_gateway.access import AccessError
from slm_gateway.cli import main as gateway_cli
from slm_gateway.kube import deployments_from
from slm_gateway.upstream import UpstreamKey, parse_key, upstream_key_id

from .conftest import GatewayFactory, Served, serve_runtime

GATEWAY_KEY = "gw-upstream-" + "a1b2c3d4" * 5
NEXT_KEY = "gw-upstream-" + "f0e1d2c3" * 5
USER_KEY = "user-runtime-key-0123456789"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def protected(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A runtime with spec.auth as the operator renders it: a user key file plus the gateway's
    digests (the current key and the next one, as during a rotation)."""
    keys = tmp_path_factory.mktemp("runtime-auth") / "api-key"
    keys.write_text(f"{USER_KEY}\n", encoding="utf-8")
    auth = {"apiKeyFile": str(keys), "trustedKeySha256": [_sha(GATEWAY_KEY), _sha(NEXT_KEY)]}
    served = serve_runtime(tiny_gguf, "secure", auth=auth)
    yield served
    served.stop()


def _key_file(path: Path, key: str) -> Path:
    path.write_text(f"# the gateway's upstream key\n{key}\n", encoding="utf-8")
    return path


def test_the_gateway_reaches_a_protected_runtime_with_its_own_key(
    gateway: GatewayFactory, protected: Served, tmp_path: Path
) -> None:
    key_file = _key_file(tmp_path / "upstream-key", GATEWAY_KEY)
    alias = protected.url.replace("127.0.0.1", "localhost")
    deployments = [
        {"name": "ns/secure", "model": "secure", "endpoints": [protected.url]},
        # the same pod under another URL (the fleet keeps one state per URL)
        {"name": "ns/no-key", "model": "no-key", "endpoints": [alias], "gatewayKey": False},
    ]
    gw = gateway(deployments=deployments, upstreamKeyFile=str(key_file))
    ok = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "secure", **CHAT}, timeout=60)
    assert ok.status_code == 200, ok.text
    # a deployment the key is not sent to: the runtime refuses the gateway (in the runtime's words)
    refused = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "no-key", **CHAT}, timeout=60)
    assert refused.status_code == 401, refused.text

    # direct clients: their own key works as before, a wrong key (or the digest) does not
    direct = f"{protected.url}/v1/chat/completions"
    body = {"model": "secure", **CHAT}
    assert httpx.post(direct, json=body, headers={"x-api-key": USER_KEY}, timeout=60).status_code == 200
    for wrong in ("wrong-key-0123456789abcdef", _sha(GATEWAY_KEY)):
        r = httpx.post(direct, json=body, headers={"Authorization": f"Bearer {wrong}"}, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_the_upstream_key_rotates_without_a_restart(
    gateway: GatewayFactory, protected: Served, tmp_path: Path
) -> None:
    key_file = _key_file(tmp_path / "upstream-key", "gw-upstream-not-trusted-0123456789abcdef")
    gw = gateway(
        deployments=[{"name": "ns/secure", "model": "secure", "endpoints": [protected.url]}],
        upstreamKeyFile=str(key_file),
    )
    url = f"{gw.url}/v1/chat/completions"
    assert httpx.post(url, json={"model": "secure", **CHAT}, timeout=60).status_code == 401
    _key_file(tmp_path / "next", NEXT_KEY).replace(key_file)  # a new inode, as a Secret swap makes
    assert httpx.post(url, json={"model": "secure", **CHAT}, timeout=60).status_code == 200
    key_file.write_text("# emptied by mistake\n", encoding="utf-8")  # the last good key stays
    assert httpx.post(url, json={"model": "secure", **CHAT}, timeout=60).status_code == 200


def test_the_key_file_needs_one_long_key(tmp_path: Path) -> None:
    assert parse_key(f"# c\n\n  {GATEWAY_KEY}  \nsecond\n", "f") == GATEWAY_KEY
    with pytest.raises(AccessError, match="holds no key"):
        parse_key("# only a comment\n", "f")
    with pytest.raises(AccessError, match="shorter than 32") as short:
        parse_key("short-key-0123456789", "f")
    assert "short-key" not in str(short.value)
    assert upstream_key_id(GATEWAY_KEY) == "gateway:" + _sha(GATEWAY_KEY)[:8]  # the runtime's id
    assert UpstreamKey(None).current() is None


def test_a_bad_upstream_key_file_stops_the_gateway_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    short = _key_file(tmp_path / "short", "too-short")
    assert gateway_cli(["--kubernetes", "--upstream-key-file", str(short)]) == 2
    assert "shorter than 32" in capsys.readouterr().err
    assert gateway_cli(["--kubernetes", "--upstream-key-file", str(tmp_path / "absent")]) == 2
    with caplog.at_level(logging.INFO):
        UpstreamKey(str(_key_file(tmp_path / "good", GATEWAY_KEY)))
    assert GATEWAY_KEY not in caplog.text and upstream_key_id(GATEWAY_KEY) in caplog.text


def test_kubernetes_mode_sends_the_key_to_deployments_with_auth_only() -> None:
    def slmd(name: str, auth: bool) -> dict[str, object]:
        spec: dict[str, object] = {"model": {"name": name}}
        if auth:
            spec["auth"] = {"apiKeySecretRef": {"name": "user-keys", "key": "api-key"}}
        return {"metadata": {"namespace": "ns", "name": name}, "spec": spec}

    deps = {d.name: d for d in deployments_from([slmd("open", False), slmd("locked", True)], [])}
    assert deps["ns/locked"].gateway_key is True
    assert deps["ns/open"].gateway_key is False


def test_the_gateway_has_no_secret_reading_code() -> None:
    """The Secret path is gone, not merely unused (the chart grants the gateway no Secret access)."""
    import slm_gateway

    sources = Path(slm_gateway.__file__).parent.glob("*.py")
    offenders = [p.name for p in sources if "secret(" in p.read_text(encoding="utf-8").lower()]
    assert offenders == []
