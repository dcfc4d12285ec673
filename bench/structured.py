"""Structured output cost: the llguidance token mask on SmolLM2-135M-Instruct Q4_1 (49,152 tokens), llama.cpp.

Measures, in one process: building the engine's llguidance tokenizer (once per engine), making a constraint
(compiling the schema, per answer), the time of `Constraint.apply` per token (compute the mask + set -inf;
median, p95, max) and `accept` per token, and generation tokens/s with the mask against the same number of
tokens without it (end-of-turn ignored), same prompt, greedy and temperature 1. CPU seconds are given beside
wall seconds: other load on the machine stretches wall time, not the CPU time the work itself takes.

    .venv/bin/python bench/structured.py [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport import runtime  # noqa: E402
from modelport.runtime import Sampling  # noqa: E402
from modelport.runtime.structured import check_json, json_constraint, tokenizer_for  # noqa: E402
from modelport.samples import smollm2_gguf  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "color": {"enum": ["red", "green", "blue"]},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}},
    "required": ["name", "age", "color", "tags"], "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Describe a person: their name, age, favourite colour and a few tags."}]


class Timed:
    """A constraint that times its own apply/accept calls."""

    def __init__(self, inner):
        self.inner, self.apply_s, self.accept_s = inner, [], []

    def apply(self, logits):
        t = time.perf_counter()
        self.inner.apply(logits)
        self.apply_s.append(time.perf_counter() - t)

    def accept(self, token):
        t = time.perf_counter()
        self.inner.accept(token)
        self.accept_s.append(time.perf_counter() - t)

    def finished(self):
        return self.inner.finished()


def rate(engine, ids, n, sampling, constraint=None) -> tuple[float | None, list[int]]:
    """Generation tokens/s from the first token to the last (None under two tokens: '{}' is one token)."""
    stamps, tokens = [], []
    for token in engine.generate(ids, max_tokens=n, sampling=sampling, ignore_eos=constraint is None, constraint=constraint):
        stamps.append(time.perf_counter())
        tokens.append(token)
    return ((len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None), tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict = {}
    with runtime.load(smollm2_gguf(), ctx=512) as eng:
        ids = eng.chat_ids(PROMPT)
        wall, cpu = time.perf_counter(), time.process_time()
        tokenizer_for(eng)
        out["tokenizer_build_s"] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        made = []
        for _ in range(5):
            t = time.perf_counter()
            json_constraint(eng, SCHEMA)
            made.append(time.perf_counter() - t)
        out["constraint_ms_median"] = statistics.median(made) * 1e3
        out["n_vocab"] = eng.n_vocab
        runs = []
        for schema_name, schema in (("schema", SCHEMA), ("json_object", None)):
            for temperature in (0.0, 1.0):
                for seed in range(args.repeat):
                    sampling = Sampling(temperature=temperature, seed=seed)
                    timed = Timed(json_constraint(eng, schema))
                    cpu = time.process_time()
                    with_mask, tokens = rate(eng, ids, 200, sampling, timed)
                    cpu_with = time.process_time() - cpu
                    text = eng.detokenize(tokens)
                    cpu = time.process_time()
                    without, _ = rate(eng, ids, max(len(tokens), 2), sampling)
                    cpu_without = time.process_time() - cpu
                    runs.append({"mode": schema_name, "temperature": temperature, "seed": seed, "tokens": len(tokens), "token_ids": tokens,
                                 "valid": check_json(text, schema)[1] is None,
                                 "tok_s_with_mask": with_mask, "tok_s_without": without,
                                 "cpu_s_with_mask": cpu_with, "cpu_s_without": cpu_without,
                                 "apply_ms": [s * 1e3 for s in timed.apply_s], "accept_ms": [s * 1e3 for s in timed.accept_s]})
                    if temperature == 0:
                        break     # greedy: one run is every run
        # The mask alone, replayed over the tokens generated above (no model): CPU time per token, which other
        # load on the machine stretches far less than wall time.
        replay = []
        for r in runs:
            for _ in range(5):
                constraint = json_constraint(eng, SCHEMA if r["mode"] == "schema" else None)
                logits = np.zeros(eng.n_vocab, dtype=np.float32)
                for token in r["token_ids"]:
                    cpu = time.thread_time()
                    constraint.apply(logits)
                    replay.append((time.thread_time() - cpu) * 1e3)
                    constraint.accept(token)
        out["apply_cpu_ms_replayed"] = {"median": float(np.median(replay)), "p95": float(np.percentile(replay, 95)),
                                        "n": len(replay)}
        applies = np.concatenate([r["apply_ms"] for r in runs])
        accepts = np.concatenate([r["accept_ms"] for r in runs])
        out["apply_ms"] = {"median": float(np.median(applies)), "p95": float(np.percentile(applies, 95)),
                           "max": float(applies.max()), "n": int(applies.size)}
        out["accept_ms_median"] = float(np.median(accepts))
        out["runs"] = [{k: v for k, v in r.items() if not k.endswith("_ms") and k != "token_ids"} for r in runs]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"vocabulary {out['n_vocab']}: llguidance tokenizer built in {out['tokenizer_build_s']['wall']:.2f} s "
          f"({out['tokenizer_build_s']['cpu']:.2f} s CPU), once per engine; a constraint (schema compiled) "
          f"{out['constraint_ms_median']:.1f} ms")
    a = out["apply_ms"]
    print(f"mask per token (apply): median {a['median']:.2f} ms, p95 {a['p95']:.2f} ms, max {a['max']:.1f} ms "
          f"over {a['n']} tokens; accept median {out['accept_ms_median']:.3f} ms")
    r = out["apply_cpu_ms_replayed"]
    print(f"mask per token replayed without the model (CPU time): median {r['median']:.2f} ms, p95 {r['p95']:.2f} ms "
          f"over {r['n']} tokens")
    print(f"{'mode':12} {'temp':>4} {'seed':>4} {'tokens':>6} {'valid':>5} {'tok/s mask':>10} {'tok/s free':>10} "
          f"{'CPU s mask':>10} {'CPU s free':>10}")
    for r in out["runs"]:
        print(f"{r['mode']:12} {r['temperature']:>4} {r['seed']:>4} {r['tokens']:>6} {r['valid']!s:>5} "
              f"{fmt(r['tok_s_with_mask']):>10} {fmt(r['tok_s_without']):>10} {r['cpu_s_with_mask']:>10.2f} {r['cpu_s_without']:>10.2f}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
