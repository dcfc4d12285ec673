"""GGML block quantizers in NumPy, byte-identical to ggml's reference quantizers.

Why our own: gguf-py (0.19) cannot quantize the K-quants at all (its Q2_K..Q6_K classes only dequantize), and
its legacy quantizers differ from ggml in the sign of zero-valued fp16 scales. llama-quantize without an
importance matrix calls ggml's `quantize_row_*_ref` functions for every type we support, so these are
ports of those algorithms (docs/gguf.md §6), vectorised over all blocks of a chunk at once.

Byte identity depends on doing exactly what the C code does in float32:
- the same expression order (`w*x*l` is `(w*x)*l`), no fused multiply-adds;
- sums accumulated sequentially: we keep sub-blocks as columns of an (n, S) array, so `np.add.reduce(axis=0)`
  adds row after row in element order (NumPy only uses pairwise summation along the contiguous axis);
- ggml's `nearest_int` (the 1.5*2^23 trick, round-half-even, with its wrap-around outside +-2^22), emulated exactly
  wherever the argument is not bounded; `np.rint` is identical where it is;
- fp16 conversion with round-to-nearest-even (`astype(np.float16)`, the same as GGML_FP32_TO_FP16).

Decoding is gguf-py's job (`dequantize`), which is also what the tests check our round trip against.
Large tensors are cut into chunks of blocks that are quantized on a thread pool: NumPy releases the GIL in its
loops, and blocks are independent, so the chunking never changes the bytes.

Speed (bench/quantize.py compares with ggml): the searches are whole-chunk passes into per-thread scratch arrays
(fresh chunk-sized arrays cost page faults), they remember only which candidate won per sub-block and recompute
its levels once, and they never select with a random mask over a whole chunk (np.where/copyto(where=) on such
masks are an order of magnitude slower than arithmetic).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from ..core.dtypes import DTYPES
from .iq_grid import GRID_KERNELS

QK_K = 256
_F = np.float32
_Q3_SUB = 512                  # blocks per slice of _make_q3's first round

#: Types `quantize` can produce.
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
             *GRID_KERNELS)


# ----------------------------------------------------------------------------------------------- helpers

_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple, dtype=_F) -> np.ndarray:
    """A per-thread work array, reused from chunk to chunk (contents undefined); `quantize` drops them at the end.

    Every fresh array of a chunk's size is fresh pages from the OS (glibc maps large blocks anew each time), and on
    a virtual machine those page faults cost more than the arithmetic done in them. At most about 13 MiB a thread."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    n = math.prod(shape)
    flat = bufs.get((name, dtype))
    if flat is None or flat.size < n:
        flat = bufs[(name, dtype)] = np.empty(n, dtype)
    return flat[:n].reshape(shape)


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit (also for |v| > 2^22, where it wraps)."""
    i = (v.astype(_F, copy=False) + _F(12582912.0)).view(np.int32)
    return (i & 0x007FFFFF) - 0x00400000


def _rint_clip(v: np.ndarray, lo, hi, out=None) -> np.ndarray:
    """clamp(nearest_int(v), lo, hi) as float32: np.rint where that is exact (|v| < 2^22), the bit trick elsewhere.

    The test for |v| >= 2^22 is two NaN-ignoring reductions (no temporary); NaN (0/0) lanes are never used."""
    big = None
    if v.size and (np.fmax.reduce(v, axis=None) >= _F(4194303) or np.fmin.reduce(v, axis=None) <= _F(-4194303)):
        big = np.flatnonzero(np.abs(v) >= _F(4194303))
        wrapped = np.clip(_nearest_int(v.reshape(-1)[big]), lo, hi)
    r = np.rint(v, out=out)                         # out may be v itself
    np.clip(r, lo, hi, out=r)
    if big is not None:
        r.reshape(-1)[big] = wrapped
    return r


def _sum(a: np.ndarray) -> np.ndarray:
    """Sequential float32 sum over axis 0 (a C loop `s = 0; s += a[i]`): row after row, then +0 for -0 sums."""
    return np.add.reduce(a, axis=0) + _F(0.0)


def _fp16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=_F).astype(np.float16)


def _first_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The signed element with the largest |x| (the first one on ties), as ggml's `if (ax > amax)` loops pick it."""
    if axis == 0:
        return _absmax_cols(x)
    idx = np.argmax(np.abs(x), axis=axis)
    return np.take_along_axis(x, np.expand_dims(idx, axis), axis=axis).squeeze(axis)


