"""HF folder -> Q4_K_M GGUF: `modelport convert --quant Q4_K_M` vs llama.cpp's two-step route.

llama.cpp's route is its own `convert_hf_to_gguf.py` (F16 GGUF; run from the llama-cpp-python source package,
which must be unpacked first, never copied into this repo) followed by `llama_model_quantize` (what llama-quantize
runs), both with the same thread count as modelport. Wall time and peak RSS are measured in fresh processes;
the llama.cpp route's peak is the larger of its two steps. Also checks that both files hold the same tensor bytes
(the source weights are F16, so the F16 intermediate loses nothing).

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp-src
    tar xzf /tmp/lcpp-src/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpp-src
    .venv/bin/python bench/hf_to_gguf.py --llama-cpp /tmp/lcpp-src/llama_cpp_python-0.3.36/vendor/llama.cpp [--layers 4]

The reference converter needs `sentencepiece` (it imports it even for tokenizer.json-only models).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import OUT, llama_shapes, measure, measure_command  # noqa: E402

HIDDEN, MLP, HEADS, KV_HEADS = 2048, 5632, 32, 4   # TinyLlama-1.1B geometry


def make_folder(layers: int) -> Path:
    """A llama HF folder (F16 safetensors, config.json, a SentencePiece-style tokenizer.json), made once."""
    folder = OUT / f"hf_llama_{layers}l"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from safetensors.torch import save_file

    from tests.factory import config, save_tokenizer, train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer("spm", vocab_size=2000)
    save_tokenizer(tok, "spm", folder)
    vocab = tok.get_vocab_size()
    cfg = config("llama", hidden_size=HIDDEN, intermediate_size=MLP, num_attention_heads=HEADS,
                 num_key_value_heads=KV_HEADS, num_hidden_layers=layers, vocab_size=vocab,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, dtype="float16", architectures=["LlamaForCausalLM"])
    cfg.save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    shapes = llama_shapes(layers, HIDDEN, MLP, HIDDEN // HEADS * KV_HEADS, vocab)
    weights = {n: (torch.randn(s, generator=g) * (0.02 if len(s) > 1 else 1.0)).half() for n, s in shapes.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, type=Path, help="vendor/llama.cpp of the unpacked llama-cpp-python sdist")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    folder = make_folder(args.layers)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
    ours, f16, ref = OUT / "hf2gguf.modelport.Q4_K_M.gguf", OUT / "hf2gguf.llamacpp.F16.gguf", OUT / "hf2gguf.llamacpp.Q4_K_M.gguf"

    mp = measure(f"import os; os.environ['OMP_NUM_THREADS'] = '{args.threads}'\nimport sys; sys.path.insert(0, {str(ROOT / 'src')!r})\n"
                 "from modelport.conversion import convert", f"""
convert({str(folder)!r}, {str(ours)!r}, quant="Q4_K_M", force=True)
""", repeat=1)

    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)   # the script uses its own vendored gguf-py, as shipped
    step1 = measure_command([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(folder),
                              "--outfile", str(f16), "--outtype", "f16"], env=env)
    step2 = measure("import ctypes, llama_cpp", f"""
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
p.nthread = {args.threads}
assert llama_cpp.llama_model_quantize({str(f16).encode()!r}, {str(ref).encode()!r}, ctypes.byref(p)) == 0
""", repeat=1)
    lc = {"seconds": step1["seconds"] + step2["seconds"], "peak_mb": max(step1["peak_mb"], step2["peak_mb"])}

    from modelport.formats.gguf import open_gguf
    a, b = open_gguf(ours), open_gguf(ref)
    same = set(a.tensors) == set(b.tensors) and all(
        a.tensors[n].dtype == b.tensors[n].dtype and bytes(a.tensors[n].read_raw()) == bytes(b.tensors[n].read_raw())
        for n in a.tensors)
    a.close()
    b.close()

    print(f"\nHF -> Q4_K_M GGUF, llama {args.layers} layers (TinyLlama geometry), {size:.2f} GB F16 safetensors, "
          f"{args.threads} threads")
    print(f"{'':<44}{'seconds':>9}{'peak RSS MB':>13}")
    print(f"{'modelport convert --quant Q4_K_M':<44}{mp['seconds']:>9.2f}{mp['peak_mb']:>13.0f}")
    print(f"{'llama.cpp convert_hf_to_gguf.py (F16)':<44}{step1['seconds']:>9.2f}{step1['peak_mb']:>13.0f}")
    print(f"{'llama.cpp llama_model_quantize (Q4_K_M)':<44}{step2['seconds']:>9.2f}{step2['peak_mb']:>13.0f}")
    print(f"{'llama.cpp two steps':<44}{lc['seconds']:>9.2f}{lc['peak_mb']:>13.0f}")
    print(f"ratios modelport / llama.cpp: time {mp['seconds'] / lc['seconds']:.2f}x, peak RSS {mp['peak_mb'] / lc['peak_mb']:.2f}x")
    print(f"tensor bytes identical to the llama.cpp route: {same}")
    print(f"output sizes: modelport {ours.stat().st_size / 1e6:.1f} MB, llama.cpp {ref.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
