"""Float32 arithmetic exactly as ggml's C quantizers do it, for every block-quantizer module.

Byte identity with ggml depends on doing what the C code does in float32:
- the same expression order (`w*x*l` is `(w*x)*l`), no fused multiply-adds;
- sums accumulated sequentially: sub-blocks are kept as columns of an (n, S) array, so `np.add.reduce(axis=0)`
  adds row after row in element order (NumPy only uses pairwise summation along the contiguous axis);
- ggml's `nearest_int` (the 1.5*2^23 trick, round-half-even, with its wrap-around outside +-2^22), emulated exactly
  wherever the argument is not bounded; `np.rint` is identical where it is;
- fp16 conversion with round-to-nearest-even (`astype(np.float16)`, the same as GGML_FP32_TO_FP16).

Used by the NumPy kernels of `quants` (weighted Q4_1/Q5_1, K, IQ4, ternary, MXFP4); the numba kernels use
`jit_math`.
"""

from __future__ import annotations

import math
import threading

import numpy as np

F32 = np.float32
QK_K = 256
#: ggml's GROUP_MAX_EPS: a group whose largest |x| is below it is all zero.
GROUP_MAX_EPS = F32(1e-15)

_SCRATCH = threading.local()


def scratch(name: str, shape: tuple, dtype=F32) -> np.ndarray:
    """A per-thread work array, reused from chunk to chunk (contents undefined); `drop_scratch` frees them.

    Every fresh array of a chunk's size is fresh pages from the OS (glibc maps large blocks anew each time), and on
    a virtual machine those page faults cost more than the arithmetic done in them. At most about 13 MiB a thread."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    n = math.prod(shape)
    flat = bufs.get((name, dtype))
    if flat is None or flat.size < n:
        flat = bufs[(name, dtype)] = np.empty(n, dtype)
    return flat[:n].reshape(shape)


def drop_scratch() -> None:
    """Free this thread's scratch arrays (a pool thread's go with the thread)."""
    _SCRATCH.__dict__.pop("bufs", None)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit (also for |v| > 2^22, where it wraps), as int32."""
    i = (np.asarray(v, dtype=F32) + F32(12582912.0)).view(np.int32)
    return (i & 0x007FFFFF) - 0x00400000


def rint_clip(v: np.ndarray, lo, hi, out=None) -> np.ndarray:
    """clamp(nearest_int(v), lo, hi) as float32: np.rint where that is exact (|v| < 2^22), the bit trick elsewhere.

    The test for |v| >= 2^22 is two NaN-ignoring reductions (no temporary); NaN (0/0) lanes are never used."""
    big = None
    if v.size and (np.fmax.reduce(v, axis=None) >= F32(4194303) or np.fmin.reduce(v, axis=None) <= F32(-4194303)):
        big = np.flatnonzero(np.abs(v) >= F32(4194303))
        wrapped = np.clip(nearest_int(v.reshape(-1)[big]), lo, hi)
    r = np.rint(v, out=out)                         # out may be v itself
    np.clip(r, lo, hi, out=r)
    if big is not None:
        r.reshape(-1)[big] = wrapped
    return r


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Sequential float32 sum over axis 0 (a C loop `s = 0; s += a[i]`): row after row, then +0 for -0 sums."""
    return np.add.reduce(a, axis=0) + F32(0.0)


def fp16(v) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even)."""
    return np.asarray(v, dtype=F32).astype(np.float16)


def first_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The signed element with the largest |x| (the first one on ties), as ggml's `if (ax > amax)` loops pick it."""
    if axis == 0:
        return absmax_cols(x)
    a = np.abs(x)
    idx = np.expand_dims(np.argmax(a, axis=axis), axis)
    if np.isnan(np.take_along_axis(a, idx, axis=axis)).any():   # argmax stops at a NaN; ggml's `ax > amax` is
        nan = np.isnan(a)                                       # false for NaN: never picked
        a[nan] = -1
        x = np.where(nan, F32(0), x)
        idx = np.expand_dims(np.argmax(a, axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)


def absmax_cols(X: np.ndarray) -> np.ndarray:
    """first_absmax over axis 0 from the column max and min (fast reductions); where both +a and -a occur, the
    first of them is looked up in those few columns only."""
    hi = np.fmax.reduce(X, axis=0)                  # NaN is never picked (`ax > amax` is false), and a column
    lo = np.fmin.reduce(X, axis=0)                  # of NaN keeps max = 0
    best = np.where(-lo > hi, lo, hi)
    if np.isnan(best).any():
        best[np.isnan(best)] = 0
    tie = np.flatnonzero((-lo == hi) & (hi != 0))
    if tie.size:
        sub = X[:, tie]
        first = np.argmax(np.abs(sub) == hi[tie], axis=0)
        best[tie] = sub[first, np.arange(tie.size)]
    return best


def to_cols(x: np.ndarray, n: int, name: str = "X") -> np.ndarray:
    """(nb, k) blocks -> (n, nb*k/n): one sub-block of n elements per column, contiguous rows (a scratch array)."""
    X = scratch(name, (n, x.size // n))
    np.copyto(X, x.reshape(-1, n).T)
    return X


def block_sumsq(x: np.ndarray) -> np.ndarray:
    """sum of x*x over each block (row of x), added in element order as ggml's `sumx2 += x[j]*x[j]` loops do."""
    X = to_cols(x, x.shape[1], "sumsq")
    np.multiply(X, X, out=X)
    return seq_sum(X)


def pack2(L: np.ndarray) -> np.ndarray:
    """2-bit fields of 256 elements (nb, 256) uint8 -> (nb, 64): byte 32h+l holds 128h+l, +32, +64, +96.

    Works on 8 bytes at a time as uint64: the values are below 4, so no shift carries into the next byte."""
    q = np.ascontiguousarray(L).view(np.uint64).reshape(-1, 2, 4, 4)
    out = q[:, :, 0] | (q[:, :, 1] << np.uint64(2))
    out |= q[:, :, 2] << np.uint64(4)
    out |= q[:, :, 3] << np.uint64(6)
    return out.view(np.uint8).reshape(-1, 64)


def nibbles(q: np.ndarray) -> np.ndarray:
    """Blocks of 32 4-bit values (nb, 32*k) -> bytes (nb, 16*k): byte j of each 32 holds element j low, j+16 high."""
    q = q.astype(np.uint8, copy=False).reshape(q.shape[0], -1, 2, 16)
    return ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(q.shape[0], -1)


def ggml_weights(qw: np.ndarray, sigma2, X: np.ndarray) -> np.ndarray:
    """ggml's importance weighting `qw[j] * sqrtf(sigma2 + x[j]*x[j])` (sigma2 broadcast against X)."""
    w = np.multiply(X, X)
    w += sigma2
    np.sqrt(w, out=w)
    return np.multiply(qw, w, out=w)
