"""`slm-runtime fetch`: checksums, atomicity, resume, schemes, extraction, exit codes."""

from __future__ import annotations

import hashlib
import io
import ssl
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slm_runtime.cli import EXIT_CHECKSUM, EXIT_FETCH, EXIT_OK
from slm_runtime.cli import main as cli_main
from slm_runtime.errors import ChecksumError, FetchError
from slm_runtime.fetch import fetch, sha256_of

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class FileServer:
    url: str
    files: dict[str, bytes]
    truncate_next: int = 0  # this many GETs send half the body, then drop the connection
    ranges: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer("", {"/model.gguf": PAYLOAD})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.auth_headers.append(self.headers.get("Authorization"))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng:
                state.ranges.append(rng)
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if state.truncate_next > 0:
                state.truncate_next -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_good_checksum_then_cache_hit(file_server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    result = fetch(f"{file_server.url}/model.gguf", dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert result.sha256 == DIGEST
    assert not result.cache_hit
    again = fetch(f"{file_server.url}/model.gguf", dest, sha256=DIGEST.upper())
    assert again.cache_hit
    assert len(file_server.auth_headers) == 1  # no second download
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_wrong_checksum_leaves_nothing(file_server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    with pytest.raises(ChecksumError):
        fetch(f"{file_server.url}/model.gguf", dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    code = cli_main(
        ["fetch", "--uri", f"{file_server.url}/model.gguf", "--sha256", "0" * 64, "--dest", str(dest)]
    )
    assert code == EXIT_CHECKSUM
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_resumes_with_range(file_server: FileServer, tmp_path: Path) -> None:
    file_server.truncate_next = 1
    dest = tmp_path / "m.gguf"
    fetch(f"{file_server.url}/model.gguf", dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert file_server.ranges == [f"bytes={len(PAYLOAD) // 2}-"]


def test_always_truncated_download_fails_without_a_file(file_server: FileServer, tmp_path: Path) -> None:
    file_server.truncate_next = 100
    dest = tmp_path / "m.gguf"
    code = cli_main(["fetch", "--uri", f"{file_server.url}/model.gguf", "--dest", str(dest)])
    assert code == EXIT_FETCH
    assert not dest.exists()
    # The partial file stays for a later resume, which completes it.
    file_server.truncate_next = 0
    assert (
        cli_main(["fetch", "--uri", f"{file_server.url}/model.gguf", "--dest", str(dest), "--sha256", DIGEST])
        == 0
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "m.gguf.part").exists()


def test_http_errors_and_bad_schemes(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="404"):
        fetch(f"{file_server.url}/missing", tmp_path / "x")
    with pytest.raises(FetchError, match="scheme"):
        fetch("ftp://example.com/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_hf_token_is_sent_only_for_hugging_face(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    fetch(f"{file_server.url}/model.gguf", tmp_path / "m", sha256=DIGEST)
    assert file_server.auth_headers == [None]
    assert "hf_secret_value" not in caplog.text


def test_file_uri(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "copy.bin"
    result = fetch(src.as_uri(), dest, sha256=DIGEST)
    assert dest.read_bytes() == PAYLOAD
    assert result.sha256 == DIGEST
    with pytest.raises(ChecksumError):
        fetch(src.as_uri(), tmp_path / "bad.bin", sha256="1" * 64)
    assert not (tmp_path / "bad.bin").exists()


def test_extract_archive_atomically(file_server: FileServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"model/genai_config.json": b"{}", "model/model.onnx": b"onnx"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    file_server.files["/model.tar.gz"] = archive
    dest = tmp_path / "onnx-model"
    digest = hashlib.sha256(archive).hexdigest()
    assert not fetch(f"{file_server.url}/model.tar.gz", dest, sha256=digest, extract=True).cache_hit
    assert (dest / "genai_config.json").read_bytes() == b"{}"
    assert (dest / "model.onnx").read_bytes() == b"onnx"
    assert fetch(f"{file_server.url}/model.tar.gz", dest, sha256=digest, extract=True).cache_hit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-model"]
    # a bad archive leaves nothing behind
    file_server.files["/bad.tar"] = b"not a tar"
    with pytest.raises(FetchError, match="extract"):
        fetch(f"{file_server.url}/bad.tar", tmp_path / "bad", extract=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-model"]


def test_tiny_scheme(tmp_path: Path) -> None:
    assert (
        cli_main(["fetch", "--uri", "tiny://gguf?quantization=q4_0", "--dest", str(tmp_path / "t.gguf")])
        == EXIT_OK
    )
    assert (tmp_path / "t.gguf").read_bytes()[:4] == b"GGUF"
    assert cli_main(["fetch", "--uri", "tiny://onnx", "--dest", str(tmp_path / "onnx")]) == EXIT_OK
    assert (tmp_path / "onnx" / "genai_config.json").is_file()
    assert cli_main(["fetch", "--uri", "tiny://nope", "--dest", str(tmp_path / "x")]) == EXIT_FETCH
    assert sha256_of(tmp_path / "t.gguf")


# -- hf:// folders ---------------------------------------------------------------------------

FOLDER_FILES = {
    "genai_config.json": b'{"model": {}}',  # small: the hub gives only its git blob id
    "model.onnx": PAYLOAD,  # LFS: the hub gives its sha256
    "sub/tokenizer.json": b'{"version": "1.0"}',
}


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Hub:
    url: str
    ca: Path
    files: dict[str, bytes]
    gets: list[str] = field(default_factory=list)
    truncate: set[str] = field(default_factory=set)  # paths whose next GET drops half-way
    corrupt: set[str] = field(default_factory=set)  # paths served with a flipped byte


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """An HTTPS server answering like the hub: the tree API (paginated) and `resolve` URLs."""
    import json
    import ssl
    import subprocess

    certs = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(certs / "key.pem"),
            "-out",
            str(certs / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    state = Hub("", certs / "cert.pem", {f"onnx/int4/{k}": v for k, v in FOLDER_FILES.items()})
    state.files["other/readme.md"] = b"not in the folder"
    tree = "/api/models/org/repo/tree/v1.0/onnx/int4?recursive=true"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.gets.append(self.path)
            if self.path.startswith(tree):
                entries: list[dict[str, object]] = [
                    {"type": "directory", "path": "onnx/int4/sub", "oid": "x"}
                ]
                for path, data in sorted(state.files.items()):
                    if not path.startswith("onnx/int4/"):
                        continue
                    entry: dict[str, object] = {
                        "type": "file",
                        "path": path,
                        "size": len(data),
                        "oid": _git_oid(data),
                    }
                    if len(data) > 1000:
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}
                    entries.append(entry)
                page = 1 if self.path.endswith("&cursor=2") else 0
                body = json.dumps(entries[:2] if page == 0 else entries[2:]).encode()
                self.send_response(200)
                if page == 0:
                    self.send_header("Link", f'<{state.url}{tree}&cursor=2>; rel="next"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            prefix = "/org/repo/resolve/v1.0/"
            path = self.path.removeprefix(prefix)
            data = state.files.get(path) if self.path.startswith(prefix) else None
            if data is None:
                self.send_error(404)
                return
            if path in state.corrupt:
                data = bytes([data[0] ^ 1]) + data[1:]
            start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
            self.send_response(206 if start else 200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if path in state.truncate:
                state.truncate.discard(path)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    state.url = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _manifest() -> str:
    lines = "".join(f"{hashlib.sha256(FOLDER_FILES[p]).hexdigest()}  {p}\n" for p in sorted(FOLDER_FILES))
    return hashlib.sha256(lines.encode()).hexdigest()


URI = "hf://org/repo@v1.0/onnx/int4"


def test_hf_folder_is_fetched_file_by_file_and_checked(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    dest = tmp_path / "model"
    with httpx.Client(verify=ssl.create_default_context(cafile=hub.ca)) as client:
        result = fetch(URI, dest, sha256=_manifest(), folder=True, client=client)
        assert result.sha256 == _manifest()
        assert not result.cache_hit
        assert {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} == {
            *FOLDER_FILES,
            ".slm-fetch.json",
        }
        assert all((dest / p).read_bytes() == data for p, data in FOLDER_FILES.items())
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # staging renamed away
        assert sum("cursor=2" in g for g in hub.gets) == 1  # the listing's second page was read
        again = fetch(URI, dest, sha256=_manifest(), folder=True, client=client)
        assert again.cache_hit


def test_hf_folder_resumes_a_dropped_file(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.truncate.add("onnx/int4/model.onnx")
    with httpx.Client(verify=ssl.create_default_context(cafile=hub.ca)) as client:
        fetch(URI, tmp_path / "model", folder=True, client=client)
    assert (tmp_path / "model" / "model.onnx").read_bytes() == PAYLOAD
    assert sum(g.endswith("/model.onnx") for g in hub.gets) == 2  # the second GET resumed


@pytest.mark.parametrize("corrupt", ["onnx/int4/model.onnx", "onnx/int4/genai_config.json"])
def test_hf_folder_file_that_does_not_match_the_hub_leaves_nothing(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: str
) -> None:
    import httpx

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.corrupt.add(corrupt)
    with (
        httpx.Client(verify=ssl.create_default_context(cafile=hub.ca)) as client,
        pytest.raises(ChecksumError),
    ):
        fetch(URI, tmp_path / "model", folder=True, client=client)
    assert not (tmp_path / "model").exists()
    # A later attempt (the pod restarting) keeps the good files and fetches only what is missing.
    hub.corrupt.clear()
    hub.gets.clear()
    with httpx.Client(verify=ssl.create_default_context(cafile=hub.ca)) as client:
        fetch(URI, tmp_path / "model", folder=True, client=client)
    fetched_again = {g.rsplit("/", 1)[-1] for g in hub.gets if "/resolve/" in g}
    assert fetched_again == (
        {"model.onnx", "tokenizer.json"}
        if corrupt.endswith("model.onnx")
        else {"genai_config.json", "model.onnx", "tokenizer.json"}
    )
    assert (tmp_path / "model" / "model.onnx").read_bytes() == PAYLOAD


def test_hf_folder_wrong_manifest_is_a_checksum_error(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(hub.ca))  # the CLI builds its own client
    argv = ["fetch", "--uri", URI, "--folder", "--dest", str(tmp_path / "m"), "--sha256", "0" * 64]
    assert cli_main(argv) == EXIT_CHECKSUM
    assert not (tmp_path / "m").exists()
    assert cli_main([*argv[:-1], _manifest()]) == EXIT_OK
    assert (tmp_path / "m" / "sub" / "tokenizer.json").is_file()
