"""llama.cpp's own `llama-server`, built from the llama.cpp sources vendored in the
llama-cpp-python sdist our wheel is built from: the reference the benchmarks compare speed with
and the sampling conformance test compares outputs with (tests/runtime).

One implementation, used by both: `build()` compiles it once (~5-10 minutes on 2 cores) with the
same CMake flags as our llama-cpp-python wheel (hack/build-llama-wheel.sh) and caches the binary
under ~/.cache/slm-operator/llama-server-<version>/ (SLM_CACHE_DIR overrides the cache root); a
file lock makes a second caller wait for the first build instead of starting another.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
LCP_VERSION = "0.3.36"
CACHE = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-operator"))
CMAKE_FLAGS = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DLLAMA_CURL=OFF",
    # Not about speed: a single static binary, no TLS, no web UI download.
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
]


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def run(cmd: Sequence[str | Path], **kw: object) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def cached_binary() -> Path:
    """Where the built binary lives (it may not exist yet)."""
    return CACHE / f"llama-server-{LCP_VERSION}" / "llama-server"


def sdist(work: Path = WORK) -> Path:
    """The llama-cpp-python sdist (its vendor/llama.cpp is what our wheel was built from)."""
    path = work / f"llama_cpp_python-{LCP_VERSION}.tar.gz"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *(f"llama-cpp-python=={LCP_VERSION}", "-d", work),
            ]
        )
    return path


def build(work: Path = WORK) -> Path:
    """Build (once) llama.cpp's llama-server; cached outside the checkout."""
    cached = cached_binary()
    if cached.exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with (cached.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build is running: wait for it, then reuse it
        if cached.exists():
            return cached
        src = work / f"llama_cpp_python-{LCP_VERSION}"
        if not src.exists():
            with tarfile.open(sdist(work)) as tar:
                tar.extractall(work, filter="data")
        out = work / "llama-server-build"
        nice = ["nice", "-n", "10"]
        run([*nice, "cmake", "-S", src / "vendor" / "llama.cpp", "-B", out, "-G", "Ninja", *CMAKE_FLAGS])
        run([*nice, "cmake", "--build", out, "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
        tmp = cached.with_suffix(".tmp")
        shutil.copy2(out / "bin" / "llama-server", tmp)
        tmp.replace(cached)  # atomic: a reader never sees half a binary
    return cached


if __name__ == "__main__":
    print(build())
