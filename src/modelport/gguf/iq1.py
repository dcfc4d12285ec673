"""IQ1_S and IQ1_M compiled with numba, byte-identical to ggml's quantize_row_iq1_s_impl / quantize_row_iq1_m_impl.

Why a loop per sub-block: IQ1 rounds each sub-block (32 values for IQ1_S, 16 for IQ1_M) to three levels by an
exhaustive search over the two boundaries that split its sorted values (561 splits of 32, 153 of 16), scored with
prefix sums; then each group of 8 that is not a grid point is replaced by its best neighbour. In NumPy, with every
split of every sub-block materialised, this ran at a quarter of ggml's single core; as a loop it runs in cache, at
ggml's speed (docs/gguf.md §10).

The float rules are ggml's (modelport.gguf.jit_math): float32 throughout, C's expression order, sequential sums. The
sort is stable, as glibc's qsort (a merge sort) is: equal values keep their order. The grid, lattice map and
neighbour lists come from modelport.gguf.iq_grid (`iq1_tables`), passed in as arrays; the fp16 block scales are
converted here in NumPy (round to nearest even, as ggml's conversion).

Imported only when an IQ1 kernel first runs (numba costs 0.5 s to import); `quantize_iq1_s` / `quantize_iq1_m` take
x and qw (importance weights, or None for IQ1_M) of shape (nblocks, 256) float32 and return (nblocks, type_size)
uint8.
"""

from __future__ import annotations

import numpy as np

from .jit_math import F32, jit, nearest_int

QK_K = 256
IQ1_S_BYTES = 50           # fp16 d, qs[32], qh[8] (uint16)
IQ1_M_BYTES = 56           # qs[32], qh[16], scales[8] (four uint16, the fp16 d in their top nibbles)
_DELTA = 0.125             # IQ1S_DELTA == IQ1M_DELTA
_FLT_MAX = float(np.finfo(np.float32).max)


@jit
def _levels(shift):
    """The three level values, shifted up (+1) or down (-1) by the delta: ggml's x_p / x_m."""
    d = F32(_DELTA) if shift == 1 else -F32(_DELTA)
    out = np.empty(3, np.float32)
    out[0] = F32(-1) + d
    out[1] = d
    out[2] = F32(1) + d
    return out


@jit
def _block_sigma2(xb):
    """2 * mean(x^2) over the block of 256, summed in C's order."""
    s = F32(0)
    for i in range(QK_K):
        s += xb[i] * xb[i]
    return F32(2) * s / F32(QK_K)


@jit
def _weights(xb, qwb, has_qw, sigma2, w):
    """ggml's weights: qw * sqrt(sigma2 + x^2), or x^2 without importance weights (IQ1_M)."""
    for i in range(xb.size):
        w[i] = qwb[i] * np.sqrt(sigma2 + xb[i] * xb[i]) if has_qw else xb[i] * xb[i]


@jit
def _abs_max(xb):
    m = abs(xb[0])
    for i in range(1, xb.size):
        a = abs(xb[i])
        m = m if m > a else a
    return m


@jit
def _stable_order(xb, idx):
    """idx: the indices of xb sorted by value, equal values in index order (insertion sort: 16 or 32 values)."""
    n = xb.size
    for j in range(n):
        v = xb[j]
        k = j
        while k > 0 and xb[idx[k - 1]] > v:
            idx[k] = idx[k - 1]
            k -= 1
        idx[k] = j


@jit
def _best_neighbour(levels, count, table, width, slot, xb, w, scale, q):
    """iq1_find_best_neighbour2: among the off-grid code's neighbours, the grid point with the least
    sum w*(scale*q - x)^2 over the group (x signed, q the shifted level values); the first on ties."""
    best = F32(_FLT_MAX)
    best_i = table[slot * width]            # (ggml's fallback when no distance is finite: not reached by finite data)
    base = slot * width
    for j in range(count[slot]):
        gi = table[base + j]
        d2 = F32(0)
        for i in range(8):
            diff = scale * q[levels[gi, i]] - xb[i]
            d2 += w[i] * diff * diff
        if d2 < best:
            best = d2
            best_i = gi
    return best_i


@jit
def _grid_index(L, k, gmap):
    u = 0
    for j in range(8):
        u |= L[8 * k + j] << (2 * j)
    return u, gmap[u]


