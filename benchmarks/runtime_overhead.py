"""How much does our HTTP server cost compared with calling the library directly?

Not a test. Generates a Qwen2.5-0.5B-shaped Q8_0 GGUF (random weights, cached under
benchmarks/.work/) and takes the real SmolLM2-135M-Instruct (hack/fetch-models.sh), then for
each measures single-stream tokens/s of:
  direct:  llama-cpp-python's `Llama.create_completion(stream=True)` in-process;
  server:  the same generation streamed through `slm-runtime serve` (OpenAI SSE, a new
           connection per request, measured by the client from request to `[DONE]`);
with the same threads, prompts (unique, ~64 tokens) and output length (64 tokens, forced by
biasing end-of-generation and lone non-ASCII byte tokens down, see FACTS). Direct and server
requests alternate, so both see the same background load on a shared machine. Prints
`overhead_ratio=<server/direct>` (1.0 = free; below 1 = the server is slower). Then the same
for ONNX (onnxruntime-genai in-process vs our server) with a smaller shape.

    nice python benchmarks/runtime_overhead.py [--threads 2] [--requests 6] [--skip-onnx]
        [--models synthetic,smollm2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

WORK = Path(__file__).resolve().parent / ".work"
OUTPUT_TOKENS = 64
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "model",
    "server",
    "token",
    "stream",
    "cluster",
    "pod",
    "node",
]

log = logging.getLogger("runtime_overhead")


def prompts(n: int, seed: int) -> list[str]:
    """Unique prompts (so no prompt cache can help) of about 64 tokens each."""
    rng = random.Random(seed)
    return [f"Request {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(38)) for i in range(n)]


def ensure_model(fmt: str) -> Path:
    from slm_runtime.tiny.gguf_model import write_gguf
    from slm_runtime.tiny.onnx_model import write_onnx
    from slm_runtime.tiny.shapes import SHAPES

    WORK.mkdir(parents=True, exist_ok=True)
    if fmt == "gguf":
        path = WORK / "slm-runtime-qwen2.5-0.5b-shape-q8_0.gguf"
        if not path.exists():
            log.info("generating %s (one-off, ~1 minute)", path)
            write_gguf(path, SHAPES["qwen2.5-0.5b"], "q8_0", seed=0)
    else:
        path = WORK / "slm-runtime-small-onnx"
        if not path.exists():
            log.info("generating %s", path)
            write_onnx(path, SHAPES["small"], seed=0)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rate(times: list[float]) -> float:
    """Tokens/s from the median request time (robust to one slow request on a shared box)."""
    return OUTPUT_TOKENS / statistics.median(times)


def bias_for(vocab_tokens: int, eog: list[int]) -> dict[int, float]:
    # Lone bytes 0x80-0xFF (ids 128..255 in our byte-level vocab) never form text on their own.
    return {**dict.fromkeys(eog, -100.0), **dict.fromkeys(range(128, 256), -100.0)}


Runner = Callable[[str], float]
"""Runs one generation for a prompt and returns its wall time in seconds."""


@contextlib.contextmanager
def direct_gguf(path: Path, threads: int, bias: dict[int, float]) -> Iterator[Runner]:
    import llama_cpp

    llm = llama_cpp.Llama(
        str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def run(text: str) -> float:
        started = time.perf_counter()
        n = 0
        for _ in llm.create_completion(
            text, max_tokens=OUTPUT_TOKENS, temperature=0.0, logit_bias=bias, stream=True
        ):
            n += 1
        elapsed = time.perf_counter() - started
        if n < OUTPUT_TOKENS - 2:  # chunks can merge a few tokens; a big gap means an early stop
            log.warning("direct run produced only %d chunks", n)
        return elapsed

    yield run
    llm.close()


@contextlib.contextmanager
def direct_onnx(path: Path) -> Iterator[Runner]:
    import onnxruntime_genai as og

    model = og.Model(str(path))
    tokenizer = og.Tokenizer(model)

    def run(text: str) -> float:
        started = time.perf_counter()
        tokens = tokenizer.encode(text)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + OUTPUT_TOKENS, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        stream = tokenizer.create_stream()
        n = 0
        while not generator.is_done():
            generator.generate_next_token()
            stream.decode(int(generator.get_next_tokens()[0]))
            n += 1
        assert n == OUTPUT_TOKENS, n
        return time.perf_counter() - started

    yield run


@contextlib.contextmanager
def through_server(path: Path, threads: int, bias: dict[int, float] | None) -> Iterator[Runner]:
    port = free_port()
    config = WORK / f"bench-{path.name}.yaml"
    config.write_text(
        f"runtime: {{contextLength: 512, threads: {threads}, batchSize: 512}}\nmodel: {{name: bench}}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "slm_runtime.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--model",
        str(path),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

        def run(text: str) -> float:
            body: dict[str, object] = {
                "model": "bench",
                "prompt": text,
                "max_tokens": OUTPUT_TOKENS,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if bias:
                body["logit_bias"] = {str(k): v for k, v in bias.items()}
            usage = None
            started = time.perf_counter()
            # a new connection per request, as FACTS recommends for fair client measurements
            with (
                httpx.Client(timeout=120) as client,
                client.stream("POST", f"{url}/v1/completions", json=body) as r,
            ):
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage") or usage
            elapsed = time.perf_counter() - started
            if not usage or usage["completion_tokens"] != OUTPUT_TOKENS:
                log.warning("server run produced %s", usage)
            return elapsed

        yield run
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def compare(name: str, direct: Runner, server: Runner, requests: int) -> float:
    """Alternate direct and server requests (swapping the order each round) so that both see the
    same background load on a shared machine; unique prompts throughout; one warm-up each."""
    direct(prompts(1, 98)[0])
    server(prompts(1, 99)[0])
    d: list[float] = []
    s: list[float] = []
    for i, (a, b) in enumerate(zip(prompts(requests, 1), prompts(requests, 2), strict=True)):
        if i % 2:
            s.append(server(b))
            d.append(direct(a))
        else:
            d.append(direct(a))
            s.append(server(b))
    ratio = rate(s) / rate(d)
    print(
        f"[{name}] direct={rate(d):.2f} tok/s  server={rate(s):.2f} tok/s  overhead_ratio={ratio:.3f}",
        flush=True,
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument(
        "--models",
        default="synthetic,smollm2",
        help="GGUFs to measure: `synthetic` (Qwen2.5-0.5B-shaped Q8_0), `smollm2` (the real "
        "SmolLM2-135M-Instruct from hack/fetch-models.sh), comma-separated",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import llama_cpp

    for choice in args.models.split(","):
        gguf = ensure_model("gguf") if choice == "synthetic" else real_model(choice)
        vocab_probe = llama_cpp.Llama(str(gguf), n_ctx=64, verbose=False, vocab_only=True)
        eog = [
            t
            for t in range(vocab_probe.n_vocab())
            if llama_cpp.llama_vocab_is_eog(vocab_probe._model.vocab, t)
        ]
        bias = bias_for(vocab_probe.n_vocab(), eog)
        del vocab_probe
        print(
            f"model={gguf.name} size={gguf.stat().st_size / 1e6:.0f}MB threads={args.threads} "
            f"prompt~64 tokens output={OUTPUT_TOKENS} tokens requests={args.requests}",
            flush=True,
        )
        with (
            direct_gguf(gguf, args.threads, bias) as direct,
            through_server(gguf, args.threads, bias) as server,
        ):
            ratio = compare("gguf", direct, server, args.requests)
        print(f"overhead_ratio[{choice}]={ratio:.3f}")
    if not args.skip_onnx:
        onnx = ensure_model("onnx")
        with direct_onnx(onnx) as direct, through_server(onnx, args.threads, None) as server:
            onnx_ratio = compare("onnx", direct, server, args.requests)
        print(f"onnx_overhead_ratio={onnx_ratio:.3f}")
    return 0


def real_model(choice: str) -> Path:
    """A real model from hack/fetch-models.sh (cached, sha256-verified)."""
    if choice != "smollm2":
        raise SystemExit(f"unknown model {choice!r}; known: synthetic, smollm2")
    out = subprocess.run(
        ["bash", str(WORK.parent.parent / "hack" / "fetch-models.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1]) / "smollm2-135m-instruct-q4_1.gguf"


if __name__ == "__main__":
    sys.exit(main())
