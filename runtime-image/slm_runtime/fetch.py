"""Model download for the pods' init container: `slm-runtime fetch --uri URI --dest PATH`.

Guarantees: the bytes at `dest` are complete and (when `--sha256` is given) verified, or there
is nothing at `dest` at all. Downloads stream to `dest.part`, hash while streaming, resume with
an HTTP Range request after a dropped connection, and are renamed into place atomically.
A `dest` that already has the right checksum is a cache hit (pod restarts do not re-download).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

from slm_runtime.errors import ChecksumError, FetchError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_ATTEMPTS = 4
_MARKER = ".slm-fetch.json"  # in an extracted folder: the archive's sha256, for cache hits


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    cache_hit: bool


def hf_url(uri: str) -> str:
    """`hf://org/repo[@revision]/path/file` -> the Hugging Face `resolve` URL."""
    rest = uri.removeprefix("hf://")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise FetchError(f"hf:// URI must be hf://org/repo[@revision]/path/to/file, got {uri!r}")
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    revision = revision or "main"
    quoted = urllib.parse.quote(path)
    return f"https://huggingface.co/{org}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    uri: str,
    dest: Path,
    *,
    sha256: str | None = None,
    extract: bool = False,
    client: httpx.Client | None = None,
) -> FetchResult:
    """Fetch `uri` to `dest` (a file, or with `extract` a folder unpacked from a tar archive)."""
    expected = sha256.lower() if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "tiny":
        return _tiny(uri, dest)
    cached = _cache_hit(dest, expected, extract)
    if cached:
        log.info("cache hit: %s already has sha256 %s", dest, cached)
        return FetchResult(dest, cached, True)
    target = dest.with_name(f".{dest.name}.archive") if extract else dest
    if scheme == "file":
        digest = _copy_local(Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)), target, expected)
    elif scheme in ("http", "https", "hf"):
        url = hf_url(uri) if scheme == "hf" else uri
        headers = {}
        token = os.environ.get("HF_TOKEN")
        if token and (scheme == "hf" or urllib.parse.urlsplit(url).hostname == "huggingface.co"):
            headers["Authorization"] = f"Bearer {token}"
        own = client is None
        http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
        try:
            digest = _download(http, url, target, expected, headers)
        finally:
            if own:
                http.close()
    else:
        raise FetchError(f"unsupported URI scheme {scheme!r} (use https, http, hf, file or tiny)")
    if extract:
        _extract(target, dest, digest)
    return FetchResult(dest, digest, False)


def _cache_hit(dest: Path, expected: str | None, extract: bool) -> str | None:
    if extract:
        marker = dest / _MARKER
        if marker.is_file():
            recorded = str(json.loads(marker.read_text()).get("sha256", ""))
            if expected is None or recorded == expected:
                return recorded
        return None
    if dest.is_file() and expected is not None:
        actual = sha256_of(dest)
        if actual == expected:
            return actual
        log.warning("%s exists but its sha256 is %s, not %s; fetching again", dest, actual, expected)
    return None


def _verify(part: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"sha256 mismatch: expected {expected}, got {digest}")


def _commit(part: Path, dest: Path) -> None:
    with part.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)


def _copy_local(source: Path, dest: Path, expected: str | None) -> str:
    if not source.is_file():
        raise FetchError(f"no such file: {source}")
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    with source.open("rb") as src, part.open("wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    _verify(part, digest.hexdigest(), expected)
    _commit(part, dest)
    return digest.hexdigest()


def _download(
    client: httpx.Client, url: str, dest: Path, expected: str | None, headers: dict[str, str]
) -> str:
    part = dest.with_name(dest.name + ".part")
    safe_url = urllib.parse.urlsplit(url)._replace(query="").geturl()  # no signed query strings in logs
    last_error: Exception | None = None
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            digest = _download_once(client, url, safe_url, part, headers)
        except (httpx.TransportError, _TruncatedError) as exc:
            last_error = exc
            log.warning("download of %s interrupted (attempt %d/%d): %s", safe_url, attempt, _ATTEMPTS, exc)
            if attempt < _ATTEMPTS:
                time.sleep(min(2.0 ** (attempt - 1) * 0.2, 5.0))
            continue
        _verify(part, digest, expected)
        _commit(part, dest)
        log.info("downloaded %s -> %s (sha256 %s)", safe_url, dest, digest)
        return digest
    raise FetchError(f"download of {safe_url} failed after {_ATTEMPTS} attempts: {last_error}")


class _TruncatedError(Exception):
    """The server closed the body before Content-Length bytes arrived."""


def _download_once(client: httpx.Client, url: str, safe_url: str, part: Path, headers: dict[str, str]) -> str:
    have = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    request_headers = {**headers, "Accept-Encoding": "identity"}  # bytes on disk = bytes hashed
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=request_headers) as response:
        if response.status_code == 416 and have:  # nothing past what we have: start over
            part.unlink()
            raise _TruncatedError("server refused the range; restarting")
        if response.status_code >= 400:
            raise FetchError(f"GET {safe_url}: HTTP {response.status_code}")
        if response.status_code == 206 and have:
            with part.open("rb") as f:  # hash what we already have, then append
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            mode = "ab"
            log.info("resuming %s at byte %d", safe_url, have)
        else:
            have, mode = 0, "wb"
        length = response.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        received = have
        last_log = time.monotonic()
        with part.open(mode) as out:
            for chunk in response.iter_raw():  # as it arrives: a dropped connection loses nothing
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    pct = f" ({100 * received / total:.0f}%)" if total else ""
                    log.info("downloading %s: %d MB%s", safe_url, received >> 20, pct)
        if total is not None and received < total:
            raise _TruncatedError(f"got {received} of {total} bytes")
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, digest: str) -> None:
    """Unpack into a temp folder beside `dest`, then rename it into place."""
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', devices
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"cannot extract {archive.name}: {exc}") from exc
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp  # unwrap a top folder
        (root / _MARKER).write_text(json.dumps({"sha256": digest}))
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        root.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
    log.info("extracted archive into %s", dest)


def _tiny(uri: str, dest: Path) -> FetchResult:
    """`tiny://gguf?quantization=q8_0` or `tiny://onnx`: generate a tiny model instead of downloading."""
    from slm_runtime.tiny.gguf_model import write_gguf
    from slm_runtime.tiny.onnx_model import write_onnx
    from slm_runtime.tiny.shapes import SHAPES

    parts = urllib.parse.urlsplit(uri)
    query = dict(urllib.parse.parse_qsl(parts.query))
    shape = SHAPES.get(query.get("shape", "tiny"))
    if shape is None:
        raise FetchError(f"unknown tiny shape {query.get('shape')!r}; known: {sorted(SHAPES)}")
    seed = int(query.get("seed", "0"))
    if parts.netloc == "gguf":
        quant = query.get("quantization", "q8_0")
        if quant not in ("f32", "q8_0", "q4_0"):
            raise FetchError(f"tiny gguf quantization must be f32, q8_0 or q4_0, not {quant!r}")
        write_gguf(dest, shape, quant, seed)  # type: ignore[arg-type]
        return FetchResult(dest, sha256_of(dest), False)
    if parts.netloc == "onnx":
        write_onnx(dest, shape, seed)
        return FetchResult(dest, "", False)
    raise FetchError(f"tiny:// URI must be tiny://gguf or tiny://onnx, got {uri!r}")
