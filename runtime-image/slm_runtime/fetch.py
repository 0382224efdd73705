"""Model download for the pods' init container: `slm-runtime fetch --uri URI --dest PATH`.

Guarantees: the bytes at `dest` are complete and (when `--sha256` is given) verified, or there
is nothing at `dest` at all. Downloads stream to `dest.part`, hash while streaming, resume with
an HTTP Range request after a dropped connection, and are renamed into place atomically.
A `dest` that already has the right checksum is a cache hit (pod restarts do not re-download).

`hf://org/repo[@rev]/folder` with `folder=True` (how ONNX models are published: a folder per
variant) is fetched file by file: the hub's tree API lists the files, each is downloaded with the
same resume logic and checked against the hub's own digest (the LFS sha256, or the git blob id of
a small file), into a staging folder beside `dest` that survives restarts (finished files are
kept), and renamed into place once all are there. The optional `sha256` of a folder is the
*manifest digest*: the sha256 of `sha256sum`'s output over the folder's files sorted by path, i.e.
`cd FOLDER && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum`.
`HF_ENDPOINT` replaces https://huggingface.co (a mirror, or a test server).

Pin what you fetch: `hf://org/repo@<40-hex commit>/file` fetches that commit's file, whatever is
pushed to the repo later (a branch or tag name is logged as unpinned); `sha256` pins the bytes.

A model file is code (a chat template runs, an ONNX graph names libraries), so:
* without a checksum a partial `.part` is never resumed (its first half could be another
  version's): the download starts over;
* redirects are followed only to https URLs (http -> https upgrades included), at most 10;
* `max_bytes` (the operator passes the cache size; default `DEFAULT_MAX_BYTES`) stops an
  endless download and an archive bomb (the sum of the archive's members);
* an archive may hold no link that points outside the folder it becomes, after its top folder
  is unwrapped (tarfile's `data` filter checks only against the extraction folder);
* credentials in a URI (`https://user:pass@host/...`, `?token=...`, signed query strings) never
  reach a log line or an error message: both use `redact(uri)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from slm_runtime.errors import ChecksumError, FetchError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_ATTEMPTS = 4
_MARKER = ".slm-fetch.json"  # in an extracted folder: the archive's sha256, for cache hits
_MAX_REDIRECTS = 10
_MAX_MEMBERS = 100_000
DEFAULT_MAX_BYTES = 64 << 30
"""The size cap of a fetch (a file, or an archive's unpacked members) when none is given."""
_COMMIT = re.compile(r"[0-9a-f]{40}")


def redact(uri: str) -> str:
    """`uri` without credentials: no user/password, no query string (tokens, signatures)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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
        raise FetchError(f"hf:// URI must be hf://org/repo[@revision]/path/to/file, got {redact(uri)!r}")
    org, repo, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    revision = revision or "main"
    _note_pin(org, repo, revision)
    quoted = urllib.parse.quote(path)
    return f"https://huggingface.co/{org}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


def _quiet_http_logs() -> None:
    """httpx logs every request's full URL at INFO (user:password and query tokens included), and
    httpcore its headers at DEBUG (Authorization): ours, redacted, are the only request logs."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


def _note_pin(org: str, repo: str, revision: str) -> None:
    if not _COMMIT.fullmatch(revision):
        log.info("hf://%s/%s@%s is not pinned to a commit (hf://org/repo@<commit>/...)", org, repo, revision)


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
    folder: bool = False,
    client: httpx.Client | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FetchResult:
    """Fetch `uri` to `dest`: a file, with `extract` a folder unpacked from a tar archive, with
    `folder` an `hf://` folder fetched file by file (`sha256` is then the manifest digest).
    At most `max_bytes` are written (per file, and for an archive's members together)."""
    _quiet_http_logs()
    expected = sha256.lower() if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "tiny":
        return _tiny(uri, dest)
    if folder:
        if scheme != "hf":
            raise FetchError(f"folder fetches need an hf:// URI, got {redact(uri)!r}")
        own = client is None
        http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
        try:
            return _fetch_hf_folder(http, uri, dest, expected, max_bytes)
        finally:
            if own:
                http.close()
    cached = _cache_hit(dest, expected, extract)
    if cached:
        log.info("cache hit: %s already has sha256 %s", dest, cached)
        return FetchResult(dest, cached, True)
    target = dest.with_name(f".{dest.name}.archive") if extract else dest
    if scheme == "file":
        digest = _copy_local(
            Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)), target, expected, max_bytes
        )
    elif scheme in ("http", "https", "hf"):
        url = hf_url(uri) if scheme == "hf" else uri
        headers = {}
        token = os.environ.get("HF_TOKEN")
        if token and (scheme == "hf" or urllib.parse.urlsplit(url).hostname == "huggingface.co"):
            headers["Authorization"] = f"Bearer {token}"
        own = client is None
        http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
        try:
            digest = _download(http, url, target, expected, headers, max_bytes=max_bytes)
        finally:
            if own:
                http.close()
    else:
        raise FetchError(f"unsupported URI scheme {scheme!r} (use https, http, hf, file or tiny)")
    if extract:
        _extract(target, dest, digest, max_bytes)
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