@jit
def _split_levels(idx, i1, i2, L):
    """Levels 0, 1, 2 to the sorted values below i1, from i1 to i2, from i2 on."""
    for j in range(idx.size):
        L[idx[j]] = 0 if j < i1 else (1 if j < i2 else 2)


@jit
def _refit(levels, index, xb, w, qk0, qk1, ngroups):
    """The scale refitted over the groups' final grid points: (sumqx, sumq2) in C's order."""
    sumqx = F32(0)
    sumq2 = F32(0)
    for k in range(ngroups):
        q = qk0 if k == 0 else qk1
        for j in range(8):
            v = q[levels[index[k], j]]
            sumqx += w[8 * k + j] * v * xb[8 * k + j]
            sumq2 += w[8 * k + j] * v * v
    return sumqx, sumq2


@jit
def _iq1_s_kernel(x, qw, has_qw, levels, gmap, slots, count, table, width, out, dh):
    """quantize_row_iq1_s_impl over the blocks of x: writes qs and qh (without the fp16 d) into out, d*1.125 into
    dh (0 for a block with no live sub-block)."""
    xp = _levels(1)
    xm = _levels(-1)
    w = np.empty(32, np.float32)
    idx = np.empty(32, np.int64)
    sumx = np.empty(33, np.float32)
    sumw = np.empty(33, np.float32)
    L = np.empty(32, np.int64)
    index = np.empty(4, np.int64)
    scales = np.empty(8, np.float32)
    shifts = np.empty(8, np.int64)
    for ibl in range(x.shape[0]):
        xbl = x[ibl]
        ob = out[ibl]
        ob[:] = 0
        dh[ibl] = F32(0)
        sigma2 = _block_sigma2(xbl)
        max_scale = F32(0)
        for ib in range(8):
            xb = xbl[32 * ib:32 * ib + 32]
            _weights(xb, qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, w)
            scales[ib] = F32(0)
            shifts[ib] = 1
            mx = _abs_max(xb)
            if mx < F32(1e-12):
                continue
            _stable_order(xb, idx)
            sumx[0] = F32(0)
            sumw[0] = F32(0)
            for j in range(32):
                i = idx[j]
                sumx[j + 1] = sumx[j] + w[i] * xb[i]
                sumw[j + 1] = sumw[j] + w[i]
            best = -F32(_FLT_MAX)
            scale = mx
            bi1 = -1
            bi2 = -1
            bshift = 0
            for i1 in range(33):
                a_x = sumx[i1] - sumx[0]
                a_w = sumw[i1] - sumw[0]
                for i2 in range(i1, 33):
                    b_x = sumx[i2] - sumx[i1]
                    c_x = sumx[32] - sumx[i2]
                    b_w = sumw[i2] - sumw[i1]
                    c_w = sumw[32] - sumw[i2]
                    sqx = a_x * xp[0] + b_x * xp[1] + c_x * xp[2]
                    sq2 = a_w * xp[0] * xp[0] + b_w * xp[1] * xp[1] + c_w * xp[2] * xp[2]
                    if sq2 > 0 and sqx * sqx > best * sq2:
                        scale = sqx / sq2
                        best = scale * sqx
                        bi1 = i1
                        bi2 = i2
                        bshift = 1
                    sqx = a_x * xm[0] + b_x * xm[1] + c_x * xm[2]
                    sq2 = a_w * xm[0] * xm[0] + b_w * xm[1] * xm[1] + c_w * xm[2] * xm[2]
                    if sq2 > 0 and sqx * sqx > best * sq2:
                        scale = sqx / sq2
                        best = scale * sqx
                        bi1 = i1
                        bi2 = i2
                        bshift = -1
            if bi1 < 0:
                continue
            _split_levels(idx, bi1, bi2, L)
            if scale < 0:
                for j in range(32):
                    L[j] = 2 - L[j]
                scale = -scale
                bshift = -bshift
            q = xp if bshift == 1 else xm
            on_grid = True
            for k in range(4):
                u, gi = _grid_index(L, k, gmap)
                if gi < 0:
                    on_grid = False
                    gi = _best_neighbour(levels, count, table, width, slots[u], xb[8 * k:8 * k + 8],
                                         w[8 * k:8 * k + 8], scale, q)
                index[k] = gi
            if not on_grid:
                sqx, sq2 = _refit(levels, index, xb, w, q, q, 4)
                if sqx > 0 and sq2 > 0:
                    scale = sqx / sq2
            h = 0
            for k in range(4):
                ob[2 + 4 * ib + k] = index[k] & 255
                h |= (index[k] >> 8) << (3 * k)
            ob[34 + 2 * ib] = h & 255
            ob[35 + 2 * ib] = h >> 8
            scales[ib] = scale
            shifts[ib] = bshift
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == 0:
            continue
        d = max_scale / F32(15)
        dh[ibl] = d * F32(1.125)
        id_ = F32(1) / d
        for ib in range(8):
            v = F32(0.5) * (id_ * scales[ib] - F32(1))
            lv = min(7, max(0, nearest_int(v))) if np.isfinite(v) else 0      # (C's trick gives 0 for inf/nan)
            if shifts[ib] == -1:
                lv |= 8
            ob[35 + 2 * ib] |= lv << 4


