"""Quantization kernel throughput: modelport's NumPy kernels vs ggml's C quantizer (llama-cpp-python's libggml-base).

Both sides get the same threads: the rows are cut into the same chunks and quantized on a thread pool of --threads
(ctypes releases the GIL while ggml runs). ggml's side is `ggml_quantize_chunk`, the function llama-quantize calls,
without and (rows marked +imatrix) with the same importance weights (random, one per column, as an imatrix gives).
Prints M weights/s for each (best of --repeat runs, the two sides taking turns) and modelport/ggml as a ratio; also
checks that the bytes agree. `--clock cpu` times by this process's CPU time (all threads together) instead of wall
time: throughput per core, steadier on a busy machine. `--threads 1 --clock cpu` is the single-core comparison.

    .venv/bin/python bench/quantize.py [--rows 1024] [--cols 4096] [--threads N] [--types Q4_K,IQ4_XS]
                                       [--imatrix both|no|only] [--clock cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType

from modelport.core.dtypes import DTYPES
from modelport.gguf import quants

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", *quants.GRID_KERNELS]


def _ggml():
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(sorted(libdir.glob("libggml-base.*"))[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_quantize(lib, x: np.ndarray, name: str, threads: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    rows, n = x.shape
    dt = DTYPES[name]
    row_bytes = n // dt.block_size * dt.type_size
    out = np.empty((rows, row_bytes), np.uint8)
    per = max(1, -(-rows // threads))

    def run(r0: int) -> None:
        r1 = min(rows, r0 + per)
        lib.ggml_quantize_chunk(int(GGMLQuantizationType[name]), x[r0:r1].ctypes.data, out[r0:r1].ctypes.data,
                                0, r1 - r0, n, None if imatrix is None else imatrix.ctypes.data)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(0, rows, per)))
    return out


def _best(fn, repeat: int, clock=time.perf_counter) -> tuple[float, object]:
    best, res = float("inf"), None
    for _ in range(repeat):
        t0 = clock()
        res = fn()
        best = min(best, clock() - t0)
    return best, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--repeat", type=int, default=3, help="runs per side, interleaved; the best counts")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--imatrix", choices=("both", "no", "only"), default="both",
                    help="time without importance weights, with them, or both (types that use them)")
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    lib = _ggml()
    x = (np.random.default_rng(0).standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    mw = x.size / 1e6
    print(f"{args.rows}x{args.cols} = {mw:.1f} M weights, {args.threads} thread(s), {args.clock} clock")
    weights = np.random.default_rng(1).lognormal(0, 1, args.cols).astype(np.float32)
    print(f"{'type':15} {'modelport M/s':>14} {'ggml M/s':>10} {'ratio':>7}  bytes")
    for name in args.types.split(","):
        runs = []
        if args.imatrix != "only" and name not in quants.REQUIRES_IMATRIX:
            runs.append(None)
        if args.imatrix != "no" and name in quants.USES_IMATRIX:
            runs.append(weights)
        for w in runs:
            t_ours = t_ggml = float("inf")
            for _ in range(args.repeat):        # interleaved, so that both sides see the same machine load
                t, ours = _best(lambda name=name, w=w: quants.quantize(x, name, threads=args.threads, imatrix=w),
                                1, clock)
                t_ours = min(t_ours, t)
                t, ref = _best(lambda name=name, w=w: ggml_quantize(lib, x, name, args.threads, w), 1, clock)
                t_ggml = min(t_ggml, t)
            same = "equal" if np.array_equal(ours, ref) else "DIFFER"
            label = name + (" +imatrix" if w is not None else "")
            print(f"{label:15} {mw / t_ours:14.2f} {mw / t_ggml:10.2f} {t_ggml / t_ours:7.2f}  {same}", flush=True)

if __name__ == "__main__":
    main()
