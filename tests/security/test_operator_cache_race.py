"""Issue 13 item 11: several pods of one SLMDeployment share a ReadWriteMany cache PVC and start
their fetch at once. Without coordination they resume the same `.part` file together and corrupt
it; with the lock beside the file (slm_runtime.fetch) they take turns and the later one finds the
file already there. Two fetches in threads stand in for two pods (flock excludes between separate
opens of the lock file as it does between processes)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slm_runtime.fetch import FetchResult, fetch, sha256_of

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB, sent in slices so that both downloads overlap
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def slow_server() -> Iterator[tuple[str, list[str]]]:
    gets: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            for i in range(0, len(PAYLOAD), 256 * 1024):
                self.wfile.write(PAYLOAD[i : i + 256 * 1024])
                self.wfile.flush()
                time.sleep(0.02)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", gets
    finally:
        server.shutdown()
        server.server_close()


def test_shared_cache_two_pods_one_part_file(slow_server: tuple[str, list[str]], tmp_path: Path) -> None:
    url, gets = slow_server
    dest = tmp_path / "shared-pvc" / "model.gguf"
    results: list[FetchResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def pod() -> None:
        start.wait()
        try:
            results.append(fetch(f"{url}/model.gguf", dest, sha256=DIGEST))
        except BaseException as err:
            errors.append(err)

    pods = [threading.Thread(target=pod) for _ in range(2)]
    for p in pods:
        p.start()
    for p in pods:
        p.join(timeout=60)
    assert errors == []
    assert [r.sha256 for r in results] == [DIGEST, DIGEST]
    assert sha256_of(dest) == DIGEST
    assert len(gets) == 1, "the second pod downloaded again instead of using the first pod's file"
    assert not dest.with_name(dest.name + ".part").exists()
