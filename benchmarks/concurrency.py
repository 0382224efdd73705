"""Concurrency benchmark: our runtime vs llama.cpp's llama-server vs llama-cpp-python's server.

One run answers: how many output tokens per second does each server deliver, and with what
time-to-first-token and inter-token latency, when 1, 4, 8 or 16 clients stream at once?

Fairness rules (see ../shared/FACTS.md for why each matters):

* the same synthetic Qwen2.5-0.5B-shaped Q8_0 GGUF (random weights, from `slm-runtime tiny-model`)
  and the same thread count (2) for every server;
* llama-server is built from the llama.cpp sources vendored in the llama-cpp-python 0.3.36 sdist
  with the same CMake flags as our llama-cpp-python wheel (hack/build-llama-wheel.sh);
* every request has a unique 64-token prompt (llama-server's prompt cache would answer repeats
  in ~30 ms) and streams exactly 64 tokens: end-of-generation tokens and lone non-UTF-8 byte
  tokens are biased down (streaming servers hold text back after a partial character);
* a new connection per request (llama-server closes reused keep-alive connections);
* llama-cpp-python's server runs with `interrupt_requests=False` (by default a new request ends
  the stream already running).

Clients run closed-loop: each of `c` clients sends its next request as soon as the previous one
finished. Aggregate tokens/s = all streamed tokens / wall time of the level.

Usage (from the repo root, on a quiet machine):

    .venv/bin/python benchmarks/concurrency.py            # all servers, c = 1,4,8,16
    .venv/bin/python benchmarks/concurrency.py --model smollm2 --servers ours,llama-server
    .venv/bin/python benchmarks/concurrency.py --servers ours --concurrency 8

Each level runs at least 32 requests (2 per client or more), and the ratio of our aggregate
tokens/s to each other server's is printed for every level.

Setup (cached; the first run takes ~10 minutes on 2 cores): llama-server is built into
benchmarks/.work/ and cached under ~/.cache/slm-operator/llama-server-0.3.36/; a venv with
llama-cpp-python[server] (from the cached wheel) is made in benchmarks/.work/lcp-venv; the model
is written to benchmarks/.work/.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llama_server import LCP_VERSION, ROOT, WORK, log, run
from llama_server import build as llama_server

MODEL_NAME = "bench"


# ---- setup -------------------------------------------------------------------------------------


def lcp_python() -> Path:
    """A venv with llama-cpp-python[server], installed from the same cached wheel as .venv."""
    venv = WORK / "lcp-venv"
    py = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        wheels = subprocess.run(
            ["bash", str(ROOT / "hack" / "build-llama-wheel.sh")], check=True, capture_output=True, text=True
        ).stdout.strip()
        run([sys.executable, "-m", "venv", venv])
        run(
            [
                py,
                "-m",
                "pip",
                "install",
                "-q",
                "--find-links",
                wheels,
                f"llama-cpp-python[server]=={LCP_VERSION}",
            ]
        )
        (venv / ".installed").touch()
    return py


def model() -> Path:
    path = WORK / "qwen2.5-0.5b-shaped-q8_0.gguf"
    if not path.exists():
        run(
            [
                *(ROOT / ".venv" / "bin" / "slm-runtime", "tiny-model", "--format", "gguf"),
                *("--shape", "qwen2.5-0.5b", "--quantization", "q8_0", "--out", path),
            ]
        )
    return path


# ---- prompts and biases ---------------------------------------------------------------------------


@dataclass
class Workload:
    prompts: list[str]
    logit_bias: dict[str, float]


def workload(model_path: Path, n: int, prompt_tokens: int, seed: int = 0) -> Workload:
    """`n` unique prompts of exactly `prompt_tokens` tokens, and the biases that force full-length output."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    mdl = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(mdl)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    buf = ctypes.create_string_buffer(64)
    bias: dict[str, float] = {}
    for tok in range(n_vocab):
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            bias[str(tok)] = -100.0
            continue
        k = llama_cpp.llama_token_to_piece(vocab, tok, buf, 64, 0, False)
        try:
            buf.raw[: max(k, 0)].decode("utf-8")
        except UnicodeDecodeError:
            bias[str(tok)] = -100.0  # a lone byte of a multi-byte character
    rng = random.Random(seed)
    words = [
        *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "small"),
        *("language", "models", "answer", "questions", "about", "kubernetes", "containers"),
        *("weather", "numbers", "operators", "services", "and", "config", "maps"),
    ]
    prompts = []
    toks = (llama_cpp.llama_token * 4096)()
    for i in range(n):
        text = f"Request {i}: " + " ".join(rng.choice(words) for _ in range(prompt_tokens * 2))
        data = text.encode()
        got = llama_cpp.llama_tokenize(vocab, data, len(data), toks, 4096, False, False)
        out = b""
        for t in list(toks[:got])[:prompt_tokens]:
            k = llama_cpp.llama_token_to_piece(vocab, t, buf, 64, 0, False)
            out += buf.raw[:k]
        prompts.append(out.decode("utf-8", "replace"))
    llama_cpp.llama_model_free(mdl)
    return Workload(prompts, bias)


