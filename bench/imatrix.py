"""Importance matrices on the real SmolLM2-135M-Instruct: perplexity with and without an imatrix, beside file sizes.

GGUF (Q4_1, as shipped) → HF folder (modelport convert --to hf), the imatrix collected on that folder from
modelport's shipped calibration text (`modelport imatrix`), then HF → GGUF for each type with and without the
imatrix (`convert --quant T [--imatrix]`; the IQ1/IQ2 mixes are refused without one), and perplexity in llama.cpp
(`modelport perplexity`'s method) on a held-out text the imatrix never saw: the tour's held-out text and
modelport's own docs. With /work/vendor/build/bin/llama-imatrix built, also compares our imatrix with llama.cpp's
on the same GGUF and text (correlation and relative error of the per-column importance), and checks that
llama-quantize loads ours.

    PYTHONPATH=src python bench/imatrix.py [--types Q4_K_M,IQ4_XS,IQ3_M,IQ2_M] [--ctx 512] [--chunks 0]
        [--ppl-ctx 512] [--text-limit N] [--no-oracle]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # tests.gguf.llama_activations: llama.cpp's activations, the oracle
OUT = Path(__file__).resolve().parent / "out" / "imatrix"
LLAMA_BIN = Path("/work/vendor/build/bin")


def heldout_text() -> str:
    """Text the calibration never saw: the tour's held-out passage and modelport's own documentation."""
    parts = [(ROOT / "src/modelport/tour/heldout.txt").read_text("utf-8")]
    for name in ("README.md", "docs/DESIGN.md", "docs/training.md"):
        path = ROOT / name
        if path.is_file():
            parts.append(path.read_text("utf-8"))
    return "\n\n".join(parts)


def perplexity(path: Path, text: str, ctx: int) -> float:
    from modelport import runtime
    from modelport.runtime.evaluate import perplexity as ppl

    with runtime.load(path, engine="llama", ctx=ctx) as eng:
        return ppl(eng, text, ctx).perplexity


def compare_with_llama_imatrix(gguf: Path, text_path: Path, ours: Path, ctx: int, chunks: int) -> dict | None:
    """llama-imatrix on the same GGUF and text: correlation and relative error of sums/counts per tensor."""
    tool = LLAMA_BIN / "llama-imatrix"
    if not tool.is_file():
        return None
    from modelport.gguf import imatrix as imx

    theirs_path = OUT / "llama.imatrix.gguf"
    cmd = [str(tool), "-m", str(gguf), "-f", str(text_path), "-o", str(theirs_path), "-c", str(ctx), "--no-ppl",
           "-t", "2"]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    subprocess.run(cmd, check=True, capture_output=True)
    a, b = imx.read(ours), imx.read(theirs_path)
    common = sorted(set(a.entries) & set(b.entries))
    corr, rel = [], []
    for name in common:
        x, y = a.importance(name).reshape(-1).astype(np.float64), b.importance(name).reshape(-1).astype(np.float64)
        corr.append(float(np.corrcoef(x, y)[0, 1]))
        rel.append(float(np.linalg.norm(x - y) / np.linalg.norm(y)))
    return {"tensors_ours": len(a.entries), "tensors_llama": len(b.entries), "common": len(common),
            "min_correlation": min(corr), "median_correlation": float(np.median(corr)),
            "median_relative_error": float(np.median(rel)), "max_relative_error": max(rel)}


def compare_with_llama_cpp(ours: Path, theirs: dict) -> dict:
    from modelport.gguf import imatrix as imx

    a = imx.read(ours)
    common = sorted(set(a.entries) & set(theirs))
    corr, rel = [], []
    for name in common:
        x = a.importance(name).reshape(-1).astype(np.float64)
        sums, counts = theirs[name]
        y = (sums / np.maximum(counts, 1)[:, None]).reshape(-1)
        corr.append(float(np.corrcoef(x, y)[0, 1]))
        rel.append(float(np.linalg.norm(x - y) / np.linalg.norm(y)))
    counts = {a.entries[n].counts.tolist() == theirs[n][1].tolist() for n in common}
    return {"tensors_ours": len(a.entries), "tensors_llama_cpp": len(theirs), "common": len(common),
            "same_token_counts": counts == {True}, "min_correlation": min(corr),
            "median_correlation": float(np.median(corr)), "median_relative_error": float(np.median(rel)),
            "max_relative_error": max(rel)}


def llama_quantize_loads(f32: Path, imatrix: Path) -> bool | None:
    tool = LLAMA_BIN / "llama-quantize"
    if not tool.is_file():
        return None
    out = OUT / "llama-quantize-check.gguf"
    done = subprocess.run([str(tool), "--imatrix", str(imatrix), str(f32), str(out), "IQ4_XS", "2"],
                          capture_output=True, text=True)
    out.unlink(missing_ok=True)
    return done.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q4_K_M,IQ4_XS,IQ3_M,IQ2_M")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--ppl-ctx", type=int, default=512, help="perplexity window")
    ap.add_argument("--text-limit", type=int, default=0, help="score only the first N characters of the held-out text")
    ap.add_argument("--no-oracle", action="store_true", help="skip the comparison with llama.cpp's activations")
    args = ap.parse_args()

    from modelport.conversion import convert
    from modelport.gguf import imatrix as imx
    from modelport.gguf.mixes import FTYPES
    from modelport.opening import open as open_model
    from modelport.runtime import activations
    from modelport.samples import smollm2_gguf
    from tests.gguf.llama_activations import llama_cpp_imatrix

    OUT.mkdir(parents=True, exist_ok=True)
    hf = OUT / "smollm2-hf"
    if not (hf / "config.json").is_file():
        convert(smollm2_gguf(), hf, to="hf", force=True)
    f32 = OUT / "smollm2-f32.gguf"
    if not f32.is_file():
        convert(hf, f32, quant="F32")
    text = heldout_text()[:args.text_limit or None]
    imat = OUT / "smollm2.imatrix.gguf"
    if not imat.is_file():
        t0 = time.perf_counter()
        with open_model(hf) as source:
            got = activations.collect(source, activations.calibration_text(), ctx=args.ctx, chunks=args.chunks or None,
                                      dataset="modelport:calibration.txt", workdir=OUT)
        imx.write(got.imatrix, imat)
        print(f"imatrix: {len(got.imatrix.entries)} tensors, {got.chunks} chunks of {args.ctx} tokens "
              f"({got.tokens} tokens) in {time.perf_counter() - t0:.0f} s", flush=True)
    calib = OUT / "calibration.txt"
    calib.write_text(activations.calibration_text(), "utf-8")
    oracle = None if args.no_oracle else compare_with_llama_imatrix(f32, calib, imat, args.ctx, args.chunks)
    if oracle:
        print("against llama-imatrix:", json.dumps(oracle), flush=True)
    elif not args.no_oracle:       # no llama-imatrix build: llama.cpp's activations through llama-cpp-python's eval callback
        oracle = compare_with_llama_cpp(imat, llama_cpp_imatrix(f32, activations.calibration_text(), args.ctx,
                                                                args.chunks))
        print("against llama.cpp's activations (eval callback):", json.dumps(oracle), flush=True)
    loads = llama_quantize_loads(f32, imat)
    if loads is not None:
        print(f"llama-quantize --imatrix loads ours: {loads}", flush=True)

    rows = [{"type": "F32", "imatrix": False, "bytes": f32.stat().st_size, "perplexity": perplexity(f32, text, args.ppl_ctx)}]
    print(f"{'F32':<8} {'-':<8} {rows[0]['bytes'] / 1e6:8.1f} MB  ppl {rows[0]['perplexity']:.4f}", flush=True)
    for qtype in args.types.split(","):
        assert qtype in FTYPES, qtype
        for with_imatrix in (False, True):
            dst = OUT / f"smollm2-{qtype}{'-imat' if with_imatrix else ''}.gguf"
            t0 = time.perf_counter()
            try:
                convert(hf, dst, quant=qtype, imatrix=imat if with_imatrix else None, force=True)
            except Exception as exc:         # the refusal of an IQ1/IQ2 mix without an imatrix is a result too
                rows.append({"type": qtype, "imatrix": with_imatrix, "refused": str(exc)})
                print(f"{qtype:<8} {'imatrix' if with_imatrix else 'plain':<8} refused: {exc}", flush=True)
                continue
            seconds = time.perf_counter() - t0
            row = {"type": qtype, "imatrix": with_imatrix, "bytes": dst.stat().st_size, "quantize_s": round(seconds, 1),
                   "perplexity": perplexity(dst, text, args.ppl_ctx)}
            rows.append(row)
            print(f"{qtype:<8} {'imatrix' if with_imatrix else 'plain':<8} {row['bytes'] / 1e6:8.1f} MB  "
                  f"ppl {row['perplexity']:.4f}  ({seconds:.0f} s to write)", flush=True)
            if dst.name.endswith(".gguf"):
                dst.with_suffix(".Modelfile").unlink(missing_ok=True)
    (OUT / "results.json").write_text(json.dumps({"rows": rows, "llama_imatrix": oracle,
                                                  "llama_quantize_loads": loads}, indent=2))
    if "--keep" not in sys.argv:
        shutil.rmtree(OUT / "smollm2-hf.tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
