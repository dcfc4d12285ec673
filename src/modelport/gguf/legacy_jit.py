"""ggml's quantizers of the legacy types compiled: Q4_0, Q4_1, Q5_0 and Q5_1 without importance weights (the
`_ref` loops, `legacy_blocks`), Q4_0 and Q5_0 with them (the weighted make_qx_quants search, `weighted_signed_blocks`).

Why a loop: these quantizers are one pass per block in C (find the range, scale, round, pack), while NumPy pays
a memory pass per operation: its best layout reached 0.46-0.85x of ggml's single core (docs/gguf.md, "Speed of
the legacy kernels"). The same loop compiled by numba runs at ggml's speed or above.

Byte identity with `quantize_row_q4_0_ref` .. `q5_1_ref`:
- a block's max |x|, min and max are integer max/min reductions of the float bits (finite floats of one sign
  order as their bits do), which LLVM vectorises where float ones need fastmath; the block length is a runtime
  value to LLVM, so that it vectorises these loops instead of unrolling them (numba has no SLP vectoriser).
  Where ggml's `>`/`<` keep the first of equal values and that matters, the first is looked up: the element of
  largest |x| (+a or -a), and the min where it is zero (+0 or -0);
- float32 arithmetic in ggml's order, and `(int8_t)v`: v = x*id + bias is in [0, 64) whenever id = 1/d is
  finite (x*id lies within the block's range), and infinite or NaN when 1/d overflows for a subnormal d, where
  x86's cast gives 0; so the level is min(top, trunc(v)) where v is in range, else 0;
- NaN and infinity: bits beyond those of the infinities, found by the same reductions (one check per chunk).
The weighted search is ggml's float32 arithmetic in C's order (`jit_math`); its trials run side by side (see
`_weighted_signed_blocks`). Imported by `quants` only when a legacy kernel first runs (`import numba` costs ~0.5 s).
"""

from __future__ import annotations

import numpy as np

from .jit_math import F32, jit, nearest_int

U32 = np.uint32
_SIGN = U32(0x80000000)
_ABS = U32(0x7FFFFFFF)
_INF_BITS = U32(0x7F800000)         # |x| bits at or above this: infinity or NaN


@jit
def _level(v, top):
    """MIN(top, (int8_t)v) for v = x*id + bias (see the module docstring), as an int32 in [0, top]."""
    v = v if (v >= F32(0.0)) & (v < F32(64.0)) else F32(0.0)
    return min(np.int32(top), np.int32(v))


@jit
def _pack(out, i, qs0, j, q0, q1, qh):
    """Nibbles of elements j and j + 16 into byte qs0 + j; their fifth bits into qh (Q5: bits j and j + 16)."""
    out[i, qs0 + j] = np.uint8((q0 & np.int32(15)) | ((q1 & np.int32(15)) << np.int32(4)))
    return qh | (U32(q0 >> np.int32(4)) << U32(j)) | (U32(q1 >> np.int32(4)) << U32(j + 16))


@jit
def _store_qh(out, i, at, qh):
    """qh as a little-endian uint32 at byte `at`."""
    for k in range(4):
        out[i, at + k] = np.uint8(U32(qh >> U32(8 * k)) & U32(255))


@jit
def _signed_blocks(x, xb, out, d_out, bits):
    """quantize_row_q4_0_ref (bits 4) / q5_0_ref (5): d = max / -2^(bits-1), max the first element of largest
    |x| (+0.0 where all are zero); q = MIN(top, (int8_t)(x*id + 2^(bits-1) + 0.5))."""
    half = 1 << (bits - 1)
    top = 2 * half - 1
    qs0 = 2 + (4 if bits == 5 else 0)
    bias = F32(half) + F32(0.5)
    worst = U32(0)
    n = x.shape[1]                                                  # 32 (see the module docstring)
    for i in range(x.shape[0]):
        amax = U32(0)
        for j in range(n):
            amax = max(amax, U32(xb[i, j] & _ABS))
        worst = max(worst, amax)
        at = np.int32(n - 1)                                        # the first element of |x| = amax
        for j in range(n):
            at = min(at, np.int32(j) if U32(xb[i, j] & _ABS) == amax else np.int32(n - 1))
        mx = U32(xb[i, at] if amax != 0 else 0).view(np.float32)   # ggml's max starts at +0.0
        d = mx / F32(-half)
        d_out[i] = d
        idl = F32(1.0) / d if d != F32(0.0) else F32(0.0)
        qh = U32(0)
        for j in range(16):
            qh = _pack(out, i, qs0, j, _level(x[i, j] * idl + bias, top), _level(x[i, j + 16] * idl + bias, top), qh)
        if bits == 5:
            _store_qh(out, i, 2, qh)
    return worst < _INF_BITS