# ---- servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log_path: Path) -> None:
        log(f"starting {self.name}: {' '.join(self.cmd)}")
        out = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {log_path}")
            if _ready(self.port):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not get ready; see {log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _ready(port: int) -> bool:
    """Ready = a tiny completion succeeds (each server has a different health endpoint)."""
    body = json.dumps({"model": MODEL_NAME, "prompt": "hi", "max_tokens": 1}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers(names: list[str], model_path: Path, args: argparse.Namespace) -> list[Server]:
    out: list[Server] = []
    t = str(args.threads)
    for name in names:
        port = free_port()
        if name == "ours":
            cfg = WORK / "ours.yaml"
            cfg.write_text(
                json.dumps(
                    {
                        "model": {"name": MODEL_NAME, "path": str(model_path)},
                        "runtime": {
                            "contextLength": args.ctx,
                            "threads": args.threads,
                            "parallel": args.parallel,
                        },
                        "limits": {"queueLength": 256},
                        "server": {"host": "127.0.0.1", "port": port},
                    }
                )
            )
            launcher = os.environ.get("SLM_BENCH_OURS")  # e.g. a patched entry point while developing
            cmd = [
                *(
                    [str(ROOT / ".venv" / "bin" / "python"), launcher]
                    if launcher
                    else [str(ROOT / ".venv" / "bin" / "slm-runtime")]
                ),
                "--log-level",
                "WARNING",
                "serve",
                "--config",
                str(cfg),
            ]
            out.append(Server("ours", cmd, port))
        elif name == "llama-server":
            cmd = [str(llama_server()), "-m", str(model_path), "-np", str(args.parallel)]
            cmd += ["-c", str(args.ctx * args.parallel), "-t", t, "-tb", t, "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--alias", MODEL_NAME]
            out.append(Server("llama-server", cmd, port))
        elif name == "llama-cpp-python":
            cmd = [str(lcp_python()), "-m", "llama_cpp.server", "--model", str(model_path)]
            cmd += ["--model_alias", MODEL_NAME, "--n_threads", t, "--n_threads_batch", t]
            cmd += ["--n_ctx", str(args.ctx), "--interrupt_requests", "False"]
            cmd += ["--host", "127.0.0.1", "--port", str(port)]
            out.append(Server("llama-cpp-python", cmd, port))
        else:
            raise SystemExit(f"unknown server {name}")
    return out


# ---- client -------------------------------------------------------------------------------------


@dataclass
class Result:
    tokens: int
    ttft: float
    itls: list[float]
    start: float
    end: float


async def stream_completion(port: int, body: bytes) -> Result:  # noqa: PLR0915 - one linear protocol
    """POST /v1/completions with stream=true over a fresh connection; time every streamed token."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        rest = await reader.read()
        raise RuntimeError(f"HTTP error: {status!r} {rest[:300]!r}")
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    stamps: list[float] = []
    pending = b""
    done = False
    while not done:
        if chunked:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            data = data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
        now = time.perf_counter()
        pending += data.replace(b"\r\n", b"\n")
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                choices = json.loads(payload).get("choices") or []
                if choices and choices[0].get("text"):
                    stamps.append(now)
    writer.close()
    end = time.perf_counter()
    if not stamps:
        raise RuntimeError("no tokens streamed")
    itls = [b - a for a, b in itertools.pairwise(stamps)]
    return Result(len(stamps), stamps[0] - start, itls, start, end)


async def level(
    port: int, work: Workload, offset: int, c: int, *, per_client: int, args: argparse.Namespace
) -> dict[str, float]:
    """`c` closed-loop clients, `per_client` requests each; the level's aggregate numbers."""
    results: list[Result] = []

    def body(i: int) -> bytes:
        return json.dumps(
            {
                "model": MODEL_NAME,
                "prompt": work.prompts[(offset + i) % len(work.prompts)],
                "max_tokens": args.max_tokens,
                "stream": True,
                "temperature": 0.7,
                "top_k": 40,
                "top_p": 0.95,
                "min_p": 0.0,
                "repeat_penalty": 1.0,
                "logit_bias": work.logit_bias,
            }
        ).encode()

    async def client(k: int) -> None:
        for j in range(per_client):
            results.append(await stream_completion(port, body(k * per_client + j)))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(c)))
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    ttfts = sorted(r.ttft for r in results)
    itls = sorted(x for r in results for x in r.itls)
    tokens = sum(r.tokens for r in results)
    return {
        "concurrency": c,
        "requests": len(results),
        "tokens": tokens,
        "tokens_per_request_min": min(r.tokens for r in results),
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_p50": _pct(ttfts, 50),
        "ttft_p95": _pct(ttfts, 95),
        "itl_p50": _pct(itls, 50),
        "itl_p95": _pct(itls, 95),
        "load1": load1,
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--servers", default="ours,llama-server,llama-cpp-python")
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument(
        "--requests-per-client",
        type=int,
        default=0,
        help="default: enough for >= 32 requests per level (at least 2 per client)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512, help="context tokens per slot")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=WORK / "concurrency.json")
    p.add_argument(
        "--model",
        help="`synthetic` (default: the Qwen2.5-0.5B-shaped Q8_0), `smollm2` (the real SmolLM2-135M-"
        "Instruct from hack/fetch-models.sh), or a GGUF path",
    )
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    load1 = os.getloadavg()[0]
    if load1 > 1.5:
        log(f"warning: load average {load1:.1f}; numbers will be noisy (2 cores shared)")
    names = args.servers.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    path = resolve_model(args.model)

    def per_client(c: int) -> int:
        return args.requests_per_client or max(2, -(-32 // c))

    total = sum(c * per_client(c) for c in levels) + 8
    work = workload(path, total * len(names), args.prompt_tokens)
    log(
        f"model {path.name}; {len(work.logit_bias)} tokens biased down; "
        f"prompts of {args.prompt_tokens} tokens"
    )
    table: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    offset = 0
    # All servers run at once (idle ones cost nothing) and each concurrency level is measured on
    # every server back to back, so a change in background load hits all of them alike.
    running = servers(names, path, args)
    try:
        for server in running:
            server.start(WORK / f"{server.name}.log")
            asyncio.run(level(server.port, work, offset, 1, per_client=1, args=args))  # warm-up
            offset += 1
        for c in levels:
            for server in running:
                row = asyncio.run(level(server.port, work, offset, c, per_client=per_client(c), args=args))
                offset += c * per_client(c)
                table[server.name].append(row)
                log(
                    f"{server.name} c={c}: {row['tok_s']:.1f} tok/s, ttft p95 {row['ttft_p95']:.2f}s, "
                    f"load1 {row['load1']:.1f}"
                )
    finally:
        for server in running:
            server.stop()
    args.out.write_text(json.dumps(table, indent=2))
    print(
        f"threads={args.threads} parallel={args.parallel} ctx/slot={args.ctx} "
        f"prompt={args.prompt_tokens} tok, output={args.max_tokens} tok, load1 at start={load1:.2f}\n"
    )
    print("| server | c | requests | agg tok/s | TTFT p50 s | TTFT p95 s | ITL p50 ms | ITL p95 ms | load1 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in table.items():
        for r in rows:
            print(
                f"| {name} | {r['concurrency']} | {r['requests']} | {r['tok_s']:.1f} | {r['ttft_p50']:.2f} | "
                f"{r['ttft_p95']:.2f} | {r['itl_p50'] * 1000:.0f} | {r['itl_p95'] * 1000:.0f} | "
                f"{r['load1']:.1f} |"
            )

    def at(name: str, c: int) -> float | None:
        return next((r["tok_s"] for r in table.get(name, []) if r["concurrency"] == c), None)

    print()
    for other, label in (
        ("llama-server", "ratio_vs_llama_server"),
        ("llama-cpp-python", "ratio_vs_llama_cpp_python_server"),
    ):
        for c in levels:
            ours, theirs = at("ours", c), at(other, c)
            if ours and theirs:
                print(f"{label} c={c}: {ours / theirs:.2f}")
    return 0


def resolve_model(choice: str | None) -> Path:
    if choice in (None, "synthetic"):
        return model()
    if choice == "smollm2":
        out = subprocess.run(
            ["bash", str(ROOT / "hack" / "fetch-models.sh")], check=True, capture_output=True, text=True
        )
        return Path(out.stdout.strip().splitlines()[-1]) / "smollm2-135m-instruct-q4_1.gguf"
    return Path(choice)


if __name__ == "__main__":
    sys.exit(main())
