"""Keys (file format, constant-time match, reload without restart, never shown) and quotas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slm_gateway.access import AccessError, KeyFile, KeyRing, presented_key
from slm_gateway.quotas import Quotas

KEYS = """
- id: team-a
  key: sk-team-a-0123456789
  models: [smollm2]
  requestsPerMinute: 2
- id: ops
  key: sk-ops-0123456789
  tokensPerMinute: 100
"""


def test_match_allows_and_rejects() -> None:
    ring = KeyRing.parse(KEYS)
    a = ring.match(b"sk-team-a-0123456789")
    assert a is not None and a.id == "team-a"
    assert a.allows("smollm2") and not a.allows("gemma3")
    ops = ring.match(b"sk-ops-0123456789")
    assert ops is not None and ops.allows("anything")
    assert ring.match(b"sk-team-a-012345678") is None
    assert ring.match(None) is None
    assert KeyRing().enabled is False and ring.enabled


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- id: x\n  key: short\n", "invalid key entry field '0.key'"),
        ("- id: x\n  key: sk-0123456789\n- id: x\n  key: sk-9876543210\n", "duplicate key ids: x"),
        ("- {id: x, key: sk-0123456789, colour: red}\n", "'0.colour'"),
        ("a: [", "not valid YAML"),
        ("42", "must be a list"),
    ],
)
def test_bad_keys_files_name_the_problem_never_the_key(text: str, message: str) -> None:
    with pytest.raises(AccessError, match=message) as err:
        KeyRing.parse(text)
    assert "sk-0123456789" not in str(err.value) and "sk-9876543210" not in str(err.value)


def test_key_entries_do_not_print_their_secret() -> None:
    from slm_gateway.access import KeyEntry

    entry = KeyEntry.model_validate({"id": "x", "key": "sk-secret-123456"})
    assert "sk-secret" not in repr(entry) and "sk-secret" not in str(entry)
    ring = KeyRing.parse("- {id: x, key: sk-secret-123456}")
    assert "sk-secret" not in repr(ring)


def test_presented_key_forms() -> None:
    assert presented_key({"authorization": "Bearer sk-1"}) == b"sk-1"
    assert presented_key({"authorization": "bearer  sk-1 "}) == b"sk-1"
    assert presented_key({"x-api-key": "sk-2"}) == b"sk-2"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({}) is None


def test_key_file_reloads_on_change_and_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    keys = KeyFile(str(path))
    assert keys.current().match(b"sk-ops-0123456789") is not None
    # a Secret volume swaps the file: new content, new inode
    new = tmp_path / "keys.new"
    new.write_text("- {id: rotated, key: sk-rotated-0123456789}\n")
    os.replace(new, path)
    ring = keys.current()
    assert ring.match(b"sk-ops-0123456789") is None
    rotated = ring.match(b"sk-rotated-0123456789")
    assert rotated is not None and rotated.id == "rotated"
    path.write_text("- {id: broken}\n")  # invalid: the previous keys stay
    os.utime(path, ns=(1, 1))
    assert keys.current().match(b"sk-rotated-0123456789") is not None
    assert KeyFile(None).current().enabled is False


def test_request_quota_refuses_with_retry_after_and_refills() -> None:
    key = KeyRing.parse(KEYS).keys[0]  # 2 requests per minute
    q = Quotas()
    assert q.admit(key, 0.0) is None
    assert q.admit(key, 1.0) is None
    refusal = q.admit(key, 2.0)
    assert refusal is not None and refusal.reason == "requests"
    assert refusal.retry_after == 28  # 1 request refills in 30 s; 2 s have passed
    assert "2 requests per minute" in refusal.message
    assert q.admit(key, 31.0) is None  # refilled one


def test_token_quota_is_charged_after_the_answer_and_can_go_into_debt() -> None:
    key = KeyRing.parse(KEYS).keys[1]  # 100 tokens per minute
    q = Quotas()
    assert q.admit(key, 0.0) is None
    q.charge(key, 160, 0.0)  # the answer was bigger than the whole allowance
    refusal = q.admit(key, 0.0)
    assert refusal is not None and refusal.reason == "tokens"
    assert refusal.retry_after == 37  # 61 tokens to climb back above zero at 100/60 per second
    assert q.admit(key, 36.0) is not None
    assert q.admit(key, 37.0) is None


def test_keys_without_limits_are_never_refused() -> None:
    key = KeyRing.parse("- {id: free, key: sk-free-0123456789}").keys[0]
    q = Quotas()
    assert all(q.admit(key, float(i) / 1000) is None for i in range(1000))
