"""Issue 13, items 3 and 5 (runtime part): a model file is code; fetching one is an attack surface.

`slm-runtime fetch` against a real HTTP server on loopback (redirects, endless bodies, credentials
in URIs), real tar archives, and the ONNX folder check that runs before onnxruntime-genai loads
anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from slm_runtime.backends.onnx import OnnxBackend, check_genai_config
from slm_runtime.cli import EXIT_FETCH
from slm_runtime.cli import main as cli_main
from slm_runtime.errors import EngineError, FetchError
from slm_runtime.fetch import _download, fetch, hf_url, links_outside, redact

PAYLOAD = bytes(range(256)) * 1024  # 256 KiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Server:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    ranges: list[str] = field(default_factory=list)
    endless: set[str] = field(default_factory=set)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in state.endless:  # no Content-Length, never ends on its own
                self.send_response(200)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"\0" * 65536)
                except OSError:
                    return
            data = state.files.get(path)
            if data is None:
                self.send_error(404)
                return
            if rng := self.headers.get("Range"):
                state.ranges.append(rng)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


# -- credentials ----------------------------------------------------------------------------


def test_attack_credentials_in_uri_never_reach_logs_or_errors(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["/m.gguf"] = PAYLOAD
    host = server.url.removeprefix("http://")
    uri = f"http://alice:s3cr3t-pass@{host}/m.gguf?token=tok-123&X-Amz-Signature=sig-456"
    caplog.set_level(logging.DEBUG)
    assert cli_main(["fetch", "--uri", uri, "--dest", str(tmp_path / "m.gguf"), "--sha256", DIGEST]) == 0
    missing = f"https://bob:pw-789@{host}/missing?token=tok-123"
    with pytest.raises(FetchError) as err:
        fetch(missing.replace("https", "http"), tmp_path / "x")
    text = caplog.text + str(err.value)
    for secret in ("s3cr3t-pass", "alice", "tok-123", "sig-456", "pw-789"):
        assert secret not in text, secret
    assert "m.gguf" in caplog.text  # the log still says what was fetched
    assert redact(uri) == f"http://***@{host}/m.gguf"
    assert redact("hf://org/repo@abc/f.gguf?token=x") == "hf://org/repo@abc/f.gguf"


# -- downloads ------------------------------------------------------------------------------


def test_attack_partial_download_without_checksum_is_not_resumed(server: Server, tmp_path: Path) -> None:
    """A `.part` left by an earlier, unverified attempt (maybe another version's first half) is
    thrown away: the file starts over instead of being completed with a Range request."""
    server.files["/m.gguf"] = PAYLOAD
    dest = tmp_path / "m.gguf"
    (tmp_path / "m.gguf.part").write_bytes(b"EVIL" * 1000)
    fetch(f"{server.url}/m.gguf", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == []


def test_partial_download_with_checksum_is_resumed(server: Server, tmp_path: Path) -> None:
    """With a sha256 the final check covers the resumed bytes, so resuming stays."""
    server.files["/m.gguf"] = PAYLOAD
    (tmp_path / "m.gguf.part").write_bytes(PAYLOAD[:1000])
    fetch(f"{server.url}/m.gguf", tmp_path / "m.gguf", sha256=DIGEST)
    assert server.ranges == ["bytes=1000-"]


def test_attack_redirect_to_plain_http_is_refused(server: Server, tmp_path: Path) -> None:
    server.files["/real.gguf"] = PAYLOAD
    server.redirects["/m.gguf"] = f"{server.url}/real.gguf"  # http: a downgrade a MITM could use
    with pytest.raises(FetchError, match="non-https"):
        fetch(f"{server.url}/m.gguf", tmp_path / "m.gguf", sha256=DIGEST)
    assert not (tmp_path / "m.gguf").exists()


def test_attack_endless_download_stops_at_the_limit(server: Server, tmp_path: Path) -> None:
    server.endless.add("/m.gguf")
    dest = tmp_path / "m.gguf"
    code = cli_main(["fetch", "--uri", f"{server.url}/m.gguf", "--dest", str(dest), "--max-bytes", "1Mi"])
    assert code == EXIT_FETCH
    assert not dest.exists() and not (tmp_path / "m.gguf.part").exists()


def test_attack_oversized_download_is_refused_by_its_length(server: Server, tmp_path: Path) -> None:
    server.files["/m.gguf"] = PAYLOAD
    with pytest.raises(FetchError, match="limit"):
        fetch(f"{server.url}/m.gguf", tmp_path / "m.gguf", max_bytes=len(PAYLOAD) - 1)


def test_hf_uri_pins_a_commit() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert hf_url(f"hf://org/repo@{commit}/dir/m.gguf") == (
        f"https://huggingface.co/org/repo/resolve/{commit}/dir/m.gguf"
    )


# -- archives -------------------------------------------------------------------------------


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "target", ["..", "../secret", "../../etc/passwd"], ids=["parent", "sibling", "climb"]
)
def test_attack_archive_link_escapes_after_unwrap(server: Server, tmp_path: Path, target: str) -> None:
    """`top/link -> ..` stays inside the extraction folder (tarfile's data filter allows it) but
    points outside the model folder once `top/` becomes it (the climb the filter refuses itself)."""
    server.files["/m.tar.gz"] = _tar([("top/model.onnx", b"x"), _link("top/link", target)])
    dest = tmp_path / "models" / "m"
    with pytest.raises(FetchError, match="outside"):
        fetch(f"{server.url}/m.tar.gz", dest, extract=True)
    assert not dest.exists()


def test_archive_link_inside_the_folder_is_kept(server: Server, tmp_path: Path) -> None:
    server.files["/m.tar.gz"] = _tar([("top/model.onnx", b"x"), _link("top/alias.onnx", "model.onnx")])
    dest = tmp_path / "m"
    fetch(f"{server.url}/m.tar.gz", dest, extract=True)
    assert (dest / "alias.onnx").read_bytes() == b"x"
    assert links_outside(dest) == []


def test_attack_archive_bomb_stops_at_the_limit(server: Server, tmp_path: Path) -> None:
    """A small gzip of zeros that unpacks to 8 MiB, against a 1 MiB limit: refused before writing."""
    server.files["/bomb.tar.gz"] = _tar([("top/zeros.bin", b"\0" * (8 << 20))])
    assert len(server.files["/bomb.tar.gz"]) < 64 * 1024
    dest = tmp_path / "m"
    with pytest.raises(FetchError, match="limit"):
        fetch(f"{server.url}/bomb.tar.gz", dest, extract=True, max_bytes=1 << 20)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- ONNX folders ---------------------------------------------------------------------------


def _genai(folder: Path, **decoder: object) -> dict[str, object]:
    config = {"model": {"type": "llama", "decoder": {"filename": "model.onnx", **decoder}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"x")
    (folder / "genai_config.json").write_text(json.dumps(config))
    return config


@pytest.mark.parametrize(
    "decoder,message",
    [
        ({"session_options": {"custom_ops_library": "libevil.so"}}, "custom_ops_library"),
        ({"filename": "/etc/passwd"}, "outside"),
        ({"filename": "../other/model.onnx"}, "outside"),
    ],
    ids=["custom_ops_library", "absolute_path", "parent_path"],
)
def test_attack_onnx_config_reaching_outside_is_rejected_before_loading(
    tmp_path: Path, decoder: dict[str, object], message: str
) -> None:
    folder = tmp_path / "m"
    _genai(folder, **decoder)
    with pytest.raises(EngineError, match=message):
        OnnxBackend(folder, name="m", context_length=64).load()  # before onnxruntime-genai sees it


def test_attack_onnx_symlink_out_of_the_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "secret.onnx").write_bytes(b"x")
    folder = tmp_path / "m"
    config = _genai(folder, filename="decoder.onnx")
    (folder / "decoder.onnx").symlink_to(tmp_path / "secret.onnx")
    with pytest.raises(EngineError, match="resolves outside"):
        check_genai_config(folder, config)


def test_plain_onnx_config_passes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    config = _genai(folder, session_options={"provider_options": [{"cpu": {}}]}, inputs={"ids": "input_ids"})
    check_genai_config(folder, config)


def test_attack_hub_file_download_stops_at_the_limit(server: Server, tmp_path: Path) -> None:
    """`_download`, which the hub folder fetch uses per file, refuses past `max_bytes` too."""
    server.files["/m.gguf"] = PAYLOAD
    with httpx.Client() as client, pytest.raises(FetchError, match="limit"):
        _download(client, f"{server.url}/m.gguf", tmp_path / "m.gguf", None, {}, max_bytes=1000)
