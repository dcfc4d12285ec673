"""GGML block quantizers, byte-identical to ggml's `ggml_quantize_chunk`, with or without an imatrix: NumPy, and
numba loops where NumPy is too slow.

Why our own: gguf-py (0.19) cannot quantize the K-quants at all (its Q2_K..Q6_K classes only dequantize), and
its legacy quantizers differ from ggml in the sign of zero-valued fp16 scales. These are ports of ggml's algorithms
(docs/gguf.md §6), vectorised over all blocks of a chunk at once, with the float32 rules of `quant_math`.

What ggml does with an importance matrix (`quant_weights`, one weight per column of a row):
- none (NULL): `quantize_row_*_ref` for the legacy and K types; IQ4_NL/IQ4_XS still search 15 scales (ntry 7,
  weights x*x), which is not what their own `_ref` functions do;
- given: the `*_impl` searches: Q4_0/Q5_0 and Q3_K/Q6_K weighted `make_qx_quants`, Q4_1/Q5_1/Q2_K/Q4_K/Q5_K
  `make_qkx3_quants`, and the K-quants' sub-block scales through `make_qp_quants` (Q2_K, Q4_K, Q5_K) or a second
  `make_qx_quants` (Q3_K). The legacy types weight by `qw * sqrt(sigma2 + x^2)` with sigma2 the mean x^2 of the
  whole row; the K and IQ4 types use the mean of their 256 (or 32) element block;
- ignored: Q8_0, TQ1_0, TQ2_0, MXFP4.

Kernels: `fn(x, qw)` with x the (nblocks, block_elems) float32 blocks of a chunk and qw their importance weights
(same shape) or None, returning (nblocks, type_size) uint8; Q4_0/Q5_0 (`_OWN_ROW_WEIGHTS`) get the imatrix row
instead, as (blocks per row, block_elems), and weight their chunk of whole rows themselves. The grid types
(IQ1_S .. IQ3_S) join `_KERNELS` through `iq_grid.GRID_KERNELS` (numba loops in `iq_grid_jit` and `iq1`).

Large tensors are cut into chunks of blocks that are quantized on a thread pool: NumPy and the numba kernels
(nogil) release the GIL, and blocks are independent, so the chunking never changes the bytes.

Speed (bench/quantize.py compares with ggml): the unweighted legacy kernels and weighted Q4_0/Q5_0 are ggml's loops
compiled by numba (`legacy_jit`, imported when first used),
and so are Q3_K's unweighted search and its packing (`k_jit`). The Q8_0 kernel turns slices of blocks into `_quads` (a
transposing copy of 16-byte groups), so that max, min and levels are long contiguous passes with one value per block
repeated along the rows, and packs 4 levels a word. The searches are whole-chunk passes into per-thread scratch
arrays (fresh chunk-sized arrays cost page faults), they remember only which candidate won per sub-block and
recompute its levels once, and they never select with a random mask over a whole chunk (np.where/copyto(where=) on
such masks are an order of magnitude slower than arithmetic). A value per sub-block is repeated (np.repeat) rather
than broadcast over rows of 16 or 32 elements, whose short inner loops cost four times a plain pass.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np

from ..core.dtypes import DTYPES
from .iq_grid import GRID_KERNELS, REQUIRES_IMATRIX
from .quant_math import (
    F32,
    GROUP_MAX_EPS,
    absmax_cols,
    block_sumsq,
    drop_scratch,
    first_absmax,
    fp16,
    ggml_weights,
    nearest_int,
    nibbles,
    pack2,
    rint_clip,
    scratch,
    seq_sum,
    to_cols,
)

_Q3_WEIGHTED_SLICE = 1024       # blocks per slice of the weighted Q3_K search (its arrays stay in cache)


# ----------------------------------------------------------------------------------- K-quant searches

def _make_qkx2(X, W, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants over columns: returns (L, scale, the_min) with L float (n, S).

    The hot loop works in preallocated buffers (out=) to avoid a temporary per operation. A step only remembers the
    scale and min that made the winning levels (column vectors); L is recomputed once from them at the end."""
    nmax_f = F32(nmax)
    mn = X.min(axis=0)
    mx = X.max(axis=0)
    sum_w = np.add.reduce(W, axis=0)           # C starts these sums from element 0, not from 0.0
    sum_x = np.add.reduce(W * X, axis=0)
    mn = np.where(mn > 0, F32(0), mn)
    const = mx == mn
    La = scratch("qkx2_La", X.shape)
    WL = scratch("qkx2_WL", X.shape)
    t = scratch("qkx2_t", X.shape)

    def candidate(iscale, mn):
        np.subtract(X, mn, out=La)
        np.multiply(La, iscale, out=La)
        np.rint(La, out=La)
        np.clip(La, F32(0), nmax_f, out=La)          # (np.maximum/np.minimum with a scalar and out= is 10x slower)
        inf = np.isinf(iscale)                          # max - min so small (subnormal) that iscale overflowed:
        if inf.any():                                   # nearest_int(inf or NaN) is -2^22 or 0, clamped to 0
            La[:, inf] = 0

    def error(scale, mn_):
        np.multiply(La, scale, out=t)
        np.add(t, mn_, out=t)
        np.subtract(t, X, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(t, W, out=t)
        return seq_sum(t)

    iscale = nmax_f / (mx - mn)
    scale = np.array(F32(1) / iscale)
    candidate(iscale, mn)
    best = error(scale, mn)
    win_iscale, win_mn = iscale, mn.copy()
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + nmax_f) / (mx - mn)
        candidate(iscale, mn)
        np.multiply(W, La, out=WL)
        sum_l = seq_sum(WL)
        np.multiply(WL, La, out=t)
        sum_l2 = seq_sum(t)
        np.multiply(WL, X, out=t)
        sum_xl = seq_sum(t)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        if pos.any():
            this_min = np.where(pos, F32(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min)
        win = (D > 0) & (cur < best)
        if win.any():
            win_iscale = np.where(win, iscale, win_iscale)
            win_mn = np.where(win, mn, win_mn)
            np.copyto(best, cur, where=win)
            np.copyto(scale, this_scale, where=win)
            np.copyto(mn, this_min, where=win)
    candidate(win_iscale, win_mn)
    L = La
    if const.any():
        L[:, const] = 0
        scale = np.where(const, F32(0), scale)
    return L, scale, -mn


def _make_qx(X, nmax, W=None, exact=False):
    """make_qx_quants(rmse_type=1) over columns, with weights W (same layout) or x*x: returns (levels, scale),
    levels(cols) giving L (offset by +nmax). `exact`: round with ggml's nearest_int bit trick (for X that may hold
    inf or NaN, such as scales computed from overflowing sums); np.rint is the same on finite X.

    ggml tries 19 scales per sub-block and keeps the first best. Each trial here is 8 whole-chunk passes in
    preallocated buffers that only yield the two sums per column; the accept test then runs over those column
    vectors, remembering which scale won, and L is recomputed once with the winner, as ggml does."""
    amax_signed = absmax_cols(X)
    zero = np.abs(amax_signed) < F32(1e-15)
    nmax_f = F32(nmax)
    lo, hi = -nmax_f, nmax_f - 1
    steps = [s for s in range(-9, 10) if s != 0]
    iscales = scratch("qx_iscales", (len(steps) + 1, X.shape[1]))  # row 0: the first guess, then steps -9..9
    minus_m = np.array([-nmax_f] + [-(nmax_f + F32(0.1) * F32(step)) for step in steps], F32)   # C's float math
    np.divide(minus_m[:, None], amax_signed, out=iscales)
    slx = scratch("qx_slx", iscales.shape)
    sl2 = scratch("qx_sl2", iscales.shape)
    if W is None:
        W = np.multiply(X, X, out=scratch("qx_W", X.shape))
    WX = np.multiply(W, X, out=scratch("qx_WX", X.shape))
    l = scratch("qx_l", X.shape)
    t = scratch("qx_t", X.shape)
    # A level can only round outside [-nmax, nmax-1] where |x * iscale| >= nmax - 0.5, and |x| <= |max|: the trials
    # with iscale = -m/max, m < nmax - 0.5 (steps -9..-6) need no clamp (np.clip is a whole pass; a gather of the
    # few elements near |max| costs more than it).
    needs_clip = np.abs(minus_m) >= F32(nmax - 0.5 - 1e-3)
    for k in range(iscales.shape[0]):
        np.multiply(X, iscales[k], out=l)
        if exact:
            l[...] = np.clip(nearest_int(l), lo, hi)
        else:
            np.rint(l, out=l)
            if needs_clip[k]:
                np.clip(l, lo, hi, out=l)
        np.multiply(WX, l, out=t)
        np.add.reduce(t, axis=0, out=slx[k])
        np.multiply(W, l, out=t)
        np.multiply(t, l, out=t)
        np.add.reduce(t, axis=0, out=sl2[k])
    slx += F32(0)                                                   # C sums start at +0.0
    sl2 += F32(0)
    # ggml's accept test, trial after trial, on column vectors (its parts that do not depend on `best` at once)
    win = np.zeros(X.shape[1], np.intp)
    scale = np.where(sl2[0] != 0, slx[0] / sl2[0], F32(0))
    best = scale * slx[0]
    a2 = np.multiply(slx, slx, out=scratch("qx_a2", slx.shape))
    pos = np.greater(sl2, 0, out=scratch("qx_pos", slx.shape, bool))
    cand_best = np.divide(slx, sl2, out=scratch("qx_cb", slx.shape))     # (a / b) * a
    cand_best *= slx
    bb = np.empty_like(best)
    ok = np.empty(best.shape, bool)
    for k in range(1, iscales.shape[0]):
        np.multiply(best, sl2[k], out=bb)
        np.greater(a2[k], bb, out=ok)
        ok &= pos[k]
        np.copyto(win, k, where=ok)
        np.copyto(best, cand_best[k], where=ok)
    cols = np.arange(X.shape[1])
    scale = np.where(win > 0, slx[win, cols] / sl2[win, cols], scale)
    scale[zero] = 0
    iscale = iscales[win, cols]

    def levels(c):
        """The rows of L (offset by +nmax) of columns c; 0 in all-zero sub-blocks."""
        L = np.take(X, c, axis=1).T * iscale[c, None]
        if exact:
            L[...] = np.clip(nearest_int(L), lo, hi)
        else:
            np.rint(L, out=L)
            np.clip(L, lo, hi, out=L)
        L += nmax_f
        L[zero[c]] = 0
        return L

    return levels, scale


def _requant(x, d, L, lo, hi, offset=0, dm=None):
    """Re-quantize the blocks x (nb, 256) with the stored (fp16-rounded) scale d (and min dm) of each sub-block, in
    order, and return the levels + offset as uint8 blocks (nb, 256) (a scratch array). Sub-blocks with d == 0 keep
    their levels from the search: L[:, cols] + offset where L is an array in columns layout, or, already offset,
    L(cols) as rows."""
    S = d.size
    xs = x.reshape(S, -1)
    v = scratch("v", xs.shape)

    def per_element(s):                             # (cheaper than broadcasting over rows of 16 or 32)
        return np.repeat(s.reshape(-1), xs.shape[1]).reshape(xs.shape)

    if dm is not None:
        np.add(xs, per_element(dm), out=v)
        v /= per_element(d)
    else:
        np.divide(xs, per_element(d), out=v)
    d = d.reshape(S, 1)
    q = rint_clip(v, F32(lo), F32(hi), out=v)
    nan = np.flatnonzero(np.isnan(d.reshape(-1)))   # fp16 inf times a 0 code: `if (!d)` lets NaN through,
    if nan.size:                                    # and nearest_int(x/NaN) is 0
        q[nan] = np.clip(F32(0), F32(lo), F32(hi))
    keep = np.flatnonzero(d.reshape(-1) == 0)
    if keep.size:
        q[keep] = L(keep) - F32(offset) if callable(L) else np.take(L, keep, axis=1).T
    u8 = scratch("u8", x.shape, np.uint8)
    np.add(q, F32(offset), out=u8.reshape(xs.shape), casting="unsafe")
    return u8


# ----------------------------------------------------------------------------------------- K-quants

def _make_qp(X, nmax, W):
    """make_qp_quants over columns X (n, S) with weights W: returns (L int (n, S) as the uint8 ggml stores, scale).

    The coordinate descent (5 passes over the n elements, in order) runs element by element over all columns at
    once; a pass that changes nothing in a column would change nothing again, so running every column for the
    passes of the slowest one gives ggml's result. L keeps ggml's uint8 wrap-around for negative levels."""
    n, S = X.shape
    nmax_f = F32(nmax)
    mx = np.maximum(X.max(axis=0), F32(0))
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    iscale = nmax_f / mx
    L = nearest_int(iscale * X) & 0xFF                              # stored in uint8_t
    scale = F32(1) / iscale
    d = X - scale * L.astype(F32)
    best = seq_sum((W * d) * d)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (F32(0.1) * F32(step) + nmax_f) / mx
        scale_is = F32(1) / iscale_is
        l = np.minimum(nmax, nearest_int(iscale_is * X)).astype(F32)
        d = X - scale_is * l
        mse = seq_sum((W * d) * d)
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, iscale_is, iscale)
    li = np.minimum(nmax, nearest_int(iscale * X))
    lf = li.astype(F32)
    sumlx = seq_sum((W * X) * lf)
    suml2 = seq_sum((W * lf) * lf)
    Lf = (li & 0xFF).astype(F32)
    WX = W * X
    for _ in range(5):
        changed = False
        for i in range(n):
            w, x, li_ = W[i], X[i], Lf[i]
            slx = sumlx - WX[i] * li_
            sl2 = suml2 - (w * li_) * li_
            ok = (slx > 0) & (sl2 > 0)
            if not ok.any():
                continue
            new = np.minimum(nmax, nearest_int((x * sl2) / slx)).astype(F32)
            ok &= new != li_
            slx = slx + WX[i] * new
            sl2 = sl2 + (w * new) * new
            ok &= (slx * slx) * suml2 > (sumlx * sumlx) * sl2
            if ok.any():
                changed = True
                Lf[i] = np.where(ok, (new.astype(np.int32) & 0xFF).astype(F32), li_)
                sumlx = np.where(ok, slx, sumlx)
                suml2 = np.where(ok, sl2, suml2)
        if not changed:
            break
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, F32(1)), F32(0))
    Lf[:, zero] = 0
    scale[zero] = 0
    return Lf.astype(np.int32), scale


