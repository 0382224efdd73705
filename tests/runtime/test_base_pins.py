"""Base images pinned by digest (issue 13, item 12): the release guard and the Renovate config.

No registry is reachable here, so no real digest can be looked up and none is written into the
repository. What is tested instead is what keeps pinning enforced and maintained:

* `runtime-image/check-base-pins.sh`, the first step of both Dockerfiles' build stage: a release
  build (`--build-arg RELEASE=1`) with a base that is not `<image>:<tag>@sha256:<64 hex>` fails,
  naming the build arg; without RELEASE (the local test-bed build) it passes;
* the Dockerfiles run it before anything is installed;
* `renovate.json` finds every base image the repository names (ARG defaults, documented build
  commands), and what it writes when it pins one passes the guard;
* with buildah and the test bed's local base (root, hack/real-node): a real release build stops
  at the guard, and the same base pinned by its real local digest gets past it.

The digests below are test inputs (a repeated hex digit), never presented as any image's digest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "runtime-image" / "check-base-pins.sh"
DOCKERFILES = {
    "runtime": ROOT / "runtime-image" / "Dockerfile",
    "operator": ROOT / "operator" / "Dockerfile",
}
RENOVATE = ROOT / "renovate.json"
SAMPLE = "sha256:" + "a" * 64
LOCAL_BASE = "localhost/slm-base:bookworm"  # hack/real-node/build-image.sh's prepared base


def _guard(env: dict[str, str], *names: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("RELEASE", "BASE_IMAGE", "BUILDER_IMAGE")}
    return subprocess.run(
        ["sh", str(GUARD), *names], env={**clean, **env}, capture_output=True, text=True, check=False
    )


PY = "python:3.11-slim-bookworm"
CUDA_DEVEL = "nvidia/cuda:12.6.3-devel-ubuntu24.04"


@pytest.mark.parametrize(
    "env,refused",
    [
        ({"BASE_IMAGE": LOCAL_BASE, "BUILDER_IMAGE": LOCAL_BASE}, []),  # the test bed's build
        ({"RELEASE": "0", "BASE_IMAGE": PY}, []),
        ({"RELEASE": "1", "BASE_IMAGE": f"{PY}@{SAMPLE}", "BUILDER_IMAGE": f"python@{SAMPLE}"}, []),
        ({"RELEASE": "1", "BASE_IMAGE": PY, "BUILDER_IMAGE": PY}, ["BASE_IMAGE", "BUILDER_IMAGE"]),
        ({"RELEASE": "1", "BASE_IMAGE": f"{PY}@{SAMPLE}", "BUILDER_IMAGE": CUDA_DEVEL}, ["BUILDER_IMAGE"]),
        # a digest that is not 64 lower-case hex digits
        ({"RELEASE": "1", "BASE_IMAGE": f"{PY}@sha256:abc123", "BUILDER_IMAGE": f"python@{SAMPLE}"},
         ["BASE_IMAGE"]),
        ({"RELEASE": "1", "BASE_IMAGE": f"{PY}@{SAMPLE.upper()}", "BUILDER_IMAGE": f"python@{SAMPLE}"},
         ["BASE_IMAGE"]),
        # a second line that looks pinned does not pin the first
        ({"RELEASE": "1", "BASE_IMAGE": f"a:b\nc@{SAMPLE}", "BUILDER_IMAGE": f"python@{SAMPLE}"},
         ["BASE_IMAGE"]),
        ({"RELEASE": "yes", "BUILDER_IMAGE": f"python@{SAMPLE}"}, ["BASE_IMAGE"]),  # unset; any RELEASE
    ],
)  # fmt: skip
def test_release_guard_refuses_unpinned_bases(env: dict[str, str], refused: list[str]) -> None:
    result = _guard(env)
    assert result.returncode == (1 if refused else 0), result.stderr
    for name in ("BASE_IMAGE", "BUILDER_IMAGE"):
        said = f"release build: {name}=" in result.stderr
        assert said == (name in refused), result.stderr
    if refused:
        assert "is not pinned by digest" in result.stderr and "@sha256:<digest" in result.stderr


def test_release_guard_evaluates_no_text(tmp_path: Path) -> None:
    """The guard reads build args by name through `eval`: a value is never run, and a name that
    is not a variable name is refused before any eval."""
    marker = tmp_path / "ran"
    hostile = f"$(touch {marker})`touch {marker}`"
    result = _guard({"RELEASE": "1", "BASE_IMAGE": hostile, "BUILDER_IMAGE": hostile})
    assert result.returncode == 1 and not marker.exists()
    bad_name = _guard({"RELEASE": "1"}, f"X;touch {marker}")
    assert bad_name.returncode == 2 and "not a build arg name" in bad_name.stderr and not marker.exists()
    only = _guard({"RELEASE": "1", "BASE_IMAGE": f"python@{SAMPLE}"}, "BASE_IMAGE")  # operator image
    assert only.returncode == 0, only.stderr


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by stage; [0] is the
    part before the first FROM."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_guard_is_the_build_stage_s_first_step(image: str) -> None:
    """It runs before anything is downloaded or installed, with the stage's base-image build
    args in scope (an ARG from before FROM is empty in a RUN unless declared again)."""
    stages = _stages(DOCKERFILES[image])
    assert "ARG RELEASE=0" in stages[0]
    build = stages[1]
    first_run = next(i for i, line in enumerate(build) if line.startswith("RUN "))
    assert build[first_run].startswith("RUN sh /tmp/check-base-pins.sh"), build[first_run]
    before = build[:first_run]
    assert "COPY runtime-image/check-base-pins.sh /tmp/check-base-pins.sh" in before
    declared = {line.split()[1].split("=")[0] for line in before if line.startswith("ARG ")}
    checked = build[first_run].split()[3:] or ["BASE_IMAGE", "BUILDER_IMAGE"]
    assert {"RELEASE", *checked} <= declared
    froms = [line.split()[1] for stage in stages[1:] for line in stage[:1]]
    assert all(ref.strip("${}") in checked for ref in froms), froms  # every FROM is checked


def test_the_image_build_context_carries_the_guard() -> None:
    """hack/real-node/build-image.sh copies only CONTEXT_PATHS into the build context."""
    script = (ROOT / "hack" / "real-node" / "build-image.sh").read_text()
    paths = re.search(r"CONTEXT_PATHS=\(([^)]*)\)", script)
    assert paths and "runtime-image" in paths.group(1).split()


def _renovate() -> dict[str, object]:
    config: dict[str, object] = json.loads(RENOVATE.read_text())
    return config


def _manager() -> dict[str, object]:
    config = _renovate()
    assert config["enabledManagers"] == ["custom.regex"]  # the Python locks are not Renovate's
    managers = config["customManagers"]
    assert isinstance(managers, list) and len(managers) == 1
    manager: dict[str, object] = managers[0]
    assert manager["datasourceTemplate"] == "docker"
    return manager


def _python_regex(js: str) -> re.Pattern[str]:
    return re.compile(js.replace("(?<", "(?P<"))


def _managed(manager: dict[str, object], path: str) -> bool:
    patterns = manager["managerFilePatterns"]
    assert isinstance(patterns, list)
    return any(re.search(str(p).strip("/"), path) for p in patterns)


def _tracked() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [p for p in out.stdout.splitlines() if (ROOT / p).is_file()]


BASE_REF = re.compile(r"\b(?:BASE|BUILDER)_IMAGE=([a-z0-9][^\s\"'`\\]*)")
"""A base image named in a build arg (not a variable like ${BASE_IMAGE}, not a <placeholder>)."""


def test_renovate_finds_every_base_image_the_repository_names() -> None:
    manager = _manager()
    (match_string,) = manager["matchStrings"]  # type: ignore[misc]
    regex = _python_regex(str(match_string))
    found: set[tuple[str, str]] = set()
    for path in _tracked():
        if path.startswith(("tests/", "hack/")):  # test inputs; the test bed's local base
            continue
        text = (ROOT / path).read_text(errors="replace")
        refs = [m for m in BASE_REF.finditer(text) if not m.group(1).startswith("localhost/")]
        if not refs:
            continue
        assert _managed(manager, path), f"{path} names a base image Renovate does not watch"
        for ref in refs:
            hit = regex.match(text, ref.start() + ref.group(0).index("_IMAGE="))
            assert hit, f"{path}: {ref.group(0)} is not matched by renovate.json"
            # the whole reference, so a pin is appended at its end (not inside it)
            assert hit.end() == ref.end(), f"{path}: renovate.json would match {hit.group(0)!r} only"
            found.add((hit.group("depName"), hit.group("currentValue")))
    assert {
        ("python", "3.11-slim-bookworm"),
        ("nvidia/cuda", "12.6.3-runtime-ubuntu24.04"),
        ("nvidia/cuda", "12.6.3-devel-ubuntu24.04"),
    } <= found


def test_a_base_renovate_pinned_passes_the_release_guard() -> None:
    """Render renovate.json's replacement for the Dockerfile's default as Renovate would (a new
    digest, same tag): the result is what the guard accepts, and the image contract's default
    (tests/runtime/test_dockerfile.py) still reads the same up to the pin."""
    manager = _manager()
    template = str(manager["autoReplaceStringTemplate"])
    (match_string,) = manager["matchStrings"]  # type: ignore[misc]
    regex = _python_regex(str(match_string))
    text = DOCKERFILES["runtime"].read_text()
    hit = regex.search(text, text.index("ARG BASE_IMAGE="))
    assert hit and hit.group("currentDigest") is None  # unpinned today: nothing invented
    rendered = (
        template.replace("{{{depName}}}", hit.group("depName"))
        .replace("{{{newValue}}}", hit.group("currentValue"))
        .replace("{{#if newDigest}}@{{{newDigest}}}{{/if}}", f"@{SAMPLE}")
    )
    assert "{" not in rendered, rendered
    pinned = text[: hit.start()] + rendered + text[hit.end() :]
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", pinned, re.M)
    assert default and default.group(1) == f"python:3.11-slim-bookworm@{SAMPLE}"
    result = _guard({"RELEASE": "1", "BASE_IMAGE": default.group(1), "BUILDER_IMAGE": default.group(1)})
    assert result.returncode == 0, result.stderr
    # and Renovate reads its own pin back (the next digest update replaces it whole)
    again = regex.search(pinned, pinned.index("ARG BASE_IMAGE="))
    assert again and again.group("currentDigest") == SAMPLE


def test_renovate_pins_digests_and_keeps_python_and_cuda_in_step() -> None:
    rules = _renovate()["packageRules"]
    assert isinstance(rules, list)
    assert any(r.get("pinDigests") is True and r.get("matchDatasources") == ["docker"] for r in rules)
    python = [r for r in rules if r.get("matchPackageNames") == ["python"]]
    assert python and python[0]["enabled"] is False and "minor" in python[0]["matchUpdateTypes"]
    cuda = [r for r in rules if r.get("matchPackageNames") == ["nvidia/cuda"]]
    assert any(r.get("groupName") for r in cuda)  # runtime and devel bases move together
    assert any(r.get("enabled") is False and r.get("matchUpdateTypes") == ["major"] for r in cuda)


def _local_base_digest() -> str | None:
    if os.geteuid() != 0 or not shutil.which("buildah"):
        return None
    out = subprocess.run(
        ["buildah", "images", "--digests", "--format", "{{.Name}}:{{.Tag}} {{.Digest}}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == LOCAL_BASE and fields[1].startswith("sha256:"):
            return fields[1]
    return None


def test_a_release_build_with_buildah_stops_at_an_unpinned_base(tmp_path: Path) -> None:
    """The real Dockerfile under buildah, from a context holding only it and the guard (a build
    that gets past the guard stops at the next COPY, whose source is absent: nothing is built)."""
    digest = _local_base_digest()
    if digest is None:
        pytest.skip(f"needs root, buildah and {LOCAL_BASE} (hack/real-node/build-image.sh builds it)")
    (tmp_path / "runtime-image").mkdir()
    for name in ("Dockerfile", "check-base-pins.sh"):
        shutil.copy(ROOT / "runtime-image" / name, tmp_path / "runtime-image" / name)

    def build(base: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["buildah", "bud", "--isolation", "chroot", "--pull-never", "--layers=false",
             "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "RELEASE=1",
             "-f", str(tmp_path / "runtime-image" / "Dockerfile"), str(tmp_path)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip

    unpinned = build(LOCAL_BASE)
    assert unpinned.returncode != 0
    assert (
        f"release build: BASE_IMAGE={LOCAL_BASE} is not pinned by digest" in unpinned.stderr + unpinned.stdout
    )
    pinned = build(f"{LOCAL_BASE}@{digest}")
    log = pinned.stderr + pinned.stdout
    assert "release build:" not in log, log[-2000:]
    assert "COPY ${LLAMA_WHEEL_DIR}/ /wheels/" in log, log[-2000:]  # got past the guard