@jit
def _asym_blocks(x, xb, out, d_out, m_out, bits):
    """quantize_row_q4_1_ref (bits 4) / q5_1_ref (5): d = (max - min) / top, m = min (the first of +0/-0);
    q = MIN(top, (int8_t)((x - min)*id + 0.5))."""
    top = (1 << bits) - 1
    qs0 = 4 + (4 if bits == 5 else 0)
    worst = U32(0)
    n = x.shape[1]
    for i in range(x.shape[0]):
        smax = np.int32(-1)                                         # as int32: the largest x >= +0, if any
        umax = U32(0)                                               # as uint32: the most negative x, if any
        umin = U32(0xFFFFFFFF)                                      # the smallest x >= +0, else the least negative
        for j in range(n):
            smax = max(smax, np.int32(xb[i, j]))
            umax = max(umax, xb[i, j])
            umin = min(umin, xb[i, j])
        worst = max(worst, U32(max(smax, np.int32(0))), U32(umax & _ABS))
        lo = U32(umax if umax >= _SIGN else umin).view(np.float32)
        hi = U32(smax if smax >= 0 else umin).view(np.float32)
        if lo == F32(0.0):                                          # ggml's min: the first of +0/-0
            for j in range(n):
                if x[i, j] == F32(0.0):
                    lo = x[i, j]
                    break
        # hi's sign matters only where hi = lo = 0, where ggml's are the same element and hi - lo is +0
        d = (hi - lo) / F32(top) + F32(0.0)
        d_out[i] = d
        m_out[i] = lo
        idl = F32(1.0) / d if d != F32(0.0) else F32(0.0)
        qh = U32(0)
        for j in range(16):
            qh = _pack(out, i, qs0, j, _level((x[i, j] - lo) * idl + F32(0.5), top),
                       _level((x[i, j + 16] - lo) * idl + F32(0.5), top), qh)
        if bits == 5:
            _store_qh(out, i, 4, qh)
    return worst < _INF_BITS


@jit
def legacy_blocks(x, xb, out, d_out, m_out, bits, signed):
    """Quantize the (nb, 32) float32 blocks x (xb: the same memory as uint32) into out's (nb, type_size) bytes
    after the fp16 head, and their float32 scales into d_out (the mins into m_out for Q4_1/Q5_1): the caller
    rounds those to fp16 as ggml's GGML_FP32_TO_FP16 does (to nearest even). False where x holds NaN or inf."""
    if signed:                      # constant bits: LLVM inlines each call and folds them (~25 % faster)
        if bits == 4:
            return _signed_blocks(x, xb, out, d_out, 4)
        return _signed_blocks(x, xb, out, d_out, 5)
    if bits == 4:
        return _asym_blocks(x, xb, out, d_out, m_out, 4)
    return _asym_blocks(x, xb, out, d_out, m_out, 5)


_TRIALS = 19     # make_qx_quants' scales: -nmax/max, then -(nmax + 0.1*is)/max for is = -9..9 but 0
_LANES = 24      # the trials padded to three 8-float vectors (the padding repeats the first and never wins)


@jit
def _level_qx(v, nmax):
    """make_qx_quants' level l = MAX(-nmax, MIN(nmax - 1, nearest_int(v)))."""
    return max(np.int64(-nmax), min(np.int64(nmax - 1), np.int64(nearest_int(v))))