@jit
def _iq1_m_kernel(x, qw, has_qw, levels, gmap, slots, count, table, width, out, dh):
    """quantize_row_iq1_m_impl over the blocks of x: writes qs, qh and the 3-bit scales into out, the refitted
    d*1.1125 into dh (its fp16 goes into the scales' top nibbles) and 0 for a block with no live sub-block."""
    xp = _levels(1)
    xm = _levels(-1)
    w = np.empty(16, np.float32)
    idx = np.empty(16, np.int64)
    px = np.empty((2, 17), np.float32)
    pw = np.empty((2, 17), np.float32)
    L = np.empty(16, np.int64)
    index = np.empty(2, np.int64)
    scales = np.empty(16, np.float32)
    shifts = np.empty(16, np.int64)
    sqx = np.empty(4, np.float32)
    sq2 = np.empty(4, np.float32)
    masks = np.array([0x00, 0x80, 0x08, 0x88], np.int64)
    p2 = xp[2]
    m2 = xm[2]
    cp1 = xp[0] * xp[0] - xp[1] * xp[1]
    cp2 = xp[1] * xp[1] - xp[2] * xp[2]
    cm1 = xm[0] * xm[0] - xm[1] * xm[1]
    cm2 = xm[1] * xm[1] - xm[2] * xm[2]
    for ibl in range(x.shape[0]):
        xbl = x[ibl]
        ob = out[ibl]
        ob[:] = 0
        dh[ibl] = F32(0)
        sigma2 = _block_sigma2(xbl)
        max_scale = F32(0)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            _weights(xb, qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, w)
            scales[ib] = F32(0)
            shifts[ib] = 0
            mx = _abs_max(xb)
            if mx < F32(1e-7):
                continue
            _stable_order(xb, idx)
            # prefix sums per half of the sub-block (each half has its own shift)
            px[0, 0] = F32(0)
            px[1, 0] = F32(0)
            pw[0, 0] = F32(0)
            pw[1, 0] = F32(0)
            for j in range(16):
                i = idx[j]
                h = 0 if i < 8 else 1
                px[h, j + 1] = px[h, j] + w[i] * xb[i]
                px[1 - h, j + 1] = px[1 - h, j]
                pw[h, j + 1] = pw[h, j] + w[i]
                pw[1 - h, j + 1] = pw[1 - h, j]
            tx0, tx1 = px[0, 16], px[1, 16]
            tw0, tw1 = pw[0, 16], pw[1, 16]
            best = -F32(_FLT_MAX)
            scale = mx
            bi1 = -1
            bi2 = -1
            bk = -1
            for i1 in range(17):
                for i2 in range(i1, 17):
                    sx0 = px[0, i1] + px[0, i2]
                    sx1 = px[1, i1] + px[1, i2]
                    qxp0 = tx0 * p2 - sx0
                    qxm0 = tx0 * m2 - sx0
                    qxp1 = tx1 * p2 - sx1
                    qxm1 = tx1 * m2 - sx1
                    q2p0 = tw0 * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                    q2m0 = tw0 * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                    q2p1 = tw1 * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                    q2m1 = tw1 * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                    sqx[0] = qxp0 + qxp1
                    sqx[1] = qxp0 + qxm1
                    sqx[2] = qxm0 + qxp1
                    sqx[3] = qxm0 + qxm1
                    sq2[0] = q2p0 + q2p1
                    sq2[1] = q2p0 + q2m1
                    sq2[2] = q2m0 + q2p1
                    sq2[3] = q2m0 + q2m1
                    for k in range(4):
                        if sq2[k] > 0 and sqx[k] * sqx[k] > best * sq2[k]:
                            scale = sqx[k] / sq2[k]
                            best = scale * sqx[k]
                            bi1 = i1
                            bi2 = i2
                            bk = k
            if bi1 < 0:
                continue
            _split_levels(idx, bi1, bi2, L)
            if scale < 0:
                for j in range(16):
                    L[j] = 2 - L[j]
                scale = -scale
                bk = 3 - bk
            q0 = xp if bk < 2 else xm
            q1 = xp if bk % 2 == 0 else xm
            on_grid = True
            for k in range(2):
                u, gi = _grid_index(L, k, gmap)
                if gi < 0:
                    on_grid = False
                    gi = _best_neighbour(levels, count, table, width, slots[u], xb[8 * k:8 * k + 8],
                                         w[8 * k:8 * k + 8], scale, q0 if k == 0 else q1)
                index[k] = gi
            if not on_grid:
                a, b = _refit(levels, index, xb, w, q0, q1, 2)
                if a > 0 and b > 0:
                    scale = a / b
            ob[2 * ib] = index[0] & 255
            ob[2 * ib + 1] = index[1] & 255
            ob[32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
            scales[ib] = scale
            shifts[ib] = bk
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == 0:
            continue
        # the block scale refitted over every sub-block's final levels times its 3-bit scale (skipped sub-blocks
        # count as grid point 0 with the +delta levels, as in C)
        d = max_scale / F32(15)
        id_ = F32(1) / d
        sumqx = F32(0)
        sumq2 = F32(0)
        sc = np.zeros(4, np.int64)
        for ib in range(16):
            v = F32(0.5) * (id_ * scales[ib] - F32(1))
            lv = min(7, max(0, nearest_int(v))) if np.isfinite(v) else 0
            sc[ib // 4] |= lv << (3 * (ib % 4))
            ob[32 + ib] |= masks[shifts[ib]]
            xb = xbl[16 * ib:16 * ib + 16]
            _weights(xb, qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, w)
            mult = F32(2 * lv + 1)
            for k in range(2):
                if k == 0:
                    q = xp if shifts[ib] < 2 else xm
                else:
                    q = xp if shifts[ib] % 2 == 0 else xm
                gi = ob[2 * ib + k] + ((ob[32 + ib] << (8 - 4 * k)) & 0x700)
                for j in range(8):
                    wj = w[8 * k + j]
                    qv = q[levels[gi, j]] * mult
                    sumqx += wj * qv * xb[8 * k + j]
                    sumq2 += wj * qv * qv
        if sumq2 > 0:
            d = sumqx / sumq2
        dh[ibl] = d * F32(1.1125)
        for j in range(4):
            ob[48 + 2 * j] = sc[j] & 255
            ob[49 + 2 * j] = sc[j] >> 8


def _run(kernel, x, qw, tables, type_size):
    x = np.ascontiguousarray(x, dtype=np.float32)
    has_qw = qw is not None
    qw = np.ascontiguousarray(qw, dtype=np.float32) if has_qw else x
    out = np.empty((x.shape[0], type_size), np.uint8)
    dh = np.empty(x.shape[0], np.float32)
    kernel(x, qw, has_qw, *tables, out, dh)
    with np.errstate(over="ignore"):
        return out, dh.astype(np.float16).view(np.uint16)


def quantize_iq1_s(x: np.ndarray, qw: np.ndarray, tables: tuple) -> np.ndarray:
    """IQ1_S blocks of x with importance weights qw; `tables`: (levels (G, 8), map, slot, count, table, width)."""
    out, d16 = _run(_iq1_s_kernel, x, qw, tables, IQ1_S_BYTES)
    out[:, 0] = d16 & 255
    out[:, 1] = d16 >> 8
    return out


def quantize_iq1_m(x: np.ndarray, qw: np.ndarray | None, tables: tuple) -> np.ndarray:
    """IQ1_M blocks of x (qw may be None: weights x^2); `tables` as for quantize_iq1_s."""
    out, d16 = _run(_iq1_m_kernel, x, qw, tables, IQ1_M_BYTES)
    sc = out[:, 48:].view("<u2")             # the fp16 d's four nibbles on top of the four scale words (d16 is 0
    for j in range(4):                       # for a block ggml leaves all zero)
        sc[:, j] |= ((d16 >> (4 * j)) & 0xF) << 12
    return out
