"""API keys at the door: who may use which models, with what request and token rates.

The keys file is YAML, a list of `{id, key, models, requestsPerMinute, tokensPerMinute}` (a mounted
Secret in Kubernetes, so rotating the Secret rotates the keys); `KeyFile.current()` re-reads it
when it changes, without a restart. A presented key is hashed and compared with `hmac.compare_digest`
against every key's hash, with no early exit. Keys are never logged; only their ids are.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)
T = TypeVar("T")

ANY_MODEL = "*"


class KeyEntry(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1, description="Shown in audit lines and metrics instead of the key.")
    key: str = Field(min_length=8, description="The secret clients send as a Bearer token.")
    models: list[str] = Field(default_factory=lambda: [ANY_MODEL], description="Allowed models; '*' = all.")
    requests_per_minute: int | None = Field(None, alias="requestsPerMinute", ge=1)
    tokens_per_minute: int | None = Field(None, alias="tokensPerMinute", ge=1)

    def __repr__(self) -> str:  # never print the key, even by accident
        return f"KeyEntry(id={self.id!r}, models={self.models!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class ApiKey:
    id: str
    digest: bytes
    models: frozenset[str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def allows(self, model: str) -> bool:
        return ANY_MODEL in self.models or model in self.models


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class AccessError(Exception):
    """The keys file is unreadable or invalid."""


@dataclass(frozen=True)
class KeyRing:
    """The configured keys; empty means the gateway is open to anyone the NetworkPolicy admits."""

    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_entries(cls, entries: Sequence[KeyEntry]) -> KeyRing:
        ids = [e.id for e in entries]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise AccessError(f"duplicate key ids: {', '.join(dupes)}")
        return cls(
            tuple(
                ApiKey(
                    id=e.id,
                    digest=_digest(e.key.encode()),
                    models=frozenset(e.models),
                    requests_per_minute=e.requests_per_minute,
                    tokens_per_minute=e.tokens_per_minute,
                )
                for e in entries
            )
        )

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        try:
            raw = yaml.safe_load(text) or []
        except yaml.YAMLError as exc:
            raise AccessError(f"keys file is not valid YAML: {exc.__class__.__name__}") from None
        if isinstance(raw, Mapping):
            raw = raw.get("keys", [])
        if not isinstance(raw, list):
            raise AccessError("keys file must be a list of keys (or {keys: [...]})")
        entries: list[KeyEntry] = []
        for i, item in enumerate(raw):
            try:
                entries.append(KeyEntry.model_validate(item))
            except ValidationError as exc:
                first = exc.errors()[0]  # the message names the field, never the input value
                where = ".".join(str(p) for p in (i, *first["loc"]))
                raise AccessError(f"invalid key entry field '{where}': {first['msg']}") from None
        return cls.from_entries(entries)

    def match(self, presented: bytes | None) -> ApiKey | None:
        """The key whose secret equals `presented`, comparing against every key in constant time."""
        if presented is None:
            return None
        digest = _digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # no early exit
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class ReloadingFile(Generic[T]):
    """A file parsed again when it changes (mtime, size or inode: Secret volumes swap a symlink).

    A change that does not parse (or a file that became unreadable) keeps the last good value
    and says so; `describe` names a value in the log lines (never the secret itself)."""

    def __init__(
        self, path: Path, parse: Callable[[str], T], what: str, describe: Callable[[T], str]
    ) -> None:
        self.path, self._parse, self._what, self._describe = path, parse, what, describe
        self._stamp = self._stat()
        self._value = parse(path.read_text(encoding="utf-8"))
        log.info("%s loaded: %s", what, describe(self._value))

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> T:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            try:
                value = self._parse(self.path.read_text(encoding="utf-8"))
            except (OSError, AccessError) as exc:
                log.error("keeping the previous %s: %s", self._what, exc)
            else:
                if value != self._value:
                    log.info("%s reloaded: %s", self._what, self._describe(value))
                self._value = value
        return self._value


class KeyFile:
    """The API keys file, re-read when it changes; no file configured: no keys (access open)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._file = (
            ReloadingFile(self.path, KeyRing.parse, "API keys", lambda ring: f"{len(ring.keys)} key(s)")
            if self.path is not None
            else None
        )

    def current(self) -> KeyRing:
        """The keys now; a file that became invalid keeps the last good keys (and says so)."""
        return KeyRing() if self._file is None else self._file.current()


def presented_key(headers: Mapping[str, str]) -> bytes | None:
    """`Authorization: Bearer KEY` (OpenAI and Ollama clients) or `x-api-key: KEY`."""
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode()
    key = headers.get("x-api-key")
    return key.encode() if key else None
