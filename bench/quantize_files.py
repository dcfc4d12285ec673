"""Whole files against llama-quantize: `modelport quantize --imatrix` and `llama-quantize --imatrix` on the same F32
GGUF with the same imatrix (made by `modelport imatrix`), for every type; `cmp` of the two files, time of each side.

The model is a random llama whose matrices really take the IQ types (hidden 512, FFN 1024: every row length a
multiple of 256, so no type falls back to IQ4_NL/Q5_0 as SmolLM2's 576 makes them), made with transformers
(tests/factory.py), converted to F32 by `modelport convert --quant F32`; with `--smollm2 T1,T2` the real SmolLM2
too (GGUF → HF → F32 GGUF). When the two files differ the script names the metadata keys that differ and counts
the tensors whose bytes differ (type and first differing byte), so a difference is never just "not equal".
Needs the llama.cpp build in /work/vendor/build/bin (LLAMA_BIN); not a test: CI has no llama-quantize.

    PYTHONPATH=src python bench/quantize_files.py [--types IQ2_M,Q4_K_M] [--layers 8] [--threads 2]
        [--smollm2 Q4_K_M,IQ4_XS,IQ3_M,IQ2_M] [--json out.json]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # tests.factory
OUT = Path(__file__).resolve().parent / "out" / "quantize_files"
LLAMA_BIN = Path(os.environ.get("LLAMA_BIN", "/work/vendor/build/bin"))
TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL",
         "IQ4_XS", "TQ1_0", "TQ2_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q4_0", "Q8_0"]


def modelport(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "modelport", *args], env=env, capture_output=True, text=True)


def checked(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def make_random(layers: int) -> Path:
    """The random llama (HF folder) and its F32 GGUF, made once."""
    from tests.factory import make_model

    hf = OUT / f"llama512x{layers}-hf"
    if not (hf / "config.json").is_file():
        make_model(hf, "llama", "llama3", hidden=512, layers=layers, heads=8, kv_heads=4, ffn=1024, init=0.05)
    f32 = OUT / f"llama512x{layers}-f32.gguf"
    if not f32.is_file():
        checked(modelport("convert", str(hf), str(f32), "--quant", "F32", "-q", "--force"), "convert to F32")
    return f32


def make_smollm2() -> Path:
    from modelport.samples import smollm2_gguf

    hf, f32 = OUT / "smollm2-hf", OUT / "smollm2-f32.gguf"
    if not (hf / "config.json").is_file():
        checked(modelport("convert", str(smollm2_gguf()), str(hf), "--to", "hf", "-q", "--force"), "SmolLM2 to HF")
    if not f32.is_file():
        checked(modelport("convert", str(hf), str(f32), "--quant", "F32", "-q", "--force"), "SmolLM2 to F32")
    return f32


def make_imatrix(f32: Path, ctx: int, chunks: int) -> Path:
    out = f32.with_suffix(".imatrix.gguf")
    if not out.is_file():
        checked(modelport("imatrix", str(f32), "-o", str(out), "-c", str(ctx), "--chunks", str(chunks), "-q"),
                "modelport imatrix")
    return out


def differences(a: Path, b: Path) -> dict:
    """What differs between two GGUF files: metadata keys (value or presence), tensor order, types, bytes."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))

    def kv(r):
        out = {}
        for name, f in r.fields.items():
            if name.startswith("GGUF."):
                continue
            out[name] = f.contents() if hasattr(f, "contents") else [bytes(p).hex() for p in f.parts]
        return out

    ka, kb = kv(ra), kv(rb)
    keys = sorted(k for k in set(ka) | set(kb) if ka.get(k, "<absent>") != kb.get(k, "<absent>"))
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    tensors = []
    for name in ta:
        x, y = ta[name], tb.get(name)
        if y is None:
            tensors.append({"tensor": name, "problem": "missing in llama-quantize's file"})
        elif x.tensor_type != y.tensor_type:
            tensors.append({"tensor": name, "problem": f"type {x.tensor_type.name} vs {y.tensor_type.name}"})
        else:
            bx, by = bytes(x.data.tobytes()), bytes(y.data.tobytes())
            if bx != by:
                first = next(i for i in range(min(len(bx), len(by))) if bx[i] != by[i]) if len(bx) == len(by) else -1
                tensors.append({"tensor": name, "type": x.tensor_type.name, "first_byte": first,
                                "bytes_differing": sum(p != q for p, q in zip(bx, by))})
    x, y = a.read_bytes(), b.read_bytes()
    first = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
    return {"first_byte": first, "sizes": [len(x), len(y)], "same_key_order": list(ka) == list(kb),
            "keys": {k: [str(ka.get(k, "<absent>"))[:80], str(kb.get(k, "<absent>"))[:80]] for k in keys},
            "same_tensor_order": [t.name for t in ra.tensors] == [t.name for t in rb.tensors],
            "tensors_equal": sum(1 for n in ta if n in tb and ta[n].data.tobytes() == tb[n].data.tobytes()),
            "tensors": len(ta), "tensors_differing": tensors}