def _copy_local(source: Path, dest: Path, expected: str | None, max_bytes: int) -> str:
    if not source.is_file():
        raise FetchError(f"no such file: {source}")
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    copied = 0
    with source.open("rb") as src, part.open("wb") as out:
        while chunk := src.read(_CHUNK):
            copied += len(chunk)
            if copied > max_bytes:
                out.close()
                part.unlink(missing_ok=True)
                raise FetchError(f"{source} is larger than the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    _verify(part, digest.hexdigest(), expected)
    _commit(part, dest)
    return digest.hexdigest()


def _download(
    client: httpx.Client,
    url: str,
    dest: Path,
    expected: str | None,
    headers: dict[str, str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    part = dest.with_name(dest.name + ".part")
    safe_url = redact(url)  # no credentials or signed query strings in logs
    with _exclusive(dest.with_name(f".{dest.name}.lock")):
        if expected is not None and dest.is_file() and sha256_of(dest) == expected:
            log.info("%s was downloaded by another pod meanwhile", dest)
            return expected
        return _download_locked(
            client, url, safe_url, part, dest, expected=expected, headers=headers, max_bytes=max_bytes
        )


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Pods sharing one cache volume (a ReadWriteMany PVC) take turns on a download: without the
    lock two would append to the same `.part` at once and corrupt it. The lock file is removed by
    its holder (a waiter then finds the finished file); should a third pod arrive just after a
    failed attempt it may overlap the next one, which the checksum then catches."""
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download_locked(
    client: httpx.Client,
    url: str,
    safe_url: str,
    part: Path,
    dest: Path,
    *,
    expected: str | None,
    headers: dict[str, str],
    max_bytes: int,
) -> str:
    if expected is None and part.exists():  # nothing to prove the old half belongs to these bytes
        log.info("discarding a partial download of %s: without a sha256 it is not resumed", safe_url)
        part.unlink()
    last_error: Exception | None = None
    for attempt in range(1, _ATTEMPTS + 1):
        if expected is None:
            part.unlink(missing_ok=True)
        try:
            digest = _download_once(client, url, safe_url, part, headers, max_bytes=max_bytes)
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


def _get(client: httpx.Client, url: str, safe_url: str, headers: dict[str, str]) -> httpx.Response:
    """GET `url` streamed, following redirects only to https URLs (see the module docstring).

    httpx builds each next request (`next_request`), dropping Authorization when the origin
    changes, as its own redirect handling does."""
    request = client.build_request("GET", url, headers=headers)
    for _ in range(_MAX_REDIRECTS + 1):
        response = client.send(request, stream=True, follow_redirects=False)
        if not response.is_redirect or response.next_request is None:
            return response
        response.close()
        request = response.next_request
        if request.url.scheme != "https":
            raise FetchError(
                f"GET {safe_url}: refusing a redirect to a non-https URL ({redact(str(request.url))})"
            )
    raise FetchError(f"GET {safe_url}: more than {_MAX_REDIRECTS} redirects")


def _download_once(
    client: httpx.Client,
    url: str,
    safe_url: str,
    part: Path,
    headers: dict[str, str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    have = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    request_headers = {**headers, "Accept-Encoding": "identity"}  # bytes on disk = bytes hashed
    if have:
        request_headers["Range"] = f"bytes={have}-"
    response = _get(client, url, safe_url, request_headers)
    with contextlib.closing(response):
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
        if total is not None and total > max_bytes:
            part.unlink(missing_ok=True)
            raise FetchError(f"GET {safe_url}: {total} bytes is more than the limit of {max_bytes}")
        received = have
        last_log = time.monotonic()
        with part.open(mode) as out:
            for chunk in response.iter_raw():  # as it arrives: a dropped connection loses nothing
                received += len(chunk)
                if received > max_bytes:  # no Content-Length, or a server sending more than it said
                    out.close()
                    part.unlink(missing_ok=True)
                    raise FetchError(f"GET {safe_url}: more than the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    pct = f" ({100 * received / total:.0f}%)" if total else ""
                    log.info("downloading %s: %d MB%s", safe_url, received >> 20, pct)
        if total is not None and received < total:
            raise _TruncatedError(f"got {received} of {total} bytes")
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, digest: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Unpack into a temp folder beside `dest`, then rename it into place."""
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        try:
            with tarfile.open(archive) as tar:
                _check_members(tar, archive.name, max_bytes)
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', devices
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"cannot extract {archive.name}: {exc}") from exc
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp  # unwrap a top folder
        escaping = links_outside(root)
        if escaping:
            raise FetchError(
                f"cannot extract {archive.name}: links point outside the model folder: "
                + ", ".join(escaping[:5])
            )
        (root / _MARKER).write_text(json.dumps({"sha256": digest}))
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        root.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
    log.info("extracted archive into %s", dest)


def _check_members(tar: tarfile.TarFile, name: str, max_bytes: int) -> None:
    """Refuse an archive bomb before writing: too many members, or more bytes than allowed.

    Reads the member headers only (a gzip stream is decompressed once to list them)."""
    total = 0
    for count, member in enumerate(tar, 1):
        if count > _MAX_MEMBERS:
            raise FetchError(f"cannot extract {name}: more than {_MAX_MEMBERS} members")
        total += max(0, member.size)
        if total > max_bytes:
            raise FetchError(
                f"cannot extract {name}: its members hold more than {max_bytes} bytes (the limit)"
            )


def links_outside(root: Path) -> list[str]:
    """Pure over the file tree: symlinks under `root` whose target resolves outside `root`."""
    top = root.resolve()
    bad: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            path = Path(dirpath) / entry
            if not path.is_symlink():
                continue
            target = (path.parent / os.readlink(path)).resolve()
            if target != top and top not in target.parents:
                bad.append(str(path.relative_to(root)))
    return sorted(bad)


@dataclass(frozen=True)
class HubFile:
    """One file of a hub folder listing: its path inside the folder and the hub's digests."""

    path: str
    size: int
    sha256: str | None  # LFS files: the hub's sha256 of the content
    git_oid: str  # every file: the git blob id (sha1 of "blob <size>\\0" + content)


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def parse_hf_uri(uri: str) -> tuple[str, str, str, str]:
    """`hf://org/repo[@revision]/path` -> (org, repo, revision, path)."""
    parts = uri.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts[:2]) or not "/".join(parts[2:]).strip("/"):
        raise FetchError(f"hf:// URI must be hf://org/repo[@revision]/path, got {redact(uri)!r}")
    repo, _, revision = parts[1].partition("@")
    _note_pin(parts[0], repo, revision or "main")
    return parts[0], repo, revision or "main", "/".join(parts[2:]).strip("/")


def hub_files(listing: list[dict[str, object]], folder: str) -> list[HubFile]:
    """Pure: the files of a tree-API listing under `folder`, with paths relative to it (validated)."""
    prefix = folder.rstrip("/") + "/"
    files = []
    for entry in listing:
        if entry.get("type") != "file":
            continue
        path = str(entry.get("path", ""))
        if not path.startswith(prefix):
            raise FetchError(f"hub listing of {folder} has a file outside it: {path!r}")
        rel = path[len(prefix) :]
        pure = Path(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts:
            raise FetchError(f"refusing file path {path!r} from the hub listing")
        if pure.name == _MARKER:
            continue  # ours: written after the fetch
        lfs = entry.get("lfs")
        sha = str(lfs.get("oid")).lower() if isinstance(lfs, dict) and lfs.get("oid") else None
        size = entry.get("size", 0)
        files.append(HubFile(rel, int(size) if isinstance(size, int) else 0, sha, str(entry.get("oid", ""))))
    return sorted(files, key=lambda f: f.path)


def manifest_digest(sha256_by_path: dict[str, str]) -> str:
    """sha256 of `sha256sum`'s output lines ("<hex>  <path>\\n") sorted by path."""
    text = "".join(f"{sha256_by_path[p]}  {p}\n" for p in sorted(sha256_by_path))
    return hashlib.sha256(text.encode()).hexdigest()


def git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_listing(
    client: httpx.Client, org: str, repo: str, *, revision: str, folder: str, headers: dict[str, str]
) -> list[dict[str, object]]:
    quote = urllib.parse.quote
    tree = f"tree/{quote(revision, safe='')}/{quote(folder)}?recursive=true"
    url: str | None = f"{hf_endpoint()}/api/models/{org}/{repo}/{tree}"
    entries: list[dict[str, object]] = []
    while url:
        try:
            response = client.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise FetchError(f"listing {org}/{repo}/{folder} failed: {exc}") from exc
        if response.status_code >= 400:
            raise FetchError(f"listing {org}/{repo}@{revision}/{folder}: HTTP {response.status_code}")
        page = response.json()
        if not isinstance(page, list):
            raise FetchError(f"unexpected tree API answer for {org}/{repo}/{folder}")
        entries += [e for e in page if isinstance(e, dict)]
        url = response.links.get("next", {}).get("url")  # the hub paginates long listings
    return entries


def _fetch_hf_folder(
    client: httpx.Client, uri: str, dest: Path, expected: str | None, max_bytes: int = DEFAULT_MAX_BYTES
) -> FetchResult:
    marker = dest / _MARKER
    if marker.is_file():
        recorded = str(json.loads(marker.read_text()).get("manifest_sha256", ""))
        if recorded and (expected is None or recorded == expected):
            log.info("cache hit: %s already has manifest digest %s", dest, recorded)
            return FetchResult(dest, recorded, True)
    org, repo, revision, folder = parse_hf_uri(uri)
    headers = {"Authorization": f"Bearer {t}"} if (t := os.environ.get("HF_TOKEN")) else {}
    files = hub_files(
        _hub_listing(client, org, repo, revision=revision, folder=folder, headers=headers), folder
    )
    if not files:
        raise FetchError(f"no files under {redact(uri)}")
    if sum(f.size for f in files) > max_bytes:
        raise FetchError(f"{redact(uri)} holds more than the limit of {max_bytes} bytes")
    staging = dest.with_name(f".{dest.name}.partial")  # kept across restarts: finished files stay
    digests: dict[str, str] = {}
    for f in files:
        target = staging / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and _hub_match(target, f):
            digests[f.path] = sha256_of(target)
            continue
        quoted = urllib.parse.quote(f"{folder}/{f.path}")
        url = f"{hf_endpoint()}/{org}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"
        digests[f.path] = _download(client, url, target, f.sha256, headers, max_bytes=max_bytes)
        if f.sha256 is None and git_blob_id(target) != f.git_oid:
            target.unlink()
            raise ChecksumError(f"{f.path}: git blob id mismatch: expected {f.git_oid}, got another")
    manifest = manifest_digest(digests)
    if expected is not None and manifest != expected:
        shutil.rmtree(staging, ignore_errors=True)
        raise ChecksumError(
            f"manifest digest mismatch for {redact(uri)}: expected {expected}, got {manifest}"
        )
    (staging / _MARKER).write_text(json.dumps({"manifest_sha256": manifest, "uri": redact(uri)}))
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    staging.rename(dest)
    log.info("fetched %d files of %s into %s (manifest %s)", len(files), redact(uri), dest, manifest)
    return FetchResult(dest, manifest, False)


def _hub_match(path: Path, f: HubFile) -> bool:
    if f.sha256 is not None:
        return path.stat().st_size == f.size and sha256_of(path) == f.sha256
    return git_blob_id(path) == f.git_oid


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
