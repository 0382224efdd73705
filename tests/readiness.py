"""Waiting for a runtime or gateway under test to answer `/readyz` (one loop for every suite).

Importable as `readiness` from every test package: pytest puts `tests/` on sys.path for them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_ready(
    url: str,
    *,
    timeout: float = 60,
    process: subprocess.Popen[bytes] | None = None,
    describe: Callable[[], str] = lambda: "",
    path: str = "/readyz",
    interval: float = 0.05,
) -> None:
    """Poll `url + path` until it answers 200; RuntimeError when `timeout` seconds pass first or
    `process` (the server, when it runs as a subprocess) exits meanwhile. `describe` adds what
    helps with the failure (the server's log) to the error."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}\n{describe()}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}{path} did not answer 200 within {timeout:.0f} s\n{describe()}")
        time.sleep(interval)
