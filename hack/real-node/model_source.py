#!/usr/bin/env python3
"""A model source for the real node: model files served over HTTPS from the node's host address,
and the runtime image plus one layer that trusts the server's throwaway CA.

Why: the SLMDeployment API accepts only https:// among network schemes and the operator's init
container really downloads and verifies the file, so a real model on the real node needs an HTTPS
server the pods can reach (the bridge gateway, NODE_IP) and a CA they trust. The runtime's HTTP
client honours SSL_CERT_FILE, so the extra image layer sets it and changes no code.

Used by the real-node e2e tests (tests/e2e/realnode.py) and by `make dev` (hack/real-node/demo.sh),
so both exercise one implementation. Stdlib only (plus openssl, buildah and ctr on PATH).

  model_source.py serve DIR [--port-file F]   serve the files of DIR until killed; certs in DIR/../tls
  model_source.py image BASE_IMAGE CA_FILE     build BASE+CA, import it into the node; print its tag
"""

from __future__ import annotations

import argparse
import http.server
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NODE_IP = "10.245.0.1"  # real_node.py: the bridge gateway = the node's InternalIP
HERE = Path(__file__).resolve().parent
CA_PATH_IN_IMAGE = "/etc/ssl/slm-test-ca.crt"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def _run(argv: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def make_certs(root: Path, ip: str = NODE_IP) -> Certs:
    """A CA valid for two days and a server certificate for `ip` signed by it (reused if present)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (
        root / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt", "ext")
    )
    if ca.exists() and cert.exists() and key.exists():
        return Certs(ca, cert, key)
    new_key = ["-new", "-nodes", "-newkey", "rsa:2048"]
    ca_ext = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]
    subject = ["-subj", "/CN=slm-realnode-model-source-ca"]
    _run(
        [
            "openssl",
            "req",
            "-x509",
            *new_key,
            "-days",
            "2",
            *subject,
            *ca_ext,
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
        ]
    )
    _run(["openssl", "req", *new_key, "-subj", f"/CN={ip}", "-keyout", str(key), "-out", str(csr)])
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    signer = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2", "-extfile", str(ext)]
    _run(["openssl", "x509", "-req", "-in", str(csr), *signer, "-out", str(cert)])
    return Certs(ca, cert, key)


@dataclass
class ModelServer:
    """The files of `directory` over HTTPS on `ip`; `requests` records what the pods asked for."""

    directory: Path
    certs: Certs
    ip: str = NODE_IP
    port: int = 0
    requests: list[str] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> ModelServer:
        directory, requests = str(self.directory), self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=directory, **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                requests.append(f"{self.command} {self.path}")

        server = http.server.ThreadingHTTPServer((self.ip, self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.certs.cert), str(self.certs.key))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="model-source").start()
        return self

    def url(self, name: str) -> str:
        return f"https://{self.ip}:{self.port}/{name}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def containerd_address() -> str:
    env = dict(line.split("=", 1) for line in _run([str(HERE / "env")], 30).split())
    return env["CONTAINERD_ADDRESS"]


def ca_image(base: str, ca: Path) -> str:
    """`base` plus `ca` as SSL_CERT_FILE, imported into the real node's containerd; returns its tag."""
    tag = "localhost/slm-runtime-testca:" + base.rsplit(":", 1)[-1]
    ctr = None
    work = Path(tempfile.mkdtemp(prefix="slm-ca-image-"))
    try:
        ctr = _run(["buildah", "from", "--pull-never", base], 120).strip()
        _run(["buildah", "copy", "--chown", "0:0", ctr, str(ca), CA_PATH_IN_IMAGE], 60)
        _run(["buildah", "config", "--env", f"SSL_CERT_FILE={CA_PATH_IN_IMAGE}", ctr], 60)
        _run(["buildah", "commit", "--rm", "--quiet", ctr, tag], 300)
        ctr = None
        archive = work / "image.tar"
        _run(["buildah", "push", "--quiet", tag, f"docker-archive:{archive}:{tag}"], 600)
        address = containerd_address()
        _run(
            [
                "ctr",
                "--address",
                address,
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                str(archive),
            ]
        )
    finally:
        if ctr:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["buildah", "rmi", tag], capture_output=True, check=False)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve DIR over HTTPS on the node address until killed")
    serve.add_argument("directory", type=Path)
    serve.add_argument("--tls-dir", type=Path, help="where the CA and certificate live (default DIR/../tls)")
    serve.add_argument("--port-file", type=Path, help="write the port here once listening")
    image = sub.add_parser("image", help="build BASE + the CA, import it into the real node, print its tag")
    image.add_argument("base")
    image.add_argument("ca", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "image":
        print(ca_image(args.base, args.ca))
        return 0
    certs = make_certs(args.tls_dir or args.directory.resolve().parent / "tls")
    server = ModelServer(args.directory, certs).start()
    if args.port_file:
        args.port_file.write_text(f"{server.port}\n")
    print(
        f"serving {args.directory} at https://{server.ip}:{server.port}/ (CA {certs.ca})",
        file=sys.stderr,
        flush=True,
    )
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
