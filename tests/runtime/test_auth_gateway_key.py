"""Issue 13, item 8: the runtime trusts slm-gateway's upstream key by its SHA-256 (`auth.trustedKeySha256`).

The key ring and the middleware in-process (no model needed): the gateway's key is accepted besides
the user keys and logged by its id, other keys are refused, and a digest never turns a broken or
missing user key file into an open API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from slm_runtime.config import AuthSection
from slm_runtime.errors import AuthConfigError
from slm_runtime.server.auth import ApiKeyMiddleware, KeyRing, TrustedDigest, trusted_digests

GATEWAY_KEY = "gw-upstream-6c1f0e9d8b7a6c5d4e3f2a1b0c9d8e7f"
USER_KEY = "user-key-3f9a0c1d2e4b5a69"
GATEWAY_SHA = hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()


def _auth(tmp_path: Path, keys: str | None, digests: list[str] | None, **extra: object) -> AuthSection:
    data: dict[str, object] = {"trustedKeySha256": digests, "apiKeyEnv": "SLM_TEST_UNSET_KEYS", **extra}
    if keys is not None:
        (tmp_path / "keys").write_text(keys, encoding="utf-8")
        data["apiKeyFile"] = str(tmp_path / "keys")
    return AuthSection.model_validate(data)


def test_the_gateway_key_is_accepted_by_digest_besides_the_user_keys(tmp_path: Path) -> None:
    ring = KeyRing(_auth(tmp_path, f"team-a:{USER_KEY}\n", [GATEWAY_SHA]))
    gateway = ring.match(GATEWAY_KEY.encode())
    assert isinstance(gateway, TrustedDigest) and gateway.id == f"gateway:{GATEWAY_SHA[:8]}"
    user = ring.match(USER_KEY.encode())
    assert user is not None and user.id == "team-a"
    for wrong in (GATEWAY_SHA, GATEWAY_KEY[:-1], GATEWAY_KEY + "x", bytes.fromhex(GATEWAY_SHA).hex(), ""):
        assert ring.match(wrong.encode()) is None, wrong  # the digest itself is not a key


def test_without_digests_the_gateway_key_is_refused(tmp_path: Path) -> None:
    ring = KeyRing(_auth(tmp_path, f"{USER_KEY}\n", None))
    assert ring.match(GATEWAY_KEY.encode()) is None
    assert ring.match(USER_KEY.encode()) is not None


def test_rotation_trusts_two_digests_and_duplicates_collapse() -> None:
    new = hashlib.sha256(b"gw-upstream-new-0123456789abcdef0123").hexdigest()
    digests = trusted_digests([GATEWAY_SHA, new, GATEWAY_SHA])
    assert [d.id for d in digests] == [f"gateway:{GATEWAY_SHA[:8]}", f"gateway:{new[:8]}"]
    assert digests[0].digest == hashlib.sha256(GATEWAY_KEY.encode()).digest()


def test_match_compares_against_every_key_and_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a user key that matches first still costs the digest comparisons (timing
    reveals neither which key matched nor whether it was the gateway's)."""
    import hmac

    from slm_runtime.server import auth as auth_module

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    other = hashlib.sha256(b"another-gateway-key-0123456789abcdef").hexdigest()
    ring = KeyRing(_auth(tmp_path, f"{USER_KEY}\nsecond-key-0123456789ab\n", [GATEWAY_SHA, other]))
    for presented in (USER_KEY, GATEWAY_KEY, "nobody-0123456789abcdef"):
        calls.clear()
        ring.match(presented.encode())
        assert len(calls) == 4, presented  # 2 user keys + 2 digests, whichever matched
        assert calls[2:] == [32, 32]  # the digests are compared as SHA-256 digests


@pytest.mark.parametrize(
    "keys", ["", "# rotating\n", "short\n"], ids=["empty_file", "only_comments", "short_key"]
)
def test_a_digest_does_not_rescue_a_key_file_without_a_usable_key(tmp_path: Path, keys: str) -> None:
    """Item 1 still holds: a broken user key file refuses to start, whatever digests are trusted."""
    with pytest.raises(AuthConfigError) as refused:
        KeyRing(_auth(tmp_path, keys, [GATEWAY_SHA]))
    assert "refusing to start" in str(refused.value)
    assert GATEWAY_KEY not in str(refused.value)


def test_a_digest_alone_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests without a key file or key variable: auth would be off, the API open to everyone."""
    monkeypatch.delenv("SLM_TEST_UNSET_KEYS", raising=False)
    with pytest.raises(AuthConfigError) as refused:
        KeyRing(_auth(tmp_path, None, [GATEWAY_SHA]))
    assert "trustedKeySha256" in str(refused.value) and "open" in str(refused.value)
    monkeypatch.setenv("SLM_TEST_UNSET_KEYS", USER_KEY)  # with a key variable it starts
    assert KeyRing(_auth(tmp_path, None, [GATEWAY_SHA])).match(GATEWAY_KEY.encode()) is not None


def test_digests_must_be_lowercase_sha256_hex() -> None:
    for bad in (GATEWAY_SHA[:63], GATEWAY_SHA.upper(), "z" * 64, GATEWAY_KEY):
        with pytest.raises(ValidationError) as err:
            AuthSection.model_validate({"trustedKeySha256": [bad]})
        assert "trustedKeySha256" in str(err.value)


def test_a_rotation_to_no_user_key_keeps_the_gateway_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    auth = _auth(tmp_path, f"{USER_KEY}\n", [GATEWAY_SHA], reloadSeconds=1)
    ring = KeyRing(auth, clock=lambda: now[0])
    (tmp_path / "keys").write_text("# all user keys revoked\n", encoding="utf-8")
    now[0] = 5.0
    with caplog.at_level(logging.ERROR):
        assert ring.match(USER_KEY.encode()) is None
    assert "but the gateway's trusted key" in caplog.text
    assert ring.match(GATEWAY_KEY.encode()) is not None


def _app(ring: KeyRing) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"key_id": request.scope["state"]["api_key_id"]})

    app = Starlette(routes=[Route("/v1/models", models)])
    app.add_middleware(ApiKeyMiddleware, keys=ring, protect_metrics=False)
    return app


def test_the_middleware_names_the_gateway_key_and_refuses_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing(_auth(tmp_path, f"{USER_KEY}\n", [GATEWAY_SHA]))

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=_app(ring))
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            ok = await client.get("/v1/models", headers={"Authorization": f"Bearer {GATEWAY_KEY}"})
            direct = await client.get("/v1/models", headers={"x-api-key": USER_KEY})
            wrong = await client.get("/v1/models", headers={"Authorization": f"Bearer {GATEWAY_SHA}"})
            return ok, direct, wrong

    with caplog.at_level(logging.INFO):
        ok, direct, wrong = asyncio.run(run())
    assert ok.status_code == 200 and ok.json() == {"key_id": f"gateway:{GATEWAY_SHA[:8]}"}
    assert direct.status_code == 200 and direct.json()["key_id"].startswith("sha256:")
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert "invalid API key" in caplog.text
    assert GATEWAY_SHA not in caplog.text and GATEWAY_KEY not in caplog.text
