"""Gateway benchmark: what slm-gateway costs, and what prefix-aware routing buys.

One run, two parts, on the real SmolLM2-135M-Instruct (tests' `smollm2_gguf`, from
hack/fetch-models.sh) served by `slm-runtime serve` processes (continuous batching, 4 slots):

1. **Overhead.** Streamed chat completions straight to one pod vs through a gateway in front of
   that same pod, closed-loop at c=1 and c=32, unique prompts, a fixed number of output tokens
   (end-of-generation tokens biased down). Throughput ratio = gateway tokens/s / direct tokens/s;
   added TTFT = gateway TTFT p50 - direct TTFT p50. The two paths alternate in rounds so machine
   noise hits both.
2. **Routing.** Two pods of the model; `--conversations` multi-turn chats run at once, each with
   the same long system prompt (~400 tokens) and a history that grows every turn (the user's
   question and the model's answer). Round-robin (what a Service gives: the client alternates
   between the two pods) vs the gateway (prefix affinity with bounded load). Every slot is first
   primed with the system prompt, so both phases start with it cached. Reported: TTFT p50/p95,
   tokens/s, the runtime's prefix-cache hit rate (`vllm:prefix_cache_*`) for each, and how often
   the gateway's pick was a prefix hit.

The last three lines are `overhead_throughput_ratio=…`, `added_ttft_p50_ms=…` (the c=32 level)
and `prefix_ttft_p50_ratio=…` (gateway / round-robin). Times are wall-clock on a shared machine:
run it on a quiet one.

    .venv/bin/python benchmarks/gateway.py                     # both parts, default sizes
    .venv/bin/python benchmarks/gateway.py --only routing --turns 3 --tokens 16
    .venv/bin/python benchmarks/gateway.py --quick             # a smoke run

On a 2-core machine shared with other builds (load average ~15) the overhead part took about
30 minutes and the smaller routing run above about 7; on a quiet machine both are far shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMOLLM2 = "smollm2-135m-instruct-q4_1.gguf"
MODEL = "smollm2"
# SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>: biased down so every answer has max_tokens tokens.
NO_EOS = {"0": -100, "1": -100, "2": -100}
SYSTEM = (
    "You are the support assistant of a company that sells garden tools. Answer politely and "
    "briefly, in plain English, without lists. Mention the warranty only when asked. The company "
    "ships to every country in Europe, takes returns within 30 days, and repairs tools for free "
    "during the first two years. "
) * 5  # about 400 tokens


def model_path() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "fetch-models.sh")], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / SMOLLM2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    url: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def wait_ready(url: str, popen: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {popen.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def start_runtime(model: Path, work: Path, threads: int, parallel: int) -> Proc:
    port = free_port()
    cfg = work / f"runtime-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": {"name": MODEL, "path": str(model)},
                "runtime": {
                    "threads": threads,
                    "parallel": parallel,
                    "contextLength": 4096,
                    "batchSize": 512,
                },
                "limits": {"queueLength": 256},
            }
        )
    )
    popen = subprocess.Popen(
        [
            str(BIN / "slm-runtime"),
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, popen)
    return Proc(url, popen)


def start_gateway(endpoints: list[str], work: Path) -> Proc:
    port = free_port()
    cfg = work / f"gateway-{port}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "deployments": [{"name": MODEL, "model": MODEL, "endpoints": endpoints, "capacity": 4}],
                "audit": {"stdout": False, "file": str(work / f"audit-{port}.jsonl")},
                "server": {"host": "127.0.0.1", "port": port},
            }
        )
    )
    popen = subprocess.Popen([str(BIN / "slm-gateway"), "--log-level", "WARNING", "--config", str(cfg)])
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, popen)
    return Proc(url, popen)


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0
    texts: list[str] = field(default_factory=list)

    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def p(self, q: float) -> float:
        s = sorted(self.ttft)
        return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def stream_chat(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, int, str]:
    """TTFT (first content token) in seconds, tokens streamed, and the text."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    started = time.perf_counter()
    ttft, tokens, parts = None, 0, []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            if delta and delta[0]["delta"].get("content"):
                if ttft is None:
                    ttft = time.perf_counter() - started
                tokens += 1
                parts.append(delta[0]["delta"]["content"])
    return (ttft if ttft is not None else float("nan")), tokens, "".join(parts)


