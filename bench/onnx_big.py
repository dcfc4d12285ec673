"""ONNX export past protobuf's 2 GB limit: a random Llama-shaped model with more than 2 GB of float32 weights
(a big vocabulary × hidden, one layer: few graph nodes, so tracing stays short) goes through
`modelport convert MODEL OUT --to onnx` (verified), and the result loads and runs in onnxruntime.

Each step runs in its own process, so peak memory (the route's own figure, and VmHWM for onnxruntime) belongs to it.

    python bench/onnx_big.py [--vocab 256000] [--hidden 1024] [--layers 1] [--work /tmp/onnx-big]

Writes bench/out/onnx_big.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def make_model(folder: Path, vocab: int, hidden: int, layers: int) -> int:
    """A random LlamaForCausalLM saved as safetensors, built on the meta device then filled tensor by tensor
    (no transformers init pass over 2 GB); returns its float32 size in bytes."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                                      max_position_embeddings=256, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)    # its buffers, computed on the CPU
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(folder)
    return sum(p.numel() * 4 for p in model.parameters())


LOAD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    import onnxruntime as ort
    path, layers, kv, hd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    t = time.perf_counter()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t
    feeds = {"input_ids": np.array([[5, 6, 7]], np.int64), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.arange(3)[None].astype(np.int64)}
    for i in range(layers):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((1, kv, 0, hd), np.float32)
    t = time.perf_counter()
    logits = sess.run(["logits"], feeds)[0]
    print(json.dumps({"load_s": load_s, "step_s": time.perf_counter() - t, "logits_shape": list(logits.shape),
                      "finite": bool(np.isfinite(logits).all()),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=256000)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/onnx-big"))
    args = ap.parse_args()
    src, dst = args.work / "hf", args.work / "onnx"
    t = time.perf_counter()
    size = make_model(src, args.vocab, args.hidden, args.layers) if not (src / "config.json").is_file() else None
    made_s = time.perf_counter() - t
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "modelport", "convert", str(src), str(dst), "--to", "onnx", "--json",
                          "--force", "--quiet"], env=ENV, capture_output=True, text=True)
    export_s = time.perf_counter() - t
    if run.returncode:
        sys.exit(f"convert failed ({run.returncode}): {run.stderr.strip()}")
    result = json.loads(run.stdout)
    manifest = json.loads((dst / "modelport_onnx.json").read_text())
    files = {p.name: p.stat().st_size for p in sorted(dst.iterdir()) if p.name.startswith("model.onnx")}
    load = subprocess.run([sys.executable, "-c", LOAD, str(dst / "model.onnx"), str(manifest["num_layers"]),
                           str(manifest["num_key_value_heads"]), str(manifest["head_dim"])],
                          env=ENV, capture_output=True, text=True)
    if load.returncode:
        sys.exit(f"onnxruntime failed: {load.stderr.strip()[-500:]}")
    report = {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers,
              "model_bytes": result["details"]["model_bytes"], "made_s": made_s if size else None,
              "export_and_verify_s": export_s, "export_peak_rss_bytes": result["details"]["peak_rss_bytes"],
              "verify": result["details"]["verify"], "files": files, "onnxruntime": json.loads(load.stdout)}
    OUT.mkdir(exist_ok=True)
    (OUT / "onnx_big.json").write_text(json.dumps(report, indent=2) + "\n")
    gb = 1e9
    print(f"model {report['model_bytes'] / gb:.2f} GB float32; export + verify {export_s:.0f} s, "
          f"peak RSS {report['export_peak_rss_bytes'] / gb:.2f} GB")
    print("files: " + ", ".join(f"{n} {s / gb:.3f} GB" for n, s in files.items()))
    ort_ = report["onnxruntime"]
    print(f"onnxruntime: load {ort_['load_s']:.1f} s, one step {ort_['step_s']:.2f} s, logits {ort_['logits_shape']}, "
          f"peak RSS {ort_['peak_rss_bytes'] / gb:.2f} GB")
    print(f"verify: {json.dumps(report['verify'])}")


if __name__ == "__main__":
    main()
