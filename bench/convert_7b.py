"""A 7B-shaped llama (Llama-2-7B geometry: hidden 4096, MLP 11008, 32 heads, vocab 32000; random bf16 weights in
safetensors shards) to GGUF Q4_K_M: modelport in one pass vs llama.cpp's two steps, peak RSS and time in one run.

modelport: `modelport convert FOLDER out.gguf --quant Q4_K_M` in a fresh process (peak RSS = its VmHWM).
llama.cpp: its own `convert_hf_to_gguf.py` (bf16 → F16 GGUF) then `llama-quantize` (the built binary when
/work/vendor/build/bin has it, else llama-cpp-python's `llama_model_quantize`, the same C function); its peak is
the larger of its two steps. Both use the same thread count. The weights are bf16, so llama.cpp's F16 step rounds
them and the two Q4_K_M files differ slightly: the bench reports the size of each, not byte equality.

    .venv/bin/python bench/convert_7b.py                 # 4 layers (~1 GB of bf16): what the disk here allows
    .venv/bin/python bench/convert_7b.py --layers 32     # the full 7B shape (13.5 GB bf16, ~34 GB of outputs)

Everything is written under bench/out/7b and deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import OUT, llama_shapes, measure_command  # noqa: E402

HIDDEN, MLP, HEADS, KV_HEADS, VOCAB = 4096, 11008, 32, 32, 32000   # Llama-2-7B
VENDOR = Path("/work/vendor/llama_cpp_python-0.3.36/vendor/llama.cpp")
QUANTIZE_BIN = Path("/work/vendor/build/bin/llama-quantize")


def random_bf16(shape: tuple[int, ...], seed: int):
    """Random bf16 weights of magnitude 2^-7..2^-6 with random sign and mantissa, made from random bits (a normal
    draw of 7 billion values would take minutes here). 1-D tensors (norms) are about 1."""
    import ml_dtypes
    import numpy as np

    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    exponent = 0x3F80 if len(shape) == 1 else 0x3C00
    return ((bits & 0x807F) | exponent).view(ml_dtypes.bfloat16)


def make_folder(layers: int) -> Path:
    """The HF folder: bf16 safetensors shards of at most 5 GB written tensor by tensor (modelport.save streams lazy
    tensors), config.json and a SentencePiece-style tokenizer padded to the 32000 rows."""
    import modelport
    from modelport.core import dtypes
    from modelport.core.tensor import TensorRef
    from tests.factory import config, save_tokenizer, train_tokenizer

    folder = OUT / "7b" / f"hf_{layers}l"
    if (folder / "config.json").exists():
        return folder
    shapes = llama_shapes(layers, HIDDEN, MLP, HIDDEN // HEADS * KV_HEADS, VOCAB)
    refs = [TensorRef(name, dtypes.BF16, shape, loader=lambda s=shape, i=i: random_bf16(s, i))
            for i, (name, shape) in enumerate(shapes.items())]
    modelport.save(refs, folder, shard_size="5GB", metadata={"format": "pt"})
    tok = train_tokenizer("spm", vocab_size=2000)
    save_tokenizer(tok, "spm", folder)
    cfg = config("llama", hidden_size=HIDDEN, intermediate_size=MLP, num_attention_heads=HEADS,
                 num_key_value_heads=KV_HEADS, num_hidden_layers=layers, vocab_size=VOCAB,
                 max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    cfg.save_pretrained(folder)
    return folder


def run_measured(cmd: list[str], env: dict | None = None, name: str = "") -> dict:
    """`measure_command`, printed as it ends."""
    res = measure_command(cmd, env, quiet=True)
    print(f"  {name or cmd[0]}: {res['seconds']:.1f} s, peak RSS {res['peak_mb']:.0f} MB", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", action="store_true", help="keep the model and the outputs")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()

    folder = make_folder(args.layers)
    work = folder.parent
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    largest = max(n * h for n, h in [(VOCAB, HIDDEN), (MLP, HIDDEN)])   # elements of the largest tensor
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT / "src")}
    ours = work / "modelport.Q4_K_M.gguf"
    try:
        rows = {}
        rows["modelport convert --quant Q4_K_M"] = run_measured(
            [sys.executable, "-m", "modelport", "convert", str(folder), str(ours), "--quant", "Q4_K_M", "-q", "--force"],
            env, "modelport convert")
        if not args.skip_llama_cpp:
            f16, ref = work / "llamacpp.F16.gguf", work / "llamacpp.Q4_K_M.gguf"
            lc_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "NO_LOCAL_GGUF")}
            step1 = run_measured([sys.executable, str(VENDOR / "convert_hf_to_gguf.py"), str(folder), "--outfile",
                                  str(f16), "--outtype", "f16"], lc_env, "convert_hf_to_gguf.py")
            if QUANTIZE_BIN.exists():
                quantizer = "llama-quantize"
                step2 = run_measured([str(QUANTIZE_BIN), str(f16), str(ref), "Q4_K_M", str(args.threads)], lc_env,
                                     quantizer)
            else:
                quantizer = "llama_model_quantize"
                code = ("import ctypes, llama_cpp\np = llama_cpp.llama_model_quantize_default_params()\n"
                        f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M\np.nthread = {args.threads}\n"
                        f"assert llama_cpp.llama_model_quantize({str(f16).encode()!r}, {str(ref).encode()!r}, "
                        "ctypes.byref(p)) == 0\n")
                step2 = run_measured([sys.executable, "-c", code], lc_env, quantizer)
            f16_bytes = f16.stat().st_size
            f16.unlink()
            rows["llama.cpp convert_hf_to_gguf.py (F16)"] = step1
            rows[f"llama.cpp {quantizer} (Q4_K_M)"] = step2
            rows["llama.cpp two steps"] = {"seconds": step1["seconds"] + step2["seconds"],
                                           "peak_mb": max(step1["peak_mb"], step2["peak_mb"])}

        print(f"\nHF bf16 → GGUF Q4_K_M, Llama-2-7B geometry with {args.layers} layers: {size / 1e9:.2f} GB of bf16 "
              f"safetensors, {args.threads} threads; largest tensor {largest * 2 / 1e6:.0f} MB bf16, "
              f"{largest * 4 / 1e6:.0f} MB as float32")
        print(f"{'':<44}{'seconds':>9}{'peak RSS MB':>13}")
        for name, r in rows.items():
            print(f"{name:<44}{r['seconds']:>9.1f}{r['peak_mb']:>13.0f}")
        mp = rows["modelport convert --quant Q4_K_M"]
        if "llama.cpp two steps" in rows:
            lc = rows["llama.cpp two steps"]
            print(f"ratios modelport / llama.cpp: time {mp['seconds'] / lc['seconds']:.2f}x, "
                  f"peak RSS {mp['peak_mb'] / lc['peak_mb']:.2f}x")
            print(f"output sizes: modelport {ours.stat().st_size / 1e6:.0f} MB, llama.cpp {ref.stat().st_size / 1e6:.0f} MB "
                  f"(F16 intermediate {f16_bytes / 1e6:.0f} MB)")
        print(f"modelport peak RSS = {mp['peak_mb'] / (largest * 4 / 1e6):.2f} x the largest tensor in float32")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
