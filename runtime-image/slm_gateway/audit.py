"""The audit log: one JSON line per request, to stdout and optionally to a file.

Carries who (key id, never the key; source address), what (API, path, model), where (deployment,
pod), how it went (status, prompt/completion tokens, TTFT, duration, retries). Prompts and answers
are written only when `audit.logContent` is on.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from slm_gateway.config import AuditConfig


@dataclass
class AuditRecord:
    time: str
    source: str
    api: str
    method: str
    path: str
    key_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    endpoint: str | None = None
    status: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    held_ms: float | None = None
    """Set when the request waited for a first pod (model scaled to zero): how long it waited."""
    duration_ms: float = 0.0
    retries: int = 0
    stream: bool = False
    error: str | None = None
    content: dict[str, Any] | None = field(default=None)

    def line(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Writes records; a file is opened once, in append mode, line-buffered."""

    def __init__(self, config: AuditConfig, stdout: TextIO | None = None) -> None:
        self.config = config
        self._log = logging.getLogger("slm_gateway.audit")
        self._stdout = stdout if stdout is not None else sys.stdout
        self._file: TextIO | None = None
        if config.file:
            self._file = open(config.file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, record: AuditRecord) -> None:
        line = record.line()
        if self.config.stdout:
            self._stdout.write(line + "\n")
            self._stdout.flush()
        if self._file is not None:
            self._file.write(line + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