def _absmax_cols(X: np.ndarray) -> np.ndarray:
    """_first_absmax over axis 0 from the column max and min (fast reductions); where both +a and -a occur, the
    first of them is looked up in those few columns only."""
    hi = X.max(axis=0)
    lo = X.min(axis=0)
    best = np.where(-lo > hi, lo, hi)
    tie = np.flatnonzero((-lo == hi) & (hi != 0))
    if tie.size:
        sub = X[:, tie]
        first = np.argmax(np.abs(sub) == hi[tie], axis=0)
        best[tie] = sub[first, np.arange(tie.size)]
    return best


def _cols(x: np.ndarray, n: int) -> np.ndarray:
    """(nb, 256) blocks -> (n, nb*256/n): one sub-block of n elements per column, contiguous rows (a scratch array)."""
    X = _scratch("X", (n, x.size // n))
    np.copyto(X, x.reshape(-1, n).T)
    return X


def _pack2(L: np.ndarray) -> np.ndarray:
    """2-bit fields of 256 elements (nb, 256) uint8 -> (nb, 64): byte 32h+l holds 128h+l, +32, +64, +96.

    Works on 8 bytes at a time as uint64: the values are below 4, so no shift carries into the next byte."""
    q = np.ascontiguousarray(L).view(np.uint64).reshape(-1, 2, 4, 4)
    out = q[:, :, 0] | (q[:, :, 1] << np.uint64(2))
    out |= q[:, :, 2] << np.uint64(4)
    out |= q[:, :, 3] << np.uint64(6)
    return out.view(np.uint8).reshape(-1, 64)


# ----------------------------------------------------------------------------------- K-quant searches

def _make_qkx2(X, W, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants over columns: returns (L, scale, the_min) with L float (n, S).

    The hot loop works in preallocated buffers (out=) to avoid a temporary per operation. A step only remembers the
    scale and min that made the winning levels (column vectors); L is recomputed once from them at the end."""
    nmax_f = _F(nmax)
    mn = X.min(axis=0)
    mx = X.max(axis=0)
    sum_w = np.add.reduce(W, axis=0)           # C starts these sums from element 0, not from 0.0
    sum_x = np.add.reduce(W * X, axis=0)
    mn = np.where(mn > 0, _F(0), mn)
    const = mx == mn
    La = _scratch("qkx2_La", X.shape)
    WL = _scratch("qkx2_WL", X.shape)
    t = _scratch("qkx2_t", X.shape)

    def candidate(iscale, mn):
        np.subtract(X, mn, out=La)
        np.multiply(La, iscale, out=La)
        np.rint(La, out=La)
        np.clip(La, _F(0), nmax_f, out=La)          # (np.maximum/np.minimum with a scalar and out= is 10x slower)

    def error(scale, mn_):
        np.multiply(La, scale, out=t)
        np.add(t, mn_, out=t)
        np.subtract(t, X, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(t, W, out=t)
        return _sum(t)

    iscale = nmax_f / (mx - mn)
    scale = np.array(_F(1) / iscale)
    candidate(iscale, mn)
    best = error(scale, mn)
    win_iscale, win_mn = iscale, mn.copy()
    for step in range(nstep + 1):
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + nmax_f) / (mx - mn)
        candidate(iscale, mn)
        np.multiply(W, La, out=WL)
        sum_l = _sum(WL)
        np.multiply(WL, La, out=t)
        sum_l2 = _sum(t)
        np.multiply(WL, X, out=t)
        sum_xl = _sum(t)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        if pos.any():
            this_min = np.where(pos, _F(0), this_min)
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
        scale = np.where(const, _F(0), scale)
    return L, scale, -mn


def _make_qx(X, nmax):
    """make_qx_quants(rmse_type=1) over columns: returns (levels, scale), levels(cols) giving L (offset by +nmax).

    ggml tries 19 scales per sub-block and keeps the first best. Each trial here is 8 whole-chunk passes in
    preallocated buffers that only yield the two sums per column; the accept test then runs over those column
    vectors, remembering which scale won, and L is recomputed once with the winner, as ggml does."""
    amax_signed = _absmax_cols(X)
    zero = np.abs(amax_signed) < _F(1e-15)
    nmax_f = _F(nmax)
    lo, hi = -nmax_f, nmax_f - 1
    steps = [s for s in range(-9, 10) if s != 0]
    iscales = _scratch("qx_iscales", (len(steps) + 1, X.shape[1]))  # row 0: the first guess, then steps -9..9
    np.divide(-nmax_f, amax_signed, out=iscales[0])
    for k, step in enumerate(steps, 1):
        np.divide(-(nmax_f + _F(0.1) * _F(step)), amax_signed, out=iscales[k])
    slx = _scratch("qx_slx", iscales.shape)
    sl2 = _scratch("qx_sl2", iscales.shape)
    W = np.multiply(X, X, out=_scratch("qx_W", X.shape))
    WX = np.multiply(W, X, out=_scratch("qx_WX", X.shape))
    l = _scratch("qx_l", X.shape)
    t = _scratch("qx_t", X.shape)
    for k in range(iscales.shape[0]):
        np.multiply(X, iscales[k], out=l)
        np.rint(l, out=l)
        np.clip(l, lo, hi, out=l)
        np.multiply(WX, l, out=t)
        np.add.reduce(t, axis=0, out=slx[k])
        np.multiply(W, l, out=t)
        np.multiply(t, l, out=t)
        np.add.reduce(t, axis=0, out=sl2[k])
    slx += _F(0)                                                   # C sums start at +0.0
    sl2 += _F(0)
    # ggml's accept test, trial after trial, on column vectors
    win = np.zeros(X.shape[1], np.intp)
    scale = np.where(sl2[0] != 0, slx[0] / sl2[0], _F(0))
    best = scale * slx[0]
    for k in range(1, iscales.shape[0]):
        a, b = slx[k], sl2[k]
        ok = (b > 0) & (a * a > best * b)
        win[ok] = k
        best = np.where(ok, (a / b) * a, best)
    cols = np.arange(X.shape[1])
    scale = np.where(win > 0, slx[win, cols] / sl2[win, cols], scale)
    scale[zero] = 0
    iscale = iscales[win, cols]

    def levels(c):
        """The rows of L (offset by +nmax) of columns c; 0 in all-zero sub-blocks."""
        L = np.take(X, c, axis=1).T * iscale[c, None]
        np.rint(L, out=L)
        np.clip(L, lo, hi, out=L)
        L += nmax_f
        L[zero[c]] = 0
        return L

    return levels, scale


def _make_q3(x, nmax):
    """make_q3_quants(do_rmse=true) for every sub-block of 16 of the blocks x (nb, 256): returns (levels, scale),
    levels(cols) giving the rows of L (offset by +nmax; 0 in all-zero sub-blocks) of those sub-blocks.

    ggml's coordinate descent visits the 16 elements of a sub-block in order and updates the two sums after each
    accepted change, for at most 5 passes, stopping after a pass that changes nothing. Here it runs in rounds over
    all sub-blocks at once (_q3_round). A round tests every element of the active sub-blocks against their current
    sums; each then takes its first accepted change in visiting order from where it stands (elements before that
    point belong to its next pass, if it has one). Up to that change nothing differs from the sequential loop,
    whose sums are the same; a sub-block where nothing is accepted is final (another pass would test the same).
    Only sub-blocks with sumlx > 0 can change at all: ggml tests slx > 0, and every term of sumlx has the sign of
    -max (l has the sign of -x/max), so for max > 0 the sum is <= every term and slx = sumlx - term <= 0."""
    nmax_f = _F(nmax)
    lo, hi = -nmax_f, nmax_f - 1
    XT = x.reshape(-1, 16)                          # sub-blocks as rows
    k, n = XT.shape
    LT = _scratch("q3_LT", (k, n))
    sumlx = np.empty(k, _F)
    suml2 = np.empty(k, _F)
    zero = np.empty(k, bool)
    for b0 in range(0, x.shape[0], _Q3_SUB):        # the first guess and its sums, on cache-sized slices
        X = _cols(x[b0:b0 + _Q3_SUB], 16)
        c0, c1 = b0 * 16, b0 * 16 + X.shape[1]
        amax_signed = _absmax_cols(X)
        zero[c0:c1] = np.abs(amax_signed) < _F(1e-15)
        iscale = -nmax_f / amax_signed
        L = np.multiply(X, iscale, out=_scratch("q3_L", X.shape))
        np.rint(L, out=L)
        np.clip(L, lo, hi, out=L)
        W = np.multiply(X, X, out=_scratch("q3_W", X.shape))
        t = np.multiply(W, X, out=_scratch("q3_t", X.shape))
        t *= L
        np.add.reduce(t, axis=0, out=sumlx[c0:c1])
        np.multiply(W, L, out=t)
        t *= L
        np.add.reduce(t, axis=0, out=suml2[c0:c1])
        rows = np.multiply(XT[c0:c1], iscale[:, None], out=LT[c0:c1])   # the same levels again, as rows:
        np.rint(rows, out=rows)                                         # cheaper than transposing L
        np.clip(rows, lo, hi, out=rows)
    sumlx += _F(0)                                   # C sums start at +0.0
    suml2 += _F(0)
    start = np.zeros(k, np.intp)                    # the element each sub-block visits next
    npass = np.zeros(k, np.intp)                    # its pass (0..4)
    act = np.flatnonzero(sumlx > 0)
    while act.size:
        r, c, nw, nslx, nsl2 = _q3_round(np.take(XT, act, axis=0), np.take(LT, act, axis=0),
                                         sumlx[act], suml2[act], lo, hi)
        g = act[c]
        ok = np.flatnonzero((r >= start[g]) | (npass[g] < 4))   # elements behind need another pass
        r, c, g = r[ok], c[ok], g[ok]
        dist = (r - start[g]) % n                    # visiting order from where the sub-block stands
        first = np.full(act.size, n, np.intp)
        np.minimum.at(first, c, dist)
        sel = np.flatnonzero(dist == first[c])       # one per sub-block that accepts something
        ok, r, g = ok[sel], r[sel], g[sel]
        np.put(LT, g * n + r, nw[ok])
        sumlx[g] = nslx[ok]
        suml2[g] = nsl2[ok]
        npass[g] += r < start[g]
        start[g] = r + 1
        act = g
    scale = np.where(suml2 > 0, sumlx / suml2, _F(0))
    scale[zero] = 0

    def levels(c):
        out = np.take(LT, c, axis=0) + nmax_f
        out[zero[c]] = 0
        return out

    return levels, scale


def _q3_round(x, l, sumlx, suml2, lo, hi):
    """One round of _make_q3 on sub-blocks as rows x (k, 16), levels l and sums (k,): every element's new level and
    ggml's accept test against the current sums. Returns the accepted elements as (element, row, new level, new
    sumlx, new suml2).

    Only rint(v) != l is tested on whole arrays; slx > 0, ggml's exact nearest_int, the clamp (which can only undo
    a change) and the rest of the test run on the few elements that pass it."""
    w = np.multiply(x, x, out=_scratch("q3_w", x.shape))
    wx = np.multiply(w, x, out=_scratch("q3_wx", x.shape))
    slx = np.multiply(wx, l, out=_scratch("q3_slx", x.shape))
    np.subtract(sumlx[:, None], slx, out=slx)        # the sums without each element
    sl2 = np.multiply(w, l, out=_scratch("q3_sl2", x.shape))
    sl2 *= l
    np.subtract(suml2[:, None], sl2, out=sl2)
    v = np.multiply(x, sl2, out=_scratch("q3_v", x.shape))
    v /= slx
    cand = np.not_equal(np.rint(v, out=_scratch("q3_r", x.shape)), l, out=_scratch("q3_c", x.shape, bool))
    idx = np.flatnonzero(cand)
    idx = idx[slx.reshape(-1)[idx] > 0]
    nw = _rint_clip(v.reshape(-1)[idx], lo, hi)
    keep = nw != l.reshape(-1)[idx]
    idx, nw = idx[keep], nw[keep]
    nslx = slx.reshape(-1)[idx] + wx.reshape(-1)[idx] * nw
    nsl2 = sl2.reshape(-1)[idx] + (w.reshape(-1)[idx] * nw) * nw
    row, el = np.divmod(idx, x.shape[1])
    sa, s2 = sumlx[row], suml2[row]
    ok = np.flatnonzero((nsl2 > 0) & ((nslx * nslx) * s2 > (sa * sa) * nsl2))
    return el[ok], row[ok], nw[ok], nslx[ok], nsl2[ok]


def _requant(x, d, L, lo, hi, offset=0, dm=None):
    """Re-quantize the blocks x (nb, 256) with the stored (fp16-rounded) scale d (and min dm) of each sub-block, in
    order, and return the levels + offset as uint8 blocks (nb, 256) (a scratch array). Sub-blocks with d == 0 keep
    their levels from the search: L[:, cols] + offset where L is an array in columns layout, or, already offset,
    L(cols) as rows."""
    S = d.size
    xs = x.reshape(S, -1)
    d = d.reshape(S, 1)
    v = _scratch("v", xs.shape)
    if dm is not None:
        np.add(xs, dm.reshape(S, 1), out=v)
        v /= d
    else:
        np.divide(xs, d, out=v)
    q = _rint_clip(v, _F(lo), _F(hi), out=v)
    keep = np.flatnonzero(d.reshape(-1) == 0)
    if keep.size:
        q[keep] = L(keep) - _F(offset) if callable(L) else np.take(L, keep, axis=1).T
    u8 = _scratch("u8", x.shape, np.uint8)
    np.add(q, _F(offset), out=u8.reshape(xs.shape), casting="unsafe")
    return u8


# ----------------------------------------------------------------------------------------- K-quants

def _q2_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    X = _cols(x, 16)
    L, scales, mins = _make_qkx2(X, np.abs(X), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(nb, 16)
    mins = mins.reshape(nb, 16)
    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    q4 = _F(15)
    has_s = max_scale > 0
    has_m = max_min > 0
    sc = np.where(has_s[:, None], _nearest_int((q4 / np.where(has_s, max_scale, 1))[:, None] * scales), 0) & 0xFF
    m = np.where(has_m[:, None], _nearest_int((q4 / np.where(has_m, max_min, 1))[:, None] * mins), 0)
    sbytes = (sc | ((m << 4) & 0xFF)).astype(np.uint8)
    d16 = np.where(has_s, _fp16(max_scale / q4), np.float16(0))
    dmin16 = np.where(has_m, _fp16(max_min / q4), np.float16(0))
    d = (d16.astype(_F)[:, None] * (sbytes & 0xF).astype(_F)).reshape(1, -1)
    dm = (dmin16.astype(_F)[:, None] * (sbytes >> 4).astype(_F)).reshape(1, -1)
    L = _requant(x, d, L, 0, 3, dm=dm)
    out = np.empty((nb, 84), np.uint8)
    out[:, 0:16] = sbytes
    out[:, 16:80] = _pack2(L)
    out[:, 80:82] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 82:84] = dmin16.view(np.uint8).reshape(nb, 2)
    return out


def _q3_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    levels, scales = _make_q3(x, 4)
    scales = scales.reshape(nb, 16)
    max_scale = _first_absmax(scales, 1)
    nz = max_scale != 0
    iscale = _F(-32) / np.where(nz, max_scale, _F(1))
    l = _nearest_int(iscale[:, None] * scales)
    l = ((l + 128) & 0xFF) - 128                                   # int8_t truncation
    code = np.where(nz[:, None], np.clip(l, -32, 31) + 32, 0).astype(np.uint8)
    sb = np.zeros((nb, 12), np.uint8)
    sb[:, 0:8] = (code[:, 0:8] & 0xF) | ((code[:, 8:16] & 0xF) << 4)
    hi2 = (code >> 4).reshape(nb, 4, 4)                            # [j//4, j%4]
    sb[:, 8:12] = hi2[:, 0] | (hi2[:, 1] << 2) | (hi2[:, 2] << 4) | (hi2[:, 3] << 6)
    d16 = np.where(nz, _fp16(_F(1) / iscale), np.float16(0))
    d = (d16.astype(_F)[:, None] * (code.astype(_F) - _F(32))).reshape(1, -1)
    L = _requant(x, d, levels, -4, 3, offset=4)
    hb = np.right_shift(L, 2).view(np.uint64).reshape(nb, 8, 4)   # bytes of 0/1 (L > 3), 8 at a time
    hm = hb[:, 0].copy()
    for k in range(1, 8):
        hm |= hb[:, k] << np.uint64(k)
    hmask = hm.view(np.uint8)
    L &= 3
    out = np.empty((nb, 110), np.uint8)
    out[:, 0:32] = hmask
    out[:, 32:96] = _pack2(L)
    out[:, 96:108] = sb
    out[:, 108:110] = d16.view(np.uint8).reshape(nb, 2)
    return out


def _k4_scales(scales, mins):
    """Q4_K/Q5_K: 6-bit scale and min codes, the 12 packed bytes, and fp16 d, dmin."""
    nb = scales.shape[0]
    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    inv_s = np.where(max_scale > 0, _F(63) / np.where(max_scale > 0, max_scale, 1), _F(0))
    inv_m = np.where(max_min > 0, _F(63) / np.where(max_min > 0, max_min, 1), _F(0))
    ls = np.minimum(_nearest_int(inv_s[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_m[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    sb = np.empty((nb, 12), np.uint8)
    sb[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sb[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sb[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d16 = _fp16(max_scale / _F(63))
    dmin16 = _fp16(max_min / _F(63))
    return ls, lm, sb, d16, dmin16


def _qk_45(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    nb = x.shape[0]
    X = _cols(x, 32)
    av_x = np.sqrt(_sum(X * X) / _F(32))
    W = av_x + np.abs(X)
    L, scales, mins = _make_qkx2(X, W, nmax, rmin, 0.1, nstep, False)
    ls, lm, sb, d16, dmin16 = _k4_scales(scales.reshape(nb, 8), mins.reshape(nb, 8))
    d = (d16.astype(_F)[:, None] * ls.astype(_F)).reshape(1, -1)
    dm = (dmin16.astype(_F)[:, None] * lm.astype(_F)).reshape(1, -1)
    L = _requant(x, d, L, 0, nmax, dm=dm)
    head = np.empty((nb, 16), np.uint8)
    head[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    head[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    head[:, 4:16] = sb
    return head, L.reshape(nb, 4, 2, 32)                           # [chunk c, low/high half, l]


def _q4_k(x: np.ndarray) -> np.ndarray:
    head, L = _qk_45(x, 15, -1.0, 20)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([head, qs], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    head, L = _qk_45(x, 31, -0.5, 15)
    nb = L.shape[0]
    hi = (L >> 4).astype(np.uint8)                                  # (nb, 4, 2, 32)
    qh = np.zeros((nb, 32), np.uint8)
    for c in range(4):
        qh |= (hi[:, c, 0] << (2 * c)) | (hi[:, c, 1] << (2 * c + 1))
    low = L & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([head, qh, qs], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    X = _cols(x, 16)
    levels, scales = _make_qx(X, 32)
    scales = scales.reshape(nb, 16)
    max_scale = _first_absmax(scales, 1)
    ok = np.abs(max_scale) >= _F(1e-15)
    iscale = _F(-128) / np.where(ok, max_scale, _F(1))
    d16 = np.where(ok, _fp16(_F(1) / iscale), np.float16(0))
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales))
    sc = np.where(ok[:, None], ((sc + 128) & 0xFF) - 128, 0)       # stored as int8
    d = (d16.astype(_F)[:, None] * sc.astype(_F)).reshape(1, -1)
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
    with np.errstate(divide="ignore"):
        return np.where(d != 0, _F(1) / d, _F(0))


def _q8_0(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    d = np.abs(x).max(axis=1) / _F(127)
    v = (x * _inv(d)[:, None]).astype(np.float64)                  # roundf: half away from zero, exact in f64
    q = np.trunc(v + np.copysign(0.5, v)).astype(np.int8)
    out = np.empty((nb, 34), np.uint8)
    out[:, 0:2] = _fp16(d).view(np.uint8).reshape(nb, 2)
    out[:, 2:] = q.view(np.uint8)
    return out


def _sym(x, div, bias, top):
    """Q4_0/Q5_0: d = max/-div, q = min(top, (int8)(x*id + bias))."""
    mx = _first_absmax(x, 1)
    mx = np.where(mx == 0, _F(0), mx)                               # ggml's max starts at +0.0
    d = mx / _F(-div)
    q = np.minimum(np.trunc(x * _inv(d)[:, None] + _F(bias)), top).astype(np.uint8)
    return _fp16(d), q


def _asym(x, div):
    """Q4_1/Q5_1: d = (max-min)/div, m = min, q = (int)((x-min)*id + 0.5)."""
    mn = np.take_along_axis(x, np.argmin(x, axis=1)[:, None], axis=1)[:, 0]
    mx = np.take_along_axis(x, np.argmax(x, axis=1)[:, None], axis=1)[:, 0]
    d = (mx - mn) / _F(div)
    q = np.trunc((x - mn[:, None]) * _inv(d)[:, None] + _F(0.5))
    return _fp16(d), _fp16(mn), q


def _nib(q):
    q = q.astype(np.uint8)
    return (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)


def _qh(q):
    """Q5 high bits: bit j of a little-endian u32 is bit 4 of element j."""
    return np.packbits(((q.astype(np.uint8) >> 4) & 1).astype(bool), axis=1, bitorder="little")


def _q4_0(x):
    d, q = _sym(x, 8, 8.5, 15)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), _nib(q)], axis=1)


def _q5_0(x):
    d, q = _sym(x, 16, 16.5, 31)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), _qh(q), _nib(q)], axis=1)


def _q4_1(x):
    d, m, q = _asym(x, 15)
    q = np.minimum(q, 15)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), _nib(q)], axis=1)


def _q5_1(x):
    d, m, q = _asym(x, 31)
    q = q.astype(np.uint8)                                         # (uint8_t) cast; (x-min)*id is in [0, 31]
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), m.view(np.uint8).reshape(-1, 2), _qh(q), _nib(q)], axis=1)


_KERNELS = {  # kernel, blocks per chunk (sized so that a chunk's temporaries stay in cache)
    "Q8_0": (_q8_0, 1 << 13), "Q4_0": (_q4_0, 1 << 15), "Q4_1": (_q4_1, 1 << 15),
    "Q5_0": (_q5_0, 1 << 15), "Q5_1": (_q5_1, 1 << 15),
    "Q2_K": (_q2_k, 1024), "Q3_K": (_q3_k, 2048), "Q4_K": (_q4_k, 1024), "Q5_K": (_q5_k, 1024), "Q6_K": (_q6_k, 512),
}


# ------------------------------------------------------------------------------------------ public API

def _type_name(qtype) -> str:
    name = getattr(qtype, "name", qtype)
    name = str(name).upper()
    if name not in SUPPORTED:
        raise ValueError(f"cannot quantize to {name}; supported: {', '.join(SUPPORTED)}")
    return name


def quantize(data: np.ndarray, qtype, threads: int | None = None, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize `data` (rows along the last axis) to `qtype`; returns uint8 of shape (*rows, row_bytes).

    The bytes are ggml's: what `ggml_quantize_chunk` (and so llama-quantize) writes; `imatrix` (one importance
    weight per column) is passed to the grid IQ kernels (iq_grid.py), which need it or fall back as ggml does.
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
        res = gq(np.ascontiguousarray(data, dtype=_F), GGMLQuantizationType[name])
        return np.ascontiguousarray(res).view(np.uint8).reshape(*lead, -1)
    dt = DTYPES[name]
    if n % dt.block_size:
        raise ValueError(f"row length {n} is not a multiple of the {name} block size {dt.block_size}")
    kernel, chunk = (GRID_KERNELS if name in GRID_KERNELS else _KERNELS)[name]
    qw_rows = None
    if name in GRID_KERNELS:
        qw_rows = None if imatrix is None else np.asarray(imatrix, dtype=_F).reshape(-1, dt.block_size)
        if qw_rows is not None and qw_rows.shape[0] != n // dt.block_size:
            raise ValueError(f"the importance matrix has {qw_rows.size} values for rows of {n}")
        grid_kernel = kernel
        kernel = None
    blocks = data.reshape(-1, dt.block_size)        # converted to float32 chunk by chunk: bounded extra memory
    nblocks = blocks.shape[0]
    out = np.empty((nblocks, dt.type_size), np.uint8)

    def run(start: int) -> None:
        stop = min(start + chunk, nblocks)
        with np.errstate(all="ignore"):
            chunk_f32 = np.ascontiguousarray(blocks[start:stop], dtype=_F)
            # ggml would write garbage that llama.cpp's row check rejects (max/min carry any NaN or inf along)
            if not (np.isfinite(chunk_f32.max()) and np.isfinite(chunk_f32.min())):
                raise ValueError(f"cannot quantize to {name}: the tensor contains NaN or infinity")
            if kernel is None:
                qw = None if qw_rows is None else qw_rows[np.arange(start, stop) % qw_rows.shape[0]]
                out[start:stop] = grid_kernel(chunk_f32, qw)
            else:
                out[start:stop] = kernel(chunk_f32)

    starts = range(0, nblocks, chunk)
    if threads is None:
        threads = os.cpu_count() or 1
    if threads <= 1 or len(starts) <= 1:
        try:
            for s in starts:
                run(s)
        finally:
            _SCRATCH.__dict__.pop("bufs", None)
    else:                                           # the pool's threads take their scratch arrays with them
        with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as pool:
            list(pool.map(run, starts))
    return out.reshape(*lead, n // dt.block_size * dt.type_size)


def dequantize(data: np.ndarray, qtype, rows_per_chunk: int | None = None) -> np.ndarray:
    """Decode GGML block bytes (rows along the last axis) to float32, via gguf-py.

    With `rows_per_chunk`, rows are decoded a chunk at a time into one output array (`dequantize_chunks`), so
    gguf-py's temporaries (about three times what it returns) stay at a chunk's size instead of the tensor's."""
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize as gdq

    data = np.asarray(data)
    if rows_per_chunk is None or data.ndim < 2 or math.prod(data.shape[:-1]) <= rows_per_chunk:
        name = str(getattr(qtype, "name", qtype)).upper()
        return np.asarray(gdq(data, GGMLQuantizationType[name]), dtype=_F)
    rows = data.reshape(-1, data.shape[-1])
    out = None
    for start, part in dequantize_chunks(rows, qtype, rows_per_chunk):
        if out is None:
            out = np.empty((rows.shape[0], part.shape[-1]), _F)
        out[start:start + len(part)] = part
    return out.reshape(*data.shape[:-1], -1)


def dequantize_chunks(rows: np.ndarray, qtype, rows_per_chunk: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """Decode block bytes of shape (rows, row_bytes) a few thousand rows at a time: yields (first row, float32
    values of those rows), for callers that use each chunk and drop it (error sums, streaming copies)."""
    for start in range(0, rows.shape[0], rows_per_chunk):
        yield start, dequantize(rows[start:start + rows_per_chunk], qtype)