def _k_weights(x, X, qw, n, twice):
    """The K-quants' importance weights in columns layout (n, S), as ggml's *_impl build them: qw * sqrt(sigma2 +
    x^2) with sigma2 the mean x^2 of the 256-element block (twice that when `twice`); and their sums per
    sub-block."""
    s = block_sumsq(x)
    sigma2 = (F32(2) * s) / F32(256) if twice else s / F32(256)
    QW = to_cols(qw, n, "QW")
    W = ggml_weights(QW, np.repeat(sigma2, 256 // n), X)
    return W, seq_sum(W)


def _q2_k_pack(x, L, sbytes, d16, dmin16):
    nb = x.shape[0]
    d = (d16.astype(F32)[:, None] * (sbytes & 0xF).astype(F32)).reshape(1, -1)
    dm = (dmin16.astype(F32)[:, None] * (sbytes >> 4).astype(F32)).reshape(1, -1)
    L = _requant(x, d, L, 0, 3, dm=dm)
    out = np.empty((nb, 84), np.uint8)
    out[:, 0:16] = sbytes
    out[:, 16:80] = pack2(L)
    out[:, 80:82] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 82:84] = dmin16.view(np.uint8).reshape(nb, 2)
    return out


def _q2_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    X = to_cols(x, 16)
    if qw is not None:                                                # quantize_row_q2_K_impl
        W, sw = _k_weights(x, X, qw, 16, False)
        L, scales, mins = _make_qkx2(X, W, 3, -0.9, 0.05, 36, False)
        SW = sw.reshape(nb, 16).T
        Ls, dm = _make_qp(np.ascontiguousarray(scales.reshape(nb, 16).T), 15, SW)
        Lm, mm = _make_qp(np.ascontiguousarray(mins.reshape(nb, 16).T), 15, SW)
        sbytes = ((Ls.T | (Lm.T << 4)) & 0xFF).astype(np.uint8)
        return _q2_k_pack(x, L, sbytes, fp16(dm), fp16(mm))
    L, scales, mins = _make_qkx2(X, np.abs(X), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    q4 = F32(15)
    has_s = max_scale > 0
    has_m = max_min > 0
    sc = np.where(has_s[:, None], nearest_int((q4 / np.where(has_s, max_scale, 1))[:, None] * scales), 0) & 0xFF
    m = np.where(has_m[:, None], nearest_int((q4 / np.where(has_m, max_min, 1))[:, None] * mins), 0)
    sbytes = (sc | ((m << 4) & 0xFF)).astype(np.uint8)
    d16 = np.where(has_s, fp16(max_scale / q4), np.float16(0))
    dmin16 = np.where(has_m, fp16(max_min / q4), np.float16(0))
    return _q2_k_pack(x, L, sbytes, d16, dmin16)


def _q3_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Q3_K: without weights ggml's `quantize_row_q3_K_ref` compiled (`k_jit`, imported here, when first needed);
    with them the `_impl` searches in NumPy. Both end in k_jit's re-quantizing and packing; fp16 d in NumPy."""
    from .k_jit import q3_k_pack, q3_k_search

    nb = x.shape[0]
    if qw is not None and nb > _Q3_WEIGHTED_SLICE:
        return _sliced(_q3_k, x, qw, _Q3_WEIGHTED_SLICE)
    x = np.ascontiguousarray(x, dtype=F32)
    if qw is not None:                                                # quantize_row_q3_K_impl
        X = to_cols(x, 16)
        W, sw = _k_weights(x, X, qw, 16, True)
        levels, scales = _make_qx(X, 4, W)
        lv, d_block = _make_qx(np.ascontiguousarray(scales.reshape(nb, 16).T), 32,
                               np.ascontiguousarray(sw.reshape(nb, 16).T), exact=True)
        code = np.ascontiguousarray(lv(np.arange(nb)), dtype=np.uint8)     # 0..63, the 6-bit scale codes
        d16 = fp16(d_block)
        L = np.empty((nb, 256), np.int8)                            # only sub-blocks with d = 0 keep theirs
        keep = np.flatnonzero(d16.astype(F32)[:, None] * (code.astype(F32) - F32(32)) == 0)
        L.reshape(-1, 16)[keep] = levels(keep)
    else:
        L = np.empty((nb, 256), np.int8)
        code = np.empty((nb, 16), np.uint8)
        d_block = np.empty(nb, F32)
        q3_k_search(x, x.view(np.uint32), L, code, d_block)
        d16 = fp16(d_block)
    out = np.empty((nb, 110), np.uint8)
    q3_k_pack(x, L, code, d16.astype(F32), out)
    out[:, 108:110] = d16.view(np.uint8).reshape(nb, 2)
    return out


def _k4_pack(ls, lm):
    """Q4_K/Q5_K: the 12 scale bytes from 6-bit scale and min codes (uint8 arithmetic, as ggml packs them), and
    the codes read back the way get_scale_min_k4 does."""
    nb = ls.shape[0]
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    sb = np.empty((nb, 12), np.uint8)
    sb[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sb[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sb[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    sc = np.empty((nb, 8), np.uint8)
    mn = np.empty((nb, 8), np.uint8)
    sc[:, 0:4] = sb[:, 0:4] & 63
    mn[:, 0:4] = sb[:, 4:8] & 63
    sc[:, 4:8] = (sb[:, 8:12] & 0xF) | ((sb[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (sb[:, 8:12] >> 4) | ((sb[:, 4:8] >> 6) << 4)
    return sb, sc, mn


def _k4_scales(scales, mins):
    """Q4_K/Q5_K without weights: 6-bit scale and min codes, the 12 packed bytes, and fp16 d, dmin."""
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    inv_s = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, 1), F32(0))
    inv_m = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, 1), F32(0))
    ls = np.minimum(nearest_int(inv_s[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63)
    sb, ls, lm = _k4_pack(ls, lm)
    return ls, lm, sb, fp16(max_scale / F32(63)), fp16(max_min / F32(63))


def _qk_45(x: np.ndarray, qw, nmax: int, rmin: float, nstep: int):
    nb = x.shape[0]
    X = to_cols(x, 32)
    if qw is not None:                                                # quantize_row_q4_K_impl / q5_K_impl
        W, sw = _k_weights(x, X, qw, 32, True)
        L, scales, mins = _make_qkx2(X, W, nmax, -0.9, 0.05, 36, False)
        SW = sw.reshape(nb, 8).T
        Ls, d_block = _make_qp(np.ascontiguousarray(scales.reshape(nb, 8).T), 63, SW)
        Lm, m_block = _make_qp(np.ascontiguousarray(mins.reshape(nb, 8).T), 63, SW)
        if nmax == 31:                                                # only Q5_K clamps the codes
            Ls, Lm = np.minimum(Ls, 63), np.minimum(Lm, 63)
        sb, ls, lm = _k4_pack(Ls.T, Lm.T)
        d16, dmin16 = fp16(d_block), fp16(m_block)
    else:
        av_x = np.sqrt(seq_sum(X * X) / F32(32))
        W = av_x + np.abs(X)
        L, scales, mins = _make_qkx2(X, W, nmax, rmin, 0.1, nstep, False)
        ls, lm, sb, d16, dmin16 = _k4_scales(scales.reshape(nb, 8), mins.reshape(nb, 8))
    d = (d16.astype(F32)[:, None] * ls.astype(F32)).reshape(1, -1)
    dm = (dmin16.astype(F32)[:, None] * lm.astype(F32)).reshape(1, -1)
    L = _requant(x, d, L, 0, nmax, dm=dm)
    head = np.empty((nb, 16), np.uint8)
    head[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    head[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    head[:, 4:16] = sb
    return head, L.reshape(nb, 4, 2, 32)                           # [chunk c, low/high half, l]


def _q4_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    head, L = _qk_45(x, qw, 15, -1.0, 20)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1)


def _q5_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    head, L = _qk_45(x, qw, 31, -0.5, 15)
    nb = L.shape[0]
    hi = (L >> 4).astype(np.uint8)                                  # (nb, 4, 2, 32)
    qh = np.zeros((nb, 32), np.uint8)
    for c in range(4):
        qh |= (hi[:, c, 0] << (2 * c)) | (hi[:, c, 1] << (2 * c + 1))
    low = L & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([head, qh, qs], axis=1)


def _q6_k(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    X = to_cols(x, 16)
    levels, scales = _make_qx(X, 32, None if qw is None else to_cols(qw, 16, "QW"))   # impl: the raw weights
    scales = scales.reshape(nb, 16)
    max_scale = first_absmax(scales, 1)
    ok = np.abs(max_scale) >= F32(1e-15)
    iscale = F32(-128) / np.where(ok, max_scale, F32(1))
    d16 = np.where(ok, fp16(F32(1) / iscale), np.float16(0))
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = np.where(ok[:, None], ((sc + 128) & 0xFF) - 128, 0)       # stored as int8
    d = (d16.astype(F32)[:, None] * sc.astype(F32)).reshape(1, -1)
    L = _requant(x, d, levels, -32, 31, offset=32)
    L[~ok] = 0
    L = L.reshape(nb, 2, 4, 32)                                    # [half, quarter, l]
    ql = np.empty((nb, 2, 64), np.uint8)
    ql[:, :, 0:32] = (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:64] = (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)
    h = L >> 4
    qh = h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)
    out = np.empty((nb, 210), np.uint8)
    out[:, 0:128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = sc.astype(np.int8).view(np.uint8)
    out[:, 208:210] = d16.view(np.uint8).reshape(nb, 2)
    return out



# ------------------------------------------------------------------------------------- legacy types

def _inv(d):
    """1/d, and 0 where d is 0 (ggml's `d ? 1.0f/d : 0.0f`)."""
    return np.divide(F32(1), d, out=np.zeros(d.shape, F32), where=d != 0)


def _quads(x: np.ndarray) -> np.ndarray:
    """Blocks of 32 (n, 32) -> (8, 4n) float32 (a scratch array): row r holds elements 4r..4r+3 of every block, in
    block order. The transposing copy moves 16-byte groups, three times faster than moving single floats."""
    Q = scratch("quads", (8, x.shape[0]), np.complex128)
    np.copyto(Q, x.view(np.complex128).T)
    return Q.view(F32)


def _per_quad(v: np.ndarray) -> np.ndarray:
    """A per-block vector repeated for each of its 4 elements in a row of `_quads`."""
    out = np.empty((v.size, 4), F32)
    out[:, 0] = v
    out[:, 1] = v
    out[:, 2] = v
    out[:, 3] = v
    return out.reshape(-1)


def _quad_max(v4: np.ndarray, fn) -> np.ndarray:
    """fn (np.maximum or np.minimum) of the 4 values per block of a (4n,) vector from a reduction of `_quads`."""
    v = v4.reshape(-1, 4)
    return fn(fn(v[:, 0], v[:, 1]), fn(v[:, 2], v[:, 3]))


class _NotFinite(ValueError):
    """A kernel that checks its input itself found NaN or infinity (`quantize` names the type)."""


def _quad_range(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The max and min of each block of a `_quads` array; _NotFinite where one holds NaN or infinity (max and min
    carry them along), so that `quantize` need not read the chunk once more to check."""
    hi = _quad_max(np.maximum.reduce(X, axis=0), np.maximum)
    lo = _quad_max(np.minimum.reduce(X, axis=0), np.minimum)
    if not (np.isfinite(hi).all() and np.isfinite(lo).all()):
        raise _NotFinite
    return hi, lo


#: The largest float32 below 0.5: trunc(v + copysign(_BELOW_HALF, v)) is roundf(v) for every float32 v (adding 0.5
#: itself rounds 0.49999997 up to 1).
_BELOW_HALF = np.nextafter(F32(0.5), F32(0))


def _q8_0(x: np.ndarray, qw: np.ndarray | None = None, slice_blocks: int = 4096) -> np.ndarray:
    """quantize_row_q8_0_ref: d = absmax/127, q = roundf(x/d), in `_quads` slices (as `_legacy`); the levels are
    rounded half away from zero in float32 and truncated by the cast to int8, and go back to block order as uint32
    words (4 levels each) in one transposing copy."""
    nb = x.shape[0]
    out = np.empty((nb, 34), np.uint8)
    d_all = np.empty(nb, F32)
    for s0 in range(0, nb, slice_blocks):
        s1 = min(nb, s0 + slice_blocks)
        X = _quads(x[s0:s1])
        hi, lo = _quad_range(X)
        d = np.maximum(hi, -lo)                                     # ggml's amax starts at +0.0, never -0.0
        d += F32(0)
        d /= F32(127)
        d_all[s0:s1] = d
        X *= _per_quad(_inv(d))
        half = np.copysign(_BELOW_HALF, X, out=scratch("q8_half", X.shape))
        X += half
        Q = scratch("q8_q", X.shape, np.int8)
        np.copyto(Q, X, casting="unsafe")                           # |X| < 128: the cast truncates
        np.copyto(out[s0:s1, 2:].view(np.uint32), Q.view(np.uint32).T)
    out.view(np.uint16)[:, 0] = fp16(d_all).view(np.uint16)
    return out


def _legacy(x: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Q4_0 / Q5_0 (signed) and Q4_1 / Q5_1 without importance weights: ggml's `quantize_row_*_ref` loops compiled
    by numba (`legacy_jit`, imported here, when first needed), which leaves the fp16 rounding of d and m to NumPy."""
    from .legacy_jit import legacy_blocks

    x = np.ascontiguousarray(x, dtype=F32)
    nb = x.shape[0]
    out = np.empty((nb, (2 if signed else 4) + (4 if bits == 5 else 0) + 16), np.uint8)
    d = np.empty(nb, F32)
    m = np.empty(nb, F32)
    if not legacy_blocks(x, x.view(np.uint32), out, d, m, bits, signed):
        raise _NotFinite
    o = out.view(np.uint16)                                         # rows are whole uint16s
    o[:, 0] = fp16(d).view(np.uint16)
    if not signed:
        o[:, 1] = fp16(m).view(np.uint16)
    return out


def _nib(q):
    q = q.astype(np.uint8)
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _qh(q):
    """Q5 high bits: bit j of a little-endian u32 is bit 4 of element j."""
    return np.packbits(((q.astype(np.uint8) >> 4) & 1).astype(bool), axis=1, bitorder="little")


def _sliced(fn, x, qw, blocks=4096):
    """fn over slices of `blocks` blocks: the weighted 32-element searches keep their arrays in cache."""
    if x.shape[0] <= blocks:
        return fn(x, qw)
    return np.concatenate([fn(x[i:i + blocks], qw[i:i + blocks]) for i in range(0, x.shape[0], blocks)])


def _sym_weighted(x, qw, bits):
    """quantize_row_q4_0_impl / q5_0_impl (bits 4 / 5), compiled by numba (`legacy_jit`): x whole rows of blocks,
    qw the imatrix row as (blocks per row, 32); the kernel weights and searches, NumPy rounds the scales to fp16."""
    from .legacy_jit import weighted_signed_blocks

    out = np.empty((x.shape[0], 2 + (4 if bits == 5 else 0) + 16), np.uint8)
    d = np.empty(x.shape[0], F32)
    weighted_signed_blocks(np.ascontiguousarray(x, dtype=F32), np.ascontiguousarray(qw, dtype=F32), out, d, bits)
    out.view(np.uint16)[:, 0] = fp16(d).view(np.uint16)
    return out


def _asym_weighted(x, qw, nmax):
    """quantize_row_q4_1_impl / q5_1_impl: make_qkx3_quants(nmax, -0.9, 0.05, 36); fp16 d, fp16 m and levels."""
    L, scale, the_min = _make_qkx2(to_cols(x, 32), to_cols(qw, 32, "QW"), nmax, -0.9, 0.05, 36, False)
    return fp16(scale), fp16(-the_min), L.T.astype(np.uint8)


def _q4_0(x, qw=None):
    return _legacy(x, 4, True) if qw is None else _sym_weighted(x, qw, 4)


def _q5_0(x, qw=None):
    return _legacy(x, 5, True) if qw is None else _sym_weighted(x, qw, 5)


def _q4_1(x, qw=None):
    if qw is not None:
        return _sliced(_q4_1_weighted, x, qw)
    return _legacy(x, 4, False)


def _q4_1_weighted(x, qw):
    d, m, q = _asym_weighted(x, qw, 15)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), _nib(q)], axis=1)


def _q5_1(x, qw=None):
    if qw is not None:
        return _sliced(_q5_1_weighted, x, qw)
    return _legacy(x, 5, False)


def _q5_1_weighted(x, qw):
    d, m, q = _asym_weighted(x, qw, 31)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), _qh(q), _nib(q)], axis=1)


def _row_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """The legacy types' weights `qw * sqrt(sigma2 + x^2)`, sigma2 the mean x^2 of the whole row (x: whole rows).

    ggml's `sum_x2 += x[j]*x[j]` is a running sum along the row: np.add.accumulate adds in that order along the
    contiguous axis (a few long rows: cheaper than `block_sumsq`'s transposition, built for many short blocks)."""
    sq = np.multiply(x, x, out=scratch("row_sq", x.shape))
    sum_x2 = np.add.accumulate(sq, axis=1, out=sq)[:, -1] + F32(0)
    sigma2 = sum_x2 / F32(x.shape[1])
    return ggml_weights(qw, sigma2[:, None], x)


# ------------------------------------------------------------------------------------ 4-bit non-linear

_IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], F32)
# best_index_int8 as a table: for u = floor(2*x) in [-256, 256] (index u + 256), the nearest value's index, the
# upper one on a tie. Midpoints between the values are multiples of 0.5 and x - value is exact near them, so
# "x >= midpoint" decides exactly as ggml's float comparison does. NaN maps to 15, as ggml's search ends there.
_IQ4_LUT = np.searchsorted(((_IQ4_VALUES[:-1] + _IQ4_VALUES[1:])).astype(np.int64),
                           np.arange(-256, 257), side="right").astype(np.intp)


def _iq4_index(v: np.ndarray, out: np.ndarray) -> np.ndarray:
    """best_index_int8(16, kvalues_iq4nl, v) for an array v (float32), as intp, into `out`."""
    u = np.multiply(v, F32(2), out=scratch("iq4_u", v.shape))
    np.floor(u, out=u)
    np.fmin(u, F32(256), out=u)
    np.fmax(u, F32(-256), out=u)
    u += F32(256)
    np.copyto(out, u, casting="unsafe")
    return np.take(_IQ4_LUT, out, out=out)


def _iq4_search(X: np.ndarray, W: np.ndarray):
    """The per-sub-block part of quantize_row_iq4_nl_impl (ntry 7) over columns X (32, S) with weights W: returns
    (scale, levels of the first guess as intp (32, S))."""
    amax_signed = absmax_cols(X)
    zero = np.abs(amax_signed) < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), amax_signed)
    d = (-mx) / F32(-127)
    idx = np.empty(X.shape, np.intp)
    q = scratch("iq4_q", X.shape)
    t = scratch("iq4_t", X.shape)

    def sums(iscale):
        np.multiply(X, iscale, out=t)
        np.take(_IQ4_VALUES, _iq4_index(t, idx), out=q)
        np.multiply(W, q, out=t)                                    # w*q
        np.multiply(t, q, out=q)
        sumq2 = seq_sum(q)
        np.multiply(t, X, out=t)
        return seq_sum(t), sumq2

    sumqx, sumq2 = sums(F32(1) / d)
    levels = idx.copy()
    pos = sumq2 > 0
    d = np.where(pos, sumqx / np.where(pos, sumq2, F32(1)), F32(0))
    best = d * sumqx
    for itry in range(-7, 8):
        sumqx, sumq2 = sums(F32(itry - 127) / mx)
        ok = (sumq2 > 0) & ((sumqx * sumqx) > best * sumq2)
        if ok.any():
            d = np.where(ok, sumqx / np.where(ok, sumq2, F32(1)), d)
            best = np.where(ok, d * sumqx, best)
    d[zero] = 0
    return d, levels