async def closed_loop(url: str, concurrency: int, requests: int, max_tokens: int, seed: int) -> Result:
    rng = random.Random(seed)
    res = Result()
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            for _ in todo:
                nonce = " ".join(str(rng.randint(0, 10**6)) for _ in range(6))
                msgs = [{"role": "user", "content": f"{nonce}. Write a sentence about the sea."}]
                ttft, n, _ = await stream_chat(client, url, msgs, max_tokens)
                res.ttft.append(ttft)
                res.tokens += n

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.wall = time.perf_counter() - started
    return res


async def conversations(urls: list[str], n: int, turns: int, max_tokens: int, seed: int) -> Result:
    """`n` chats at once; each turn goes to the next URL of `urls` (round-robin when there are two)."""
    rng = random.Random(seed)
    res = Result()
    pick = itertools.cycle(urls)
    async with httpx.AsyncClient(timeout=600) as client:

        async def chat(i: int) -> None:
            messages = [{"role": "system", "content": SYSTEM}]
            for t in range(turns):
                question = f"Customer {i}-{rng.randint(0, 10**6)}, question {t}: " + " ".join(
                    rng.choice(["rake", "spade", "hoe", "shears", "hose", "mower", "price", "delivery"])
                    for _ in range(60)
                )
                messages.append({"role": "user", "content": question})
                ttft, tokens, text = await stream_chat(client, next(pick), messages, max_tokens)
                messages.append({"role": "assistant", "content": text})
                res.ttft.append(ttft)
                res.tokens += tokens

        started = time.perf_counter()
        await asyncio.gather(*(chat(i) for i in range(n)))
        res.wall = time.perf_counter() - started
    return res


async def prime_slots(urls: list[str], slots: int) -> None:
    """Fill every slot of every pod with the shared system prompt, as the round-robin phase leaves
    them for the gateway phase: both phases then start with it cached (else round-robin's first
    turns pay for it and the gateway's do not)."""
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(
            *(
                stream_chat(
                    client,
                    url,
                    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Hi {i}"}],
                    1,
                )
                for url in urls
                for i in range(slots)
            )
        )


