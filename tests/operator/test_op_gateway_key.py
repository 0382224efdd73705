"""Issue 13, item 8: the operator writes the gateway key's digests into the runtime config of every
SLMDeployment with spec.auth (`--gateway-key-sha256`), and only there."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml
from op_support import bed_nodes, gguf, spec

from slm_operator.cli import build_parser
from slm_operator.placement import place
from slm_operator.reconcile.plan import Observed, plan
from slm_operator.render import RenderContext, render_all
from slm_operator.render.config import config_hash
from slm_operator.settings import gateway_key_sha256, gateway_key_sha256_from_env

OLD = hashlib.sha256(b"gateway-key-old-0123456789abcdef0123").hexdigest()
NEW = hashlib.sha256(b"gateway-key-new-0123456789abcdef0123").hexdigest()
AUTH = {"apiKeySecretRef": {"name": "keys", "key": "api-key"}}


def _ctx(digests: tuple[str, ...], **overrides: Any) -> RenderContext:
    the_spec = spec(**overrides)
    return RenderContext(
        name="demo",
        namespace="ns",
        spec=the_spec,
        placement=place(the_spec, bed_nodes()),
        gateway_key_sha256=digests,
    )


def _auth_config(ctx: RenderContext) -> dict[str, Any]:
    (cm,) = [o for o in render_all(ctx) if o["kind"] == "ConfigMap"]
    return yaml.safe_load(cm["data"]["config.yaml"])["auth"]  # type: ignore[no-any-return]


def test_a_spec_with_auth_trusts_the_gateway_digests_and_they_roll_the_pods() -> None:
    with_digests = _ctx((OLD, NEW), auth=AUTH)
    assert _auth_config(with_digests) == {
        "apiKeyFile": "/etc/slm/auth/api-key",
        "apiKeyEnv": "SLM_API_KEYS",
        "protectMetrics": False,
        "minKeyLength": 16,
        "reloadSeconds": 2.0,
        "trustedKeySha256": [OLD, NEW],
    }
    without = _ctx((), auth=AUTH)
    assert "trustedKeySha256" not in _auth_config(without)  # no digests: the config as before
    hashes = {config_hash(c) for c in (with_digests, without, _ctx((NEW,), auth=AUTH))}
    assert len(hashes) == 3  # a new digest (a rotation) changes the pod template: the pods roll


def test_an_open_spec_gets_no_digest_and_keeps_its_config() -> None:
    """A digest alone would be refused by the runtime (auth off + trusted key = a lie); and the
    gateway sends no key to a deployment without spec.auth."""
    assert _auth_config(_ctx((OLD,))) == _auth_config(_ctx(()))
    assert config_hash(_ctx((OLD,))) == config_hash(_ctx(()))


def test_plan_passes_the_digests_to_the_render() -> None:
    body = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}, "auth": AUTH},
    }
    the_plan = plan(
        body, Observed(nodes=bed_nodes()), image="img:1", timestamp="t0", gateway_key_sha256=(OLD,)
    )
    (cm,) = [s.obj for s in the_plan.apply if s.obj["kind"] == "ConfigMap"]
    assert yaml.safe_load(cm["data"]["config.yaml"])["auth"]["trustedKeySha256"] == [OLD]


def test_the_flag_takes_repeated_digests_and_refuses_anything_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(
        ["run", "--gateway-key-sha256", OLD.upper(), "--gateway-key-sha256", NEW]
    )
    assert args.gateway_key_sha256 == [OLD, NEW]  # lowercased: the runtime's config wants lowercase
    for bad in ("abc", OLD + "0", "g" * 64):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["run", "--gateway-key-sha256", bad])
        assert exit_.value.code == 2
        assert "--gateway-key-sha256" in capsys.readouterr().err


def test_the_env_fallback_is_comma_separated() -> None:
    assert gateway_key_sha256_from_env({"SLM_GATEWAY_KEY_SHA256": f" {OLD} ,{NEW},{OLD}"}) == (OLD, NEW)
    assert gateway_key_sha256_from_env({}) == ()
    with pytest.raises(ValueError, match="SHA-256"):
        gateway_key_sha256_from_env({"SLM_GATEWAY_KEY_SHA256": "not-a-digest"})
    assert gateway_key_sha256(f"  {OLD.upper()} ") == OLD