def _iq4_weights(x, qw, X, n):
    """IQ4 weights in columns layout: qw * sqrt(sigma2 + x^2), sigma2 = 2/n * sum(x^2) over the n-element
    super-block; x*x without an imatrix."""
    if qw is None:
        return np.multiply(X, X, out=scratch("iq4_w", X.shape))
    sigma2 = block_sumsq(x.reshape(-1, n)) * F32(2.0 / n)
    return ggml_weights(to_cols(qw, 32, "QW"), np.repeat(sigma2, n // 32), X)


def _iq4_nl(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    X = to_cols(x, 32)
    d, _ = _iq4_search(X, _iq4_weights(x, qw, X, 32))
    iscale = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
    L = _iq4_index(np.multiply(x, iscale[:, None], out=scratch("iq4_v", x.shape)), np.empty(x.shape, np.intp))
    out = np.empty((x.shape[0], 18), np.uint8)
    out[:, 0:2] = fp16(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:18] = nibbles(L)
    return out


def _iq4_xs(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    X = to_cols(x, 32)
    scales, _ = _iq4_search(X, _iq4_weights(x, qw, X, 256))
    scales = scales.reshape(nb, 8)
    max_scale = first_absmax(scales, 1)
    d = -max_scale / F32(32)
    iscale = np.where(d != 0, F32(1) / np.where(d != 0, d, F32(1)), F32(0))
    l = np.clip(nearest_int(iscale[:, None] * scales), -32, 31).astype(F32)
    dl = d[:, None] * l
    idl = np.where(dl != 0, F32(1) / np.where(dl != 0, dl, F32(1)), F32(0))
    v = np.multiply(x.reshape(nb, 8, 32), idl[:, :, None], out=scratch("iq4_v", (nb, 8, 32)))
    L = _iq4_index(v, np.empty(v.shape, np.intp)).reshape(nb, 256)
    code = (l + 32).astype(np.uint8)
    low = code & 0xF
    high = (code >> 4).astype(np.uint16) << (2 * np.arange(8, dtype=np.uint16))
    out = np.empty((nb, 136), np.uint8)
    out[:, 0:2] = fp16(d).view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = np.bitwise_or.reduce(high, axis=1).astype("<u2").view(np.uint8).reshape(nb, 2)
    out[:, 4:8] = low[:, 0::2] | (low[:, 1::2] << 4)
    out[:, 8:136] = nibbles(L)
    return out


# ------------------------------------------------------------------------------------ ternary and MXFP4

def _trits(x: np.ndarray) -> np.ndarray:
    """lroundf(x / amax) + 1 per element of 256-element blocks (0, 1, 2), and fp16 amax (TQ1_0, TQ2_0)."""
    amax = np.abs(x).max(axis=1)
    iscale = np.where(amax != 0, F32(1) / np.where(amax != 0, amax, F32(1)), F32(0))
    v = np.multiply(x, iscale[:, None], out=scratch("tq_v", x.shape))
    t = np.greater_equal(v, F32(0.5)).view(np.uint8)                # lroundf rounds half away from zero
    t = t + np.uint8(1)
    t -= np.less_equal(v, F32(-0.5)).view(np.uint8)
    t[np.isinf(iscale)] = 1                         # subnormal amax: lroundf(+-inf or NaN) + 1 is 1 on x86
    return t, fp16(amax)


def _tq1_0(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    t, d = _trits(x)
    t = t.astype(np.uint16)
    a = t[:, :160].reshape(nb, 5, 32)                                # 5 trits per byte, first most significant
    b = t[:, 160:240].reshape(nb, 5, 16)
    c = t[:, 240:].reshape(nb, 4, 4)
    qa = (((a[:, 0] * 3 + a[:, 1]) * 3 + a[:, 2]) * 3 + a[:, 3]) * 3 + a[:, 4]
    qb = (((b[:, 0] * 3 + b[:, 1]) * 3 + b[:, 2]) * 3 + b[:, 3]) * 3 + b[:, 4]
    qc = (((c[:, 0] * 3 + c[:, 1]) * 3 + c[:, 2]) * 3 + c[:, 3]) * 3
    out = np.empty((nb, 54), np.uint8)
    for lo, q in ((0, qa), (32, qb), (48, qc)):                      # ceil(q * 256 / 243)
        out[:, lo:lo + q.shape[1]] = (q * 256 + 242) // 243
    out[:, 52:54] = d.view(np.uint8).reshape(nb, 2)
    return out


def _tq2_0(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    t, d = _trits(x)
    out = np.empty((nb, 66), np.uint8)
    out[:, 0:64] = pack2(t)
    out[:, 64:66] = d.view(np.uint8).reshape(nb, 2)
    return out


# best_index_mxfp4 as a table over u = ceil(|x| / (d/2)) (0..32) and the sign: the nearest of 0, 1, 2, 3, 4, 6, 8,
# 12 (times d), the smaller on a tie; negative values take the second half of kvalues_mxfp4, except for 0.
_MXFP4_MAG = np.searchsorted(np.array([1, 3, 5, 7, 10, 14, 20]), np.arange(33), side="left")
_MXFP4_LUT = np.concatenate([_MXFP4_MAG, np.where(_MXFP4_MAG > 0, _MXFP4_MAG + 8, 0)]).astype(np.uint8)


def _mxfp4(x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    nb = x.shape[0]
    a = np.abs(x, out=scratch("mx_a", x.shape))
    amax = a.max(axis=1)
    pos = amax > 0
    with np.errstate(divide="ignore"):
        lg = np.floor(np.log2(amax.astype(np.float64)).astype(F32))  # floorf(log2f(amax)): log2f is exact enough
    e = np.where(pos, (np.where(pos, lg, 0).astype(np.int32) + 125) & 0xFF, 0).astype(np.uint32)
    half = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << 23).astype(np.uint32).view(F32) / F32(2)
    np.divide(a, half[:, None], out=a)                              # exact: half is a power of two
    np.ceil(a, out=a)
    np.fmin(a, F32(32), out=a)
    u = a.astype(np.uint8)
    u += np.less(x, 0).view(np.uint8) * np.uint8(33)
    idx = np.take(_MXFP4_LUT, u)
    out = np.empty((nb, 17), np.uint8)
    out[:, 0] = e
    out[:, 1:17] = nibbles(idx)
    return out


_KERNELS: dict[str, tuple[Callable, int]] = {  # kernel, blocks per chunk (a chunk's temporaries stay in cache)
    "Q8_0": (_q8_0, 1 << 13), "Q4_0": (_q4_0, 1 << 15), "Q4_1": (_q4_1, 1 << 15),
    "Q5_0": (_q5_0, 1 << 15), "Q5_1": (_q5_1, 1 << 15),
    "Q2_K": (_q2_k, 1024), "Q3_K": (_q3_k, 2048), "Q4_K": (_q4_k, 1024), "Q5_K": (_q5_k, 1024), "Q6_K": (_q6_k, 512),
    "IQ4_NL": (_iq4_nl, 4096), "IQ4_XS": (_iq4_xs, 512),
    "TQ1_0": (_tq1_0, 1024), "TQ2_0": (_tq2_0, 1024), "MXFP4": (_mxfp4, 8192),
    **GRID_KERNELS,
}
#: Kernels that find NaN and infinity in their own max and min (without importance weights).
_SELF_CHECKED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
#: Types whose ggml weights use the mean x^2 of the whole row: `quantize` hands their kernels the final weights.
_ROW_WEIGHTED = ("Q4_1", "Q5_1")
#: Types whose kernels weight whole rows themselves: `quantize` hands them the imatrix row as (blocks per row,
#: block_elems) instead of one row of weights per block.
_OWN_ROW_WEIGHTS = ("Q4_0", "Q5_0")
#: Types for which ggml uses the importance weights at all (the others ignore them).
USES_IMATRIX = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
                *GRID_KERNELS)
#: Types `quantize` can produce.
SUPPORTED = ("F32", "F16", "BF16", *_KERNELS)
__all__ = ["REQUIRES_IMATRIX", "SUPPORTED", "USES_IMATRIX", "dequantize", "dequantize_chunks", "quantize"]


# ------------------------------------------------------------------------------------------ public API

def _type_name(qtype) -> str:
    name = getattr(qtype, "name", qtype)
    name = str(name).upper()
    if name not in SUPPORTED:
        raise ValueError(f"cannot quantize to {name}; supported: {', '.join(SUPPORTED)}")
    return name


def _check_imatrix(imatrix, data: np.ndarray, name: str) -> np.ndarray | None:
    """The importance weights as float32 of shape (ncols,) or, for a 3-D tensor, (n_expert, ncols); None where
    ggml ignores them."""
    n = data.shape[-1]
    if imatrix is None or name not in USES_IMATRIX:   # (the grid kernels refuse REQUIRES_IMATRIX types without)
        return None
    imatrix = np.asarray(imatrix, dtype=F32)
    per_expert = data.ndim == 3 and imatrix.shape == (data.shape[0], n)
    if imatrix.shape != (n,) and not per_expert:
        expected = f"({n},)" + (f" or ({data.shape[0]}, {n})" if data.ndim == 3 else "")
        raise ValueError(f"the importance matrix has {imatrix.size} values for rows of {n} (shape {imatrix.shape} "
                         f"for a tensor of shape {data.shape}; expected {expected})")
    if not np.isfinite(imatrix).all():
        raise ValueError("the importance weights contain NaN or infinity")
    return imatrix


def quantize(data: np.ndarray, qtype, threads: int | None = None, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize `data` (rows along the last axis) to `qtype`; returns uint8 of shape (*rows, row_bytes).

    The bytes are ggml's: what `ggml_quantize_chunk` writes (llama-quantize's per-tensor call). `imatrix`: None, or
    importance weights, one per column shared by all rows (ncols,), or for a 3-D tensor (n_expert, rows, ncols)
    one row of them per expert (n_expert, ncols), as llama-quantize passes each expert its own slice.
    """
    name = _type_name(qtype)
    data = np.asarray(data)
    if data.ndim == 0:
        raise ValueError("cannot quantize a scalar")
    n = data.shape[-1]
    lead = data.shape[:-1]
    if name in ("F32", "F16", "BF16"):
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quantize as gq
        res = gq(np.ascontiguousarray(data, dtype=F32), GGMLQuantizationType[name])
        return np.ascontiguousarray(res).view(np.uint8).reshape(*lead, -1)
    dt = DTYPES[name]
    if n % dt.block_size:
        raise ValueError(f"row length {n} is not a multiple of the {name} block size {dt.block_size}")
    imatrix = _check_imatrix(imatrix, data, name)
    if imatrix is not None and imatrix.ndim == 2:                   # one expert at a time, each its own weights
        experts = np.empty((*lead, n // dt.block_size * dt.type_size), np.uint8)
        for e in range(data.shape[0]):
            experts[e] = quantize(data[e], name, threads, imatrix[e])
        return experts
    kernel, chunk = _KERNELS[name]
    blocks = data.reshape(-1, dt.block_size)        # converted to float32 chunk by chunk: bounded extra memory
    nblocks = blocks.shape[0]
    per_row = n // dt.block_size
    qw_row = None
    if imatrix is not None:                         # chunks of whole rows, each with the row's weights
        chunk = max(1, min(chunk, 4096) // per_row) * per_row      # (the weighted searches are slower anyway)
        qw_row = imatrix.reshape(per_row, dt.block_size)
    not_finite = f"cannot quantize to {name}: the tensor contains NaN or infinity"
    starts = range(0, nblocks, chunk)
    out = [None] if len(starts) == 1 else np.empty((nblocks, dt.type_size), np.uint8)  # one chunk: its own array

    def run(start: int) -> None:
        stop = min(start + chunk, nblocks)
        with np.errstate(all="ignore"):
            chunk_f32 = np.ascontiguousarray(blocks[start:stop], dtype=F32)
            # ggml would write garbage that llama.cpp's row check rejects (max/min carry any NaN or inf along; two
            # SIMD reductions cost less than one pairwise sum); the unweighted legacy kernels check their own max/min
            if not (qw_row is None and name in _SELF_CHECKED) and not (
                    np.isfinite(chunk_f32.max()) and np.isfinite(chunk_f32.min())):
                raise ValueError(not_finite)
            qw = qw_row if name in _OWN_ROW_WEIGHTS else None
            if qw is None and qw_row is not None:
                qw = np.tile(qw_row, ((stop - start) // per_row, 1))
                if name in _ROW_WEIGHTED:
                    rows = chunk_f32.reshape(-1, n)
                    qw = _row_weights(rows, qw.reshape(rows.shape)).reshape(chunk_f32.shape)
            try:
                out[0 if len(starts) == 1 else slice(start, stop)] = kernel(chunk_f32, qw)
            except _NotFinite:
                raise ValueError(not_finite) from None

    if threads is None:
        threads = os.cpu_count() or 1
    if threads <= 1 or len(starts) <= 1:
        try:
            for s in starts:
                run(s)
        finally:
            drop_scratch()
    else:                                           # the pool's threads take their scratch arrays with them
        with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as pool:
            list(pool.map(run, starts))
    return (out[0] if len(starts) == 1 else out).reshape(*lead, n // dt.block_size * dt.type_size)


def dequantize(data: np.ndarray, qtype, rows_per_chunk: int | None = None) -> np.ndarray:
    """Decode GGML block bytes (rows along the last axis) to float32, via gguf-py.

    With `rows_per_chunk`, rows are decoded a chunk at a time into one output array (`dequantize_chunks`), so
    gguf-py's temporaries (about three times what it returns) stay at a chunk's size instead of the tensor's."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as gdq

    data = np.asarray(data)
    if rows_per_chunk is None or data.ndim < 2 or math.prod(data.shape[:-1]) <= rows_per_chunk:
        name = str(getattr(qtype, "name", qtype)).upper()
        return np.asarray(gdq(data, GGMLQuantizationType[name]), dtype=F32)
    rows = data.reshape(-1, data.shape[-1])
    out = None
    for start, part in dequantize_chunks(rows, qtype, rows_per_chunk):
        if out is None:
            out = np.empty((rows.shape[0], part.shape[-1]), F32)
        out[start:start + len(part)] = part
    return out.reshape(*data.shape[:-1], -1)


def dequantize_chunks(rows: np.ndarray, qtype, rows_per_chunk: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Decode block bytes of shape (rows, row_bytes) a few thousand rows at a time: yields (first row, float32
    values of those rows), for callers that use each chunk and drop it (error sums, streaming copies)."""
    for start in range(0, rows.shape[0], rows_per_chunk):
        yield start, dequantize(rows[start:start + rows_per_chunk], qtype)
