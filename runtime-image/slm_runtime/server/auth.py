"""API-key authentication as a small ASGI middleware, with keys that can be rotated live.

Keys come from `auth.apiKeyFile` (one per line: `KEY` or `ID:KEY`, `#` comments) and the env var
named by `auth.apiKeyEnv` (comma-separated, same forms). Accepted as `Authorization: Bearer KEY`
(OpenAI, Ollama clients with headers) or `x-api-key: KEY`, compared with `hmac.compare_digest`
against every key so timing does not reveal which one or a prefix.

Fail closed, never open:
* at start, a configured file (or a set variable) that yields no usable key, or a key shorter
  than `auth.minKeyLength`, is an `AuthConfigError`: the server refuses to start, with the
  reason as its last log line and termination message;
* at run time the file is checked every `auth.reloadSeconds` (a `stat`, following symlinks: a
  Kubernetes Secret volume swaps its `..data` symlink, which changes the target's inode) and
  re-read when it changed, so a revoked key stops working within seconds. A rotation that leaves
  no usable key refuses every request until a key is back.

Logs name a key by its id: the `ID:` given in the file, else `sha256:` + the first 8 hex digits
of its hash. The key itself is never logged.

Trusted digests (`auth.trustedKeySha256`, issue 13 item 8): slm-gateway presents one key of its own
to every runtime with `spec.auth`, so it never reads the users' key Secrets. The operator puts only
the key's SHA-256 in the runtime config (a digest of a high-entropy random key reveals nothing);
a presented key whose SHA-256 equals a trusted digest is accepted, logged as `gateway:` + the
first 8 hex digits of the digest. The digests add to the user keys and never replace them:
* they do not count as usable keys at start: a key file (or variable) with no usable key still
  refuses to start, whatever digests are trusted;
* digests with no key file and no key variable are a start-up error too: authentication is off
  then, and a runtime that looks protected by the gateway's key would in fact be open to anyone;
* at run time, a rotation that leaves the file with no usable key refuses every user key; the
  gateway's key (configured by the operator, not in that file) keeps working.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from slm_runtime.config import AuthSection
from slm_runtime.errors import AuthConfigError, UnauthorizedError
from slm_runtime.server.errors import error_response, flavour_of
from slm_runtime.server.logsafe import safe

log = logging.getLogger(__name__)

_ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/", "/api/health"})


@dataclass(frozen=True)
class ApiKey:
    """A key and the id the logs use for it."""

    id: str
    secret: bytes


@dataclass(frozen=True)
class TrustedDigest:
    """A key known only by its SHA-256 (slm-gateway's upstream key) and the id the logs use for it."""

    id: str
    digest: bytes


def key_id(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def trusted_digests(hex_digests: list[str]) -> list[TrustedDigest]:
    """Pure: the config's lowercase-hex digests (validated by `AuthSection`) as bytes, with ids."""
    return [TrustedDigest("gateway:" + h[:8], bytes.fromhex(h)) for h in dict.fromkeys(hex_digests)]


def parse_keys(lines: list[str], min_length: int, source: str) -> tuple[list[ApiKey], list[str]]:
    """Pure: the usable keys in `lines` and a problem per unusable one (without the secret)."""
    keys: list[ApiKey] = []
    problems: list[str] = []
    for n, raw in enumerate(lines, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, secret = entry.partition(":")
        if not sep or not name.strip() or " " in name.strip():  # no id given (a key may contain ':')
            name, secret = "", entry
        secret = secret.strip()
        if len(secret) < min_length:
            problems.append(f"{source} entry {n}: key shorter than {min_length} characters (minKeyLength)")
            continue
        keys.append(ApiKey(name.strip() or key_id(secret), secret.encode()))
    return keys, problems


class KeyRing:
    """The current keys; `current()` re-reads the file when it changed (see the module docstring)."""

    def __init__(self, auth: AuthSection, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._auth = auth
        self._clock = clock
        self._env_keys: list[ApiKey] = []
        self._file_keys: list[ApiKey] = []
        self._trusted = trusted_digests(auth.trusted_key_sha256 or [])
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.enabled = False
        self._load_at_start()

    def _load_at_start(self) -> None:
        auth = self._auth
        problems: list[str] = []
        env_value = os.environ.get(auth.api_key_env)
        if env_value is not None:
            source = f"${auth.api_key_env}"
            self._env_keys, bad = parse_keys(env_value.split(","), auth.min_key_length, source)
            problems += bad
            if not self._env_keys:
                problems.append(f"${auth.api_key_env} is set but holds no usable key")
        if auth.api_key_file:
            try:
                self._file_keys, bad = self._read_file()
            except OSError as exc:
                raise AuthConfigError(f"cannot read auth.apiKeyFile {auth.api_key_file}: {exc}") from None
            problems += bad
            if not self._file_keys:
                problems.append(f"auth.apiKeyFile {auth.api_key_file} holds no usable key")
        if self._trusted and not auth.api_key_file and env_value is None:
            problems.append(
                f"auth.trustedKeySha256 is set but neither auth.apiKeyFile nor ${auth.api_key_env} is: "
                "authentication would be off and the API open to everyone, not only to the gateway"
            )
        if problems:
            raise AuthConfigError("refusing to start with unusable API keys: " + "; ".join(problems))
        self.enabled = bool(auth.api_key_file) or env_value is not None
        self._checked = self._clock()
        if self.enabled:
            log.info(
                "API key authentication on: key ids %s",
                ", ".join([k.id for k in self.keys] + [t.id for t in self._trusted]),
            )

    def _read_file(self) -> tuple[list[ApiKey], list[str]]:
        path = Path(self._auth.api_key_file or "")
        st = path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return parse_keys(path.read_text(encoding="utf-8").splitlines(), self._auth.min_key_length, str(path))

    @property
    def keys(self) -> list[ApiKey]:
        return self._file_keys + self._env_keys

    def current(self) -> list[ApiKey]:
        """The keys now, re-reading the file at most every `auth.reloadSeconds` when it changed."""
        now = self._clock()
        if self._auth.api_key_file and now - self._checked >= self._auth.reload_seconds:
            self._checked = now
            self._reload_if_changed()
        return self.keys

    def _reload_if_changed(self) -> None:
        path = Path(self._auth.api_key_file or "")
        try:
            st = path.stat()
        except OSError as exc:  # mid-swap, or removed: keep the keys we have until it is back
            log.warning("cannot stat auth.apiKeyFile %s: %s", path, exc)
            return
        if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp:
            return
        try:
            keys, problems = self._read_file()
        except OSError as exc:
            log.warning("cannot re-read auth.apiKeyFile %s: %s", path, exc)
            return
        for problem in problems:
            log.warning("ignoring an API key: %s", problem)
        before = {k.id for k in self._file_keys}
        self._file_keys = keys
        after = {k.id for k in keys}
        if not self.keys:
            gateway = " (but the gateway's trusted key)" if self._trusted else ""
            log.error("auth.apiKeyFile %s now holds no usable key: every request%s is refused", path, gateway)
        log.info(
            "API keys reloaded: added %s, removed %s",
            sorted(after - before) or "none",
            sorted(before - after) or "none",
        )

    def match(self, presented: bytes) -> ApiKey | TrustedDigest | None:
        """The key equal to `presented`, or the trusted digest equal to its SHA-256; compares
        against every key and every digest (no early exit), so timing tells neither which nor
        whether a user key or the gateway's key matched."""
        found: ApiKey | TrustedDigest | None = None
        for key in self.current():
            if hmac.compare_digest(presented, key.secret):
                found = key
        digest = hashlib.sha256(presented).digest()
        for trusted in self._trusted:
            if hmac.compare_digest(digest, trusted.digest):
                found = trusted
        return found


def load_keys(auth: AuthSection) -> KeyRing:
    """The key ring for `auth`; raises AuthConfigError when keys are configured but unusable."""
    return KeyRing(auth)


def _presented_key(scope: Scope) -> bytes | None:
    headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
    value = headers.get(b"authorization")
    if value is not None:
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    return headers.get(b"x-api-key")


class ApiKeyMiddleware:
    """Rejects requests without a valid key (401 in the API's format); health is exempt."""

    def __init__(self, app: ASGIApp, *, keys: KeyRing, protect_metrics: bool) -> None:
        self.app = app
        self._keys = keys
        self._open = _ALWAYS_OPEN if protect_metrics else _ALWAYS_OPEN | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys.enabled or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        key = self._keys.match(presented) if presented is not None else None
        if key is not None:
            scope.setdefault("state", {})["api_key_id"] = key.id
            await self.app(scope, receive, send)
            return
        reason = "missing API key" if presented is None else "invalid API key"
        log.info("401 %s %s: %s", safe(scope.get("method")), safe(scope["path"]), reason)
        response = error_response(UnauthorizedError(reason), flavour_of(scope["path"]))
        await response(scope, receive, send)