def affinity_hits(gateway_url: str) -> tuple[float, float]:
    hit = miss = 0.0
    for line in httpx.get(f"{gateway_url}/metrics").text.splitlines():
        if line.startswith("slm_gateway_prefix_affinity_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if 'result="hit"' in line:
                hit += value
            else:
                miss += value
    return hit, miss


def prefix_cache(pods: list[str]) -> tuple[float, float]:
    """(prompt tokens queried, served from cached KV) summed over `pods` (the runtime's counters)."""
    queried = hit = 0.0
    for pod in pods:
        for line in httpx.get(f"{pod}/metrics").text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total{"):
                queried += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_hits_total{"):
                hit += float(line.rsplit(" ", 1)[1])
    return queried, hit


def run_overhead(args: argparse.Namespace, pod: str, gateway: str) -> dict[int, tuple[Result, Result]]:
    """Direct vs through the gateway at c=1 and c=32; the two paths alternate round by round."""
    print(f"# overhead: {args.tokens} tokens/request, unique prompts, {args.rounds} rounds each", flush=True)
    overhead: dict[int, tuple[Result, Result]] = {}
    for c in (1, 32):
        n = max(8, c * 2) if not args.quick else max(4, c)
        direct, through = Result(), Result()
        for r in range(args.rounds):
            pair = ((pod, direct), (gateway, through))
            for url, acc in pair if r % 2 == 0 else reversed(pair):
                got = asyncio.run(closed_loop(url, c, n, args.tokens, seed=c * 100 + r))
                acc.ttft += got.ttft
                acc.tokens += got.tokens
                acc.wall += got.wall
        overhead[c] = (direct, through)
        print(
            f"c={c:<3} direct  {direct.tps():7.1f} tok/s  ttft p50 {direct.p(0.5) * 1000:7.1f} ms | "
            f"gateway {through.tps():7.1f} tok/s  ttft p50 {through.p(0.5) * 1000:7.1f} ms | "
            f"ratio {through.tps() / direct.tps():.3f}  "
            f"added ttft p50 {(through.p(0.5) - direct.p(0.5)) * 1000:+.1f} ms",
            flush=True,
        )
    return overhead


def run_routing(args: argparse.Namespace, pods: list[str], gateway: str) -> tuple[Result, Result]:
    """Round-robin over the pods vs the gateway, on fresh conversations of the same shape."""
    print(
        f"# routing: {args.conversations} conversations x {args.turns} turns, "
        f"~400-token system prompt, {len(pods)} pods",
        flush=True,
    )
    asyncio.run(prime_slots(pods, 4))
    cache0 = prefix_cache(pods)
    rr = asyncio.run(conversations(pods, args.conversations, args.turns, args.tokens, seed=1))
    cache1 = prefix_cache(pods)
    gw = asyncio.run(conversations([gateway], args.conversations, args.turns, args.tokens, seed=2))
    cache2 = prefix_cache(pods)
    hit, miss = affinity_hits(gateway)
    for name, res, (before, after) in (
        ("round-robin", rr, (cache0, cache1)),
        ("gateway", gw, (cache1, cache2)),
    ):
        queried, served = after[0] - before[0], after[1] - before[1]
        rate = served / max(1.0, queried)
        print(
            f"{name:<12} ttft p50 {res.p(0.5) * 1000:7.1f} ms  "
            f"p95 {res.p(0.95) * 1000:7.1f} ms  {res.tps():6.1f} tok/s  "
            f"runtime prefix cache {served:.0f}/{queried:.0f} prompt tokens ({rate:.0%})",
            flush=True,
        )
    print(f"gateway prefix-affinity picks: {hit:.0f} hit, {miss:.0f} miss ({hit / max(1.0, hit + miss):.0%})")
    return rr, gw


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1, help="threads per runtime pod")
    p.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    p.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway rounds per level")
    p.add_argument("--conversations", type=int, default=8)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--only", choices=["overhead", "routing"], help="run one part (its lines only)")
    args = p.parse_args()
    if args.quick:
        args.tokens, args.rounds, args.conversations, args.turns = 8, 1, 4, 2
    model = model_path()
    work = Path(tempfile.mkdtemp(prefix="slm-gw-bench-"))
    procs: list[Proc] = []
    try:
        pod_a = start_runtime(model, work, args.threads, 4)
        pod_b = start_runtime(model, work, args.threads, 4)
        procs += [pod_a, pod_b]
        gw_one = start_gateway([pod_a.url], work)
        gw_two = start_gateway([pod_a.url, pod_b.url], work)
        procs += [gw_one, gw_two]
        asyncio.run(closed_loop(pod_a.url, 4, 8, 4, seed=0))  # warm up
        overhead = run_overhead(args, pod_a.url, gw_one.url) if args.only != "routing" else {}
        routing = run_routing(args, [pod_a.url, pod_b.url], gw_two.url) if args.only != "overhead" else None
        if overhead:
            (direct1, through1), (direct32, through32) = overhead[1], overhead[32]
            print(f"overhead_throughput_ratio_c1={through1.tps() / direct1.tps():.3f}")
            print(f"added_ttft_p50_ms_c1={(through1.p(0.5) - direct1.p(0.5)) * 1000:.2f}")
            print(f"overhead_throughput_ratio={through32.tps() / direct32.tps():.3f}")
            print(f"added_ttft_p50_ms={(through32.p(0.5) - direct32.p(0.5)) * 1000:.2f}")
        if routing is not None:
            rr, gw = routing
            print(f"prefix_ttft_p50_ratio={gw.p(0.5) / rr.p(0.5):.3f}")
    finally:
        for proc in reversed(procs):
            proc.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # a SIGTERM (e.g. from `timeout`) unwinds through main's `finally`: no runtime is left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
