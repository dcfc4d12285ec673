"""IQ1_S and IQ1_M compiled with numba, byte-identical to ggml's quantize_row_iq1_s_impl / quantize_row_iq1_m_impl.

Why a loop per sub-block: IQ1 rounds each sub-block (32 values for IQ1_S, 16 for IQ1_M) to three levels by an
exhaustive search over the two boundaries that split its sorted values (561 splits of 32, 153 of 16), scored with
prefix sums; then each group of 8 that is not a grid point is replaced by its best neighbour. In NumPy, with every
split of every sub-block materialised, this ran at a quarter of ggml's single core; as loops that stay in cache,
doing C's work with fewer operations (same floats), it runs at 1.5-1.7x (docs/gguf.md §6.3).

The float rules are ggml's (modelport.gguf.jit_math): float32 throughout, C's expression order, sequential sums. The
sort is stable, as glibc's qsort (a merge sort) is: equal values keep their order. The grid, lattice map and
neighbour lists come from modelport.gguf.iq_grid (`iq1_tables`), passed in as arrays; the fp16 block scales are
converted here in NumPy (round to nearest even, as ggml's conversion).

Imported only when an IQ1 kernel first runs (numba costs 0.5 s to import); `quantize_iq1_s` / `quantize_iq1_m` take
x and qw (importance weights, or None for IQ1_M) of shape (nblocks, 256) float32 and return (nblocks, type_size)
uint8.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .jit_math import F32, block_sigma2, jit, nearest_int

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
def _stable_order(xb, idx, rank):
    """idx: the indices of xb sorted by value, equal values in index order (what glibc's merge sort gives). Each
    value's rank is counted (values below it, and equal ones before it), for all values at once in float32 lanes
    (exact: small integers): a loop without branches that the compiler vectorises, faster than a sort of 16 or 32
    values (measured: 0.4 us against 0.56 for an insertion sort of 32)."""
    n = xb.size
    rank[:n] = F32(0)
    for j in range(n):
        v = xb[j]
        for i in range(n):
            rank[i] += F32(1) if (v < xb[i]) | ((v == xb[i]) & (j < i)) else F32(0)
    for i in range(n):
        idx[int(rank[i])] = i


@jit
def _best_neighbour(count, nbr_code, map3, slot, xb, w, scale, q, terms, head):
    """iq1_find_best_neighbour2: among the off-grid group's neighbours, the grid point with the least
    d2 = sum w*(scale*q - x)^2 over the group (x signed, q the shifted level values); the first on ties.

    The same floats as C's loop, fewer operations: each term depends only on the coordinate and its level, so the
    24 terms are computed once (`terms`, 4*coordinate + level); the running sum over the first four coordinates
    depends only on their levels, so it is tabulated for the 81 combinations (`head`, by their 2-bit code); a
    neighbour's d2 is then its head plus the other four terms, added in C's order."""
    for i in range(8):
        for lv in range(3):
            diff = scale * q[lv] - xb[i]
            terms[4 * i + lv] = w[i] * diff * diff
    for l0 in range(3):
        for l1 in range(3):
            s01 = terms[l0] + terms[4 + l1]
            for l2 in range(3):
                s012 = s01 + terms[8 + l2]
                for l3 in range(3):
                    head[l0 | (l1 << 2) | (l2 << 4) | (l3 << 6)] = s012 + terms[12 + l3]
    best = F32(_FLT_MAX)
    best_c = nbr_code[slot, 0]          # (ggml's fallback when no distance is finite: not reached by finite data)
    for j in range(count[slot]):
        c = nbr_code[slot, j]
        d2 = head[c & 255] + terms[16 + ((c >> 8) & 3)]
        d2 += terms[20 + ((c >> 10) & 3)]
        d2 += terms[24 + ((c >> 12) & 3)]
        d2 += terms[28 + ((c >> 14) & 3)]
        if d2 < best:
            best = d2
            best_c = c
    u3 = 0
    m = 1
    for i in range(8):
        u3 += ((best_c >> (2 * i)) & 3) * m
        m *= 3
    return map3[u3]


@jit
def _grid_index(L, k, map3):
    """The group k of L (levels 0..2) as a base-3 code, and its grid index (-1: not a grid point)."""
    u3 = 0
    m = 1
    for j in range(8):
        u3 += L[8 * k + j] * m
        m *= 3
    return u3, map3[u3]


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
def _better(sqx, sq2, best):
    """C's test for a new best candidate (sumqx^2/sumq2 larger, written without the division)."""
    return sq2 > 0 and sqx * sqx > best * sq2


@jit
def _beats(sqx, sq2, best):
    """C's test for a new best candidate (sumq2 > 0 and sumqx^2 > best*sumq2), without a branch."""
    return (sq2 > 0) & (sqx * sqx > best * sq2)


@jit
def _pair_s(sumx, sumw, i1, i2, a_x, a_w, tails, xq, t):
    """sumqx, sumq2 of the split (i1, i2) with levels xq, as C writes them: (a + b) + c, the level terms of i1 (a_x,
    a_w) and of i2 (tails[t], tails[t + 1]) computed once."""
    sqx = a_x + (sumx[i2] - sumx[i1]) * xq[1] + tails[t, i2]
    sq2 = a_w + (sumw[i2] - sumw[i1]) * xq[1] * xq[1] + tails[t + 1, i2]
    return sqx, sq2


@jit
def _split_search_s(sumx, sumw, xp, xm, mx, tails):
    """IQ1_S's search over the splits (i1 <= i2) of 32 sorted values and the two shifts, in C's order, from the
    prefix sums sumx (of w*x) and sumw (of w): returns (scale, i1, i2, shift), i1 = -1 when nothing won.

    Exact and faster than C's single loop: a row of i2 is first only counted, against the best at its start, in a
    loop without branches (vectorised); when nothing in it beats that best, C's scan would change nothing there.
    Only the rows with a candidate are scanned in order."""
    n = 32
    for i2 in range(n + 1):                      # the third level's terms depend on i2 alone
        tails[0, i2] = (sumx[n] - sumx[i2]) * xp[2]
        tails[1, i2] = (sumw[n] - sumw[i2]) * xp[2] * xp[2]
        tails[2, i2] = (sumx[n] - sumx[i2]) * xm[2]
        tails[3, i2] = (sumw[n] - sumw[i2]) * xm[2] * xm[2]
    best = -F32(_FLT_MAX)
    scale = mx
    bi1 = -1
    bi2 = -1
    bshift = 0
    for i1 in range(n + 1):
        axp = (sumx[i1] - sumx[0]) * xp[0]
        awp = (sumw[i1] - sumw[0]) * xp[0] * xp[0]
        axm = (sumx[i1] - sumx[0]) * xm[0]
        awm = (sumw[i1] - sumw[0]) * xm[0] * xm[0]
        hits = 0
        for i2 in range(i1, n + 1):
            sqx, sq2 = _pair_s(sumx, sumw, i1, i2, axp, awp, tails, xp, 0)
            hits += _beats(sqx, sq2, best)
            sqx, sq2 = _pair_s(sumx, sumw, i1, i2, axm, awm, tails, xm, 2)
            hits += _beats(sqx, sq2, best)
        if hits == 0:
            continue
        for i2 in range(i1, n + 1):
            sqx, sq2 = _pair_s(sumx, sumw, i1, i2, axp, awp, tails, xp, 0)
            if sq2 > 0 and sqx * sqx > best * sq2:
                scale = sqx / sq2
                best = scale * sqx
                bi1, bi2, bshift = i1, i2, 1
            sqx, sq2 = _pair_s(sumx, sumw, i1, i2, axm, awm, tails, xm, 2)
            if sq2 > 0 and sqx * sqx > best * sq2:
                scale = sqx / sq2
                best = scale * sqx
                bi1, bi2, bshift = i1, i2, -1
    return scale, bi1, bi2, bshift


@jit
def _halves_m(px, pw, i1, i2, p2, m2, cp1, cp2, cm1, cm2):
    """IQ1_M's per-half sums of the split (i1, i2) as C computes them, with each half's two shifts:
    (qx_p, qx_m, q2_p, q2_m) of half 0, then of half 1."""
    sx0 = px[0, i1] + px[0, i2]
    sx1 = px[1, i1] + px[1, i2]
    return (px[0, 16] * p2 - sx0, px[0, 16] * m2 - sx0,
            pw[0, 16] * p2 * p2 + pw[0, i1] * cp1 + pw[0, i2] * cp2,
            pw[0, 16] * m2 * m2 + pw[0, i1] * cm1 + pw[0, i2] * cm2,
            px[1, 16] * p2 - sx1, px[1, 16] * m2 - sx1,
            pw[1, 16] * p2 * p2 + pw[1, i1] * cp1 + pw[1, i2] * cp2,
            pw[1, 16] * m2 * m2 + pw[1, i1] * cm1 + pw[1, i2] * cm2)


@jit
def _split_search_m(px, pw, xp, xm, mx):
    """IQ1_M's search over the splits of 16 sorted values and the four shift pairs k (0: +,+  1: +,-  2: -,+
    3: -,-), from prefix sums kept per half (px, pw (2, 17)): with v[0]-v[1] = v[1]-v[2] = -1 a split's sums are
    T*v[2] - px[i1] - px[i2] and the like, as in C. Returns (scale, i1, i2, k); rows counted first as for IQ1_S."""
    n = 16
    p2 = xp[2]
    m2 = xm[2]
    cp1 = xp[0] * xp[0] - xp[1] * xp[1]
    cp2 = xp[1] * xp[1] - xp[2] * xp[2]
    cm1 = xm[0] * xm[0] - xm[1] * xm[1]
    cm2 = xm[1] * xm[1] - xm[2] * xm[2]
    best = -F32(_FLT_MAX)
    scale = mx
    bi1 = -1
    bi2 = -1
    bk = -1
    for i1 in range(n + 1):
        hits = 0
        for i2 in range(i1, n + 1):
            xp0, xm0, qp0, qm0, xp1, xm1, qp1, qm1 = _halves_m(px, pw, i1, i2, p2, m2, cp1, cp2, cm1, cm2)
            hits += (_beats(xp0 + xp1, qp0 + qp1, best) + _beats(xp0 + xm1, qp0 + qm1, best)
                     + _beats(xm0 + xp1, qm0 + qp1, best) + _beats(xm0 + xm1, qm0 + qm1, best))
        if hits == 0:
            continue
        for i2 in range(i1, n + 1):
            xp0, xm0, qp0, qm0, xp1, xm1, qp1, qm1 = _halves_m(px, pw, i1, i2, p2, m2, cp1, cp2, cm1, cm2)
            for k in range(4):
                sqx = (xp0 if k < 2 else xm0) + (xp1 if k % 2 == 0 else xm1)
                sq2 = (qp0 if k < 2 else qm0) + (qp1 if k % 2 == 0 else qm1)
                if sq2 > 0 and sqx * sqx > best * sq2:
                    scale = sqx / sq2
                    best = scale * sqx
                    bi1, bi2, bk = i1, i2, k
    return scale, bi1, bi2, bk


@jit
def _iq1_s_kernel(x, qw, has_qw, levels, map3, slot3, count, nbr_code, out, dh):
    """quantize_row_iq1_s_impl over the blocks of x: writes qs and qh (without the fp16 d) into out, d*1.125 into
    dh (0 for a block with no live sub-block)."""
    xp = _levels(1)
    xm = _levels(-1)
    w = np.empty(32, np.float32)
    idx = np.empty(32, np.int64)
    rank = np.empty(32, np.float32)
    terms = np.empty(32, np.float32)
    head = np.empty(256, np.float32)
    tails = np.empty((4, 33), np.float32)
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
        sigma2 = block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(8):
            xb = xbl[32 * ib:32 * ib + 32]
            _weights(xb, qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, w)
            scales[ib] = F32(0)
            shifts[ib] = 1
            mx = _abs_max(xb)
            if mx < F32(1e-12):
                continue
            _stable_order(xb, idx, rank)
            sumx[0] = F32(0)
            sumw[0] = F32(0)
            for j in range(32):
                i = idx[j]
                sumx[j + 1] = sumx[j] + w[i] * xb[i]
                sumw[j + 1] = sumw[j] + w[i]
            scale, bi1, bi2, bshift = _split_search_s(sumx, sumw, xp, xm, mx, tails)
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
                u, gi = _grid_index(L, k, map3)
                if gi < 0:
                    on_grid = False
                    gi = _best_neighbour(count, nbr_code, map3, slot3[u], xb[8 * k:8 * k + 8],
                                         w[8 * k:8 * k + 8], scale, q, terms, head)
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
def _iq1_m_kernel(x, qw, has_qw, levels, map3, slot3, count, nbr_code, out, dh):
    """quantize_row_iq1_m_impl over the blocks of x: writes qs, qh and the 3-bit scales into out, the refitted
    d*1.1125 into dh (its fp16 goes into the scales' top nibbles) and 0 for a block with no live sub-block."""
    xp = _levels(1)
    xm = _levels(-1)
    w = np.empty(16, np.float32)
    idx = np.empty(16, np.int64)
    rank = np.empty(16, np.float32)
    terms = np.empty(32, np.float32)
    head = np.empty(256, np.float32)
    px = np.empty((2, 17), np.float32)
    pw = np.empty((2, 17), np.float32)
    L = np.empty(16, np.int64)
    index = np.empty(2, np.int64)
    scales = np.empty(16, np.float32)
    shifts = np.empty(16, np.int64)
    masks = np.array([0x00, 0x80, 0x08, 0x88], np.int64)
    for ibl in range(x.shape[0]):
        xbl = x[ibl]
        ob = out[ibl]
        ob[:] = 0
        dh[ibl] = F32(0)
        sigma2 = block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(16):
            xb = xbl[16 * ib:16 * ib + 16]
            _weights(xb, qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, w)
            scales[ib] = F32(0)
            shifts[ib] = 0
            mx = _abs_max(xb)
            if mx < F32(1e-7):
                continue
            _stable_order(xb, idx, rank)
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
            scale, bi1, bi2, bk = _split_search_m(px, pw, xp, xm, mx)
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
                u, gi = _grid_index(L, k, map3)
                if gi < 0:
                    on_grid = False
                    gi = _best_neighbour(count, nbr_code, map3, slot3[u], xb[8 * k:8 * k + 8],
                                         w[8 * k:8 * k + 8], scale, q0 if k == 0 else q1, terms, head)
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


class KernelTables(NamedTuple):
    """IQ1's grid as the kernels read it (lattice points by base-3 code: small tables that stay in cache)."""
    levels: np.ndarray       # (G, 8) int8: a grid point's levels 0..2
    map3: np.ndarray         # (3^8,) int16: lattice point (base-3 code) -> grid index, -1 off the grid
    slot3: np.ndarray        # (3^8,) int32: off-grid lattice point -> its row in nbr_code
    count: np.ndarray        # (slots,) int32: how many neighbours the row lists
    nbr_code: np.ndarray     # (slots, width) uint16: the neighbours, in ggml's order, by 2-bit code


def kernel_tables(levels, lattice_map, slot, count, table, width) -> KernelTables:
    """KernelTables from modelport.gguf.iq_grid's IQ1 grid: levels (G, 8), the lattice map and neighbour slots by
    2-bit code, and the neighbour lists as a flat table of rows of `width` with a count per slot."""
    levels = np.asarray(levels)
    codes2 = (levels.astype(np.int64) << (2 * np.arange(8))).sum(axis=1)
    digits = (np.arange(3 ** 8)[:, None] // 3 ** np.arange(8)) % 3             # base-3 code -> levels
    by3 = (digits << (2 * np.arange(8))).sum(axis=1)                          # -> 2-bit code
    return KernelTables(np.ascontiguousarray(levels, np.int8), np.asarray(lattice_map)[by3].astype(np.int16),
                        np.asarray(slot)[by3].astype(np.int32), np.ascontiguousarray(count, np.int32),
                        np.ascontiguousarray(codes2[np.asarray(table).reshape(-1, width)], np.uint16))


def _run(kernel, x, qw, tables: KernelTables, type_size):
    x = np.ascontiguousarray(x, dtype=np.float32)
    has_qw = qw is not None
    qw = np.ascontiguousarray(qw, dtype=np.float32) if has_qw else x
    out = np.empty((x.shape[0], type_size), np.uint8)
    dh = np.empty(x.shape[0], np.float32)
    kernel(x, qw, has_qw, *tables, out, dh)
    with np.errstate(over="ignore"):
        return out, dh.astype(np.float16).view(np.uint16)


def quantize_iq1_s(x: np.ndarray, qw: np.ndarray, tables: KernelTables) -> np.ndarray:
    """IQ1_S blocks of x with importance weights qw."""
    out, d16 = _run(_iq1_s_kernel, x, qw, tables, IQ1_S_BYTES)
    out[:, 0] = d16 & 255
    out[:, 1] = d16 >> 8
    return out


def quantize_iq1_m(x: np.ndarray, qw: np.ndarray | None, tables: KernelTables) -> np.ndarray:
    """IQ1_M blocks of x (qw may be None: weights x^2)."""
    out, d16 = _run(_iq1_m_kernel, x, qw, tables, IQ1_M_BYTES)
    sc = out[:, 48:].view("<u2")             # the fp16 d's four nibbles on top of the four scale words (d16 is 0
    for j in range(4):                       # for a block ggml leaves all zero)
        sc[:, j] |= ((d16 >> (4 * j)) & 0xF) << 12
    return out