def tensor_types(path: Path) -> str:
    from collections import Counter

    from gguf import GGUFReader

    counts = Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors)
    return " ".join(f"{n}x{k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def compare(f32: Path, imat: Path, qtype: str, threads: int, tag: str) -> dict:
    ours, theirs = OUT / f"{tag}-{qtype}.modelport.gguf", OUT / f"{tag}-{qtype}.llama.gguf"
    t0 = time.perf_counter()
    done = modelport("quantize", str(f32), str(ours), "--type", qtype, "--imatrix", str(imat), "-q", "--force")
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = subprocess.run([str(LLAMA_BIN / "llama-quantize"), "--imatrix", str(imat), str(f32), str(theirs), qtype,
                          str(threads)], capture_output=True, text=True)
    theirs_s = time.perf_counter() - t0
    row = {"model": tag, "type": qtype, "modelport_s": round(ours_s, 2), "llama_quantize_s": round(theirs_s, 2)}
    if done.returncode or ref.returncode:
        row.update(modelport_rc=done.returncode, llama_rc=ref.returncode,
                   modelport_err=done.stderr.strip()[-300:], llama_err=ref.stderr.strip()[-300:])
        return row
    row["bytes"] = ours.stat().st_size
    row["identical"] = filecmp.cmp(ours, theirs, shallow=False)
    row["types"] = tensor_types(theirs)
    ours.with_suffix(".Modelfile").unlink(missing_ok=True)
    if not row["identical"]:          # kept for a closer look
        row["diff"] = differences(ours, theirs)
        return row
    for p in (ours, theirs):
        p.unlink(missing_ok=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="llama-quantize's threads (modelport uses every core)")
    ap.add_argument("--ctx", type=int, default=128, help="imatrix chunk size")
    ap.add_argument("--chunks", type=int, default=8, help="imatrix chunks")
    ap.add_argument("--smollm2", default="", help="types to compare on SmolLM2 too (comma-separated)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not (LLAMA_BIN / "llama-quantize").is_file():
        raise SystemExit(f"no llama-quantize in {LLAMA_BIN} (set LLAMA_BIN)")
    OUT.mkdir(parents=True, exist_ok=True)
    jobs = []
    f32 = make_random(args.layers)
    imat = make_imatrix(f32, args.ctx, args.chunks)
    jobs += [(f32, imat, t, f"llama512x{args.layers}") for t in args.types.split(",") if t]
    if args.smollm2:
        s32 = make_smollm2()
        simat = make_imatrix(s32, args.ctx, args.chunks)
        jobs += [(s32, simat, t, "smollm2") for t in args.smollm2.split(",")]
    rows = []
    print(f"{'model':<12} {'type':<8} {'MB':>7} {'cmp':<10} {'modelport s':>11} {'llama s':>8}  tensor types")
    for f, m, t, tag in jobs:
        row = compare(f, m, t, args.threads, tag)
        rows.append(row)
        if "identical" not in row:
            print(f"{tag:<12} {t:<8} failed: {json.dumps(row)}", flush=True)
            continue
        verdict = "identical" if row["identical"] else "DIFFERENT"
        print(f"{tag:<12} {t:<8} {row['bytes'] / 1e6:7.2f} {verdict:<10} {row['modelport_s']:11.1f} "
              f"{row['llama_quantize_s']:8.1f}  {row['types']}", flush=True)
        if not row["identical"]:
            print("    " + json.dumps(row["diff"])[:2000], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
