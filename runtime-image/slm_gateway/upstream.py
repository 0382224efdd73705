"""The gateway's own credential for the runtimes: one key, sent upstream as `Authorization: Bearer`.

Issue 13, item 8: the gateway used to read each SLMDeployment's API-key Secret (which needed `get
secrets` in every namespace, on the fleet's network-facing component) and forward that user key.
Now it holds one key of its own, a Secret in its release namespace mounted as a file, and the
operator writes only that key's SHA-256 into each runtime's config (`auth.trustedKeySha256`); the
gateway needs no Secret access at all.

The file holds the key on its first line that is neither blank nor a `#` comment. It is re-read
when it changes (mtime, size or inode: Secret volumes swap a symlink), like the keys file, so a
rotated Secret reaches the gateway without a restart. The key is never logged; its id is
`gateway:` + the first 8 hex digits of its SHA-256, the id the runtimes log for it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from slm_gateway.access import AccessError, ReloadingFile

log = logging.getLogger(__name__)

MIN_LENGTH = 32
"""Its SHA-256 sits in ConfigMaps, readable by more people than Secrets are: only a key too long
to guess keeps the digest from being reversed by trying keys (the chart generates 48 characters)."""


def parse_key(text: str, source: str) -> str:
    """Pure: the key in a key file's `text`; AccessError (without the key) when there is none."""
    key = next((s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")), "")
    if not key:
        raise AccessError(f"upstream key file {source} holds no key")
    if len(key) < MIN_LENGTH:
        raise AccessError(f"upstream key in {source} is shorter than {MIN_LENGTH} characters")
    return key


def upstream_key_id(key: str) -> str:
    return "gateway:" + hashlib.sha256(key.encode()).hexdigest()[:8]


class UpstreamKey:
    """The key file, re-read when it changes; no file configured: no key is sent."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._file = (
            ReloadingFile(self.path, lambda text: parse_key(text, str(path)), "upstream key", upstream_key_id)
            if self.path is not None
            else None
        )

    def current(self) -> str | None:
        """The key now; a file that became unreadable or empty keeps the last good key (and says so)."""
        return None if self._file is None else self._file.current()
