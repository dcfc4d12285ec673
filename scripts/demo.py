"""The demo `make demo` runs: real commands on models it makes (and on SmolLM2 when installed).

Each step prints the command, then runs it exactly as a user would type it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
PY = sys.executable


def step(title: str, *args, expect: int = 0) -> None:
    print(f"\n\033[1m## {title}\033[0m\n$ modelport {' '.join(str(a) for a in args)}", flush=True)
    code = subprocess.call([PY, "-m", "modelport", *map(str, args)])
    if code != expect:
        sys.exit(f"demo: that step exited {code}, expected {expect}")


def make_models() -> tuple[Path, Path]:
    """A tiny random Llama as a PyTorch .bin folder (config + weights), and a pickle that would run code."""
    import torch

    sys.path.insert(0, str(ROOT))   # the tests' model factory (tests/factory.py), shared with the demo and bench
    from tests.factory import random_model, save_model

    model = random_model("llama", vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = save_model(model, OUT / "tiny-llama", weights="bin")

    class Payload:  # what a malicious checkpoint does: run a shell command on load (here: harmless)
        def __reduce__(self):
            return (os.system, (f"touch {OUT / 'PWNED'}",))

    evil = OUT / "evil.bin"
    torch.save({"w": torch.ones(2), "x": Payload()}, evil)
    return folder, evil


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    folder, evil = make_models()
    st = OUT / "tiny-llama-safetensors"
    step("Look inside a Hugging Face folder (headers only)", "inspect", folder)
    step("PyTorch pickle -> safetensors folder, f16, in shards, verified", "convert", folder, st,
         "--dtype", "f16", "--shard-size", "1MB", "--verify")
    step("Compare the two, allowing for the f16 rounding", "diff", folder / "pytorch_model.bin", st, "--atol", "1e-3")
    step("A pickle that would run code on load: scan says so", "scan", evil, expect=1)
    step("... and every command refuses it", "inspect", evil, expect=2)
    assert not (OUT / "PWNED").exists(), "the payload ran"
    step("Memory it needs to run and to train", "estimate", folder, "--ctx", "2048")

    try:
        from modelport.samples import smollm2_gguf
        gguf = smollm2_gguf()
    except Exception as exc:  # noqa: BLE001 - the demo goes on without the sample model
        print(f"\n(SmolLM2 sample not installed: {exc}; skipping the GGUF steps)")
        return
    step("A real chat model in GGUF (SmolLM2-135M-Instruct, Q4_1)", "inspect", gguf)
    question = ("-p", "What is the capital of France? Answer in one sentence.", "--max-tokens", "24")
    step("Ask it something (llama.cpp engine, chat template rendered by modelport)", "run", gguf, *question)
    hf = OUT / "smollm2-hf"
    step("GGUF -> Hugging Face folder (dequantized, tokenizer rebuilt)", "convert", gguf, hf, "--to", "hf", "--dtype", "f32")
    step("The same question through transformers", "run", hf, *question)
    step("Same token ids into both engines: how far apart are they?", "compare", gguf, hf, "--tokens", "96")
    q4km = OUT / "smollm2-Q4_K_M.gguf"
    step("... and back to GGUF as Q4_K_M (Ollama Modelfile beside it; --verify bounds each tensor's error)", "convert", hf,
         q4km, "--quant", "Q4_K_M", "--verify")
    step("How close is Q4_K_M to the original?", "compare", gguf, q4km, "--tokens", "128")
    print(f"\nDemo outputs are in {OUT}")


if __name__ == "__main__":
    main()