@jit
def _weighted_signed_blocks(x, qw, out, d_out, bits):
    """quantize_row_q4_0_impl (bits 4) / q5_0_impl (5) over x, whole rows of qw.shape[0] blocks: weights
    qw*sqrt(sigma2 + x^2), sigma2 the row's mean x^2 (a sequential sum), then make_qx_quants(nmax = 2^(bits-1),
    rmse_type 1, the weights): the first of the 19 trial scales with the best weighted fit, q = l + nmax.

    ggml runs the trials one after the other, each waiting on the latency of its sequential sums. They are
    independent until the accept test, so here the trial loop is the inner one (`_LANES`, vectorised by LLVM) and
    the trials' sums advance side by side, each still in C's order along the block (~2.7x ggml's single core)."""
    nmax = 1 << (bits - 1)
    qs0 = 2 + (4 if bits == 5 else 0)
    per_row = qw.shape[0]
    n = x.shape[1]
    minus_m = np.full(_LANES, -F32(nmax))                          # C's float math: -(nmax + 0.1f*is)
    for k in range(1, _TRIALS):
        minus_m[k] = -(F32(nmax) + F32(0.1) * F32(k - 10 if k <= 9 else k - 9))
    iscale = np.empty(_LANES, np.float32)
    slx = np.empty(_LANES, np.float32)
    sl2 = np.empty(_LANES, np.float32)
    w = np.empty(n, np.float32)
    for first in range(0, x.shape[0], per_row):
        sum_x2 = F32(0.0)
        for b in range(first, first + per_row):
            for j in range(n):
                sum_x2 += x[b, j] * x[b, j]
        sigma2 = sum_x2 / F32(per_row * n)
        for b in range(per_row):
            i = first + b
            amax = F32(0.0)
            mx = F32(0.0)
            for j in range(n):                                      # the first element of largest |x|
                if abs(x[i, j]) > amax:
                    amax = abs(x[i, j])
                    mx = x[i, j]
            qh = U32(0)
            if amax < F32(1e-15):                                   # GROUP_MAX_EPS: all levels 0, d = +0
                d_out[i] = F32(0.0)
                for j in range(16):
                    out[i, qs0 + j] = np.uint8(0)
            else:
                for j in range(n):
                    w[j] = qw[b, j] * np.sqrt(sigma2 + x[i, j] * x[i, j])
                for k in range(_LANES):
                    iscale[k] = minus_m[k] / mx
                    slx[k] = F32(0.0)
                    sl2[k] = F32(0.0)
                for j in range(n):
                    wj = w[j]
                    wx = wj * x[i, j]
                    for k in range(_LANES):
                        lv = F32(_level_qx(iscale[k] * x[i, j], nmax))
                        slx[k] += wx * lv                           # sumlx += w*x*l; suml2 += w*l*l
                        sl2[k] += wj * lv * lv
                win = 0
                scale = slx[0] / sl2[0] if sl2[0] != F32(0.0) else F32(0.0)     # (NaN counts as non-zero in C)
                best = scale * slx[0]
                for k in range(1, _TRIALS):
                    if (sl2[k] > F32(0.0)) & (slx[k] * slx[k] > best * sl2[k]):
                        win = k
                        scale = slx[k] / sl2[k]
                        best = scale * slx[k]
                d_out[i] = scale
                for j in range(16):
                    qh = _pack(out, i, qs0, j, np.int32(_level_qx(iscale[win] * x[i, j], nmax) + nmax),
                               np.int32(_level_qx(iscale[win] * x[i, j + 16], nmax) + nmax), qh)
            if bits == 5:
                _store_qh(out, i, 2, qh)


@jit
def weighted_signed_blocks(x, qw, out, d_out, bits):
    """Q4_0 (bits 4) / Q5_0 (5) with importance weights: the (nb, 32) float32 blocks x, whole rows of qw.shape[0]
    blocks each, qw the imatrix row as (blocks per row, 32) float32; levels into out's (nb, type_size) bytes after
    the fp16 head, the float32 scales into d_out (the caller rounds them to fp16)."""
    if bits == 4:                   # constant bits, as in legacy_blocks
        _weighted_signed_blocks(x, qw, out, d_out, 4)
    else:
        _weighted_signed_blocks(x, qw, out, d_out, 5)
