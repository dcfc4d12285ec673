"""IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S compiled with numba, byte-identical to ggml's quantize_row_iq*_impl.

Why a loop per sub-block: each type rounds a sub-block (16 or 32 values) at a few dozen trial scales, snapping every
group of 8 (IQ2) or 4 (IQ3) that is not a grid point to its best neighbour by weighted distance, and keeps the scale
with the best fit. The work per group depends on the data (whether it is off the grid, how long its neighbour list
is), which NumPy could only vectorise by padding and masking, at 0.37-0.50x of ggml's single core; as loops they run
in cache at 1.2-1.5x (docs/gguf.md §6.3).

The float rules are ggml's (modelport.gguf.jit_math): float32 throughout, C's expression order, sequential sums. The
grid points, lattice map and neighbour lists come from modelport.gguf.iq_grid (built from gguf-py's grids as ggml
builds them) and are passed in as the tuple `tables` = (points (G, dim) float32 = 2*level+1, levels (G, dim) int32,
map code -> grid index or -1, slot code -> neighbour list, count per list, the lists (flat, rows of `width`), width).
The fp16 block scales are converted in NumPy after the loop (round to nearest even, as ggml's conversion).

Imported only when one of these types is first quantized (numba costs 0.5 s to import); `quantize(name, x, qw,
tables)` takes x and qw (importance weights, or None) of shape (nblocks, 256) float32 and returns (nblocks,
type_size) uint8.
"""

from __future__ import annotations

import numpy as np

from .jit_math import F32, block_sigma2, jit, nearest_int

QK_K = 256
_FLT_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------------------ shared steps

@jit
def _weights(xb, qwb, has_qw, sigma2, sigma_floor, weight, waux):
    """ggml's weights qw*sqrt(sigma2 + x^2), or without importance weights x^2 (sigma2/4 + x^2 with `sigma_floor`,
    IQ2_S); waux = sqrt(weight), what the neighbour search weighs by."""
    for i in range(xb.size):
        if has_qw:
            w = qwb[i] * np.sqrt(sigma2 + xb[i] * xb[i])
        elif sigma_floor:
            w = F32(0.25) * sigma2 + xb[i] * xb[i]
        else:
            w = xb[i] * xb[i]
        weight[i] = w
        waux[i] = np.sqrt(w)


@jit
def _fold_signs(xb, weight, parity, xval, signs):
    """|x| into xval and the sign bits of each group of 8 into signs; returns max(xval). With `parity` (the types whose
    signs take 7 bits a group) a group with an odd number of negatives keeps its least important element negative in
    xval, its sign bit flipped."""
    for k in range(xb.size // 8):
        nflip = 0
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= 0:
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                nflip += 1
                s |= 1 << i
        if parity and nflip % 2:
            imin = 0
            lo = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < lo:
                    lo = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127 if parity else s
    mx = xval[0]
    for i in range(1, xb.size):
        mx = mx if mx > xval[i] else xval[i]
    return mx


#: how _search re-rounds at the chosen scale: the groups that were off the grid, if any (IQ2_XS, IQ2_S, IQ3_XXS);
#: all groups if any was off, every group counted off before a trial wins (IQ3_S); all groups always (IQ2_XXS)
REDO_OFF, REDO_ALL_IF_OFF, REDO_ALL = 0, 1, 2


@jit
def _search(xval, weight, waux, dim, bits, kmax, nsteps, step, denom, scale, redo, tables, Ls, ons):
    """ggml's scale search for a sub-block: trial scales id = (2*kmax-1 + is*step)/denom for is in -nsteps..nsteps,
    each group rounded to its lattice levels and, where that point is not in the grid, replaced by its neighbour
    with the least sum waux*(scale*q - x)^2 (the first on ties); the trial with the best fit is kept (levels in
    Ls[1], on-grid flags in ons[1]). Then the groups `redo` names are re-rounded at the kept scale and the scale
    refitted. Returns the scale (unchanged where no trial won and nothing was re-rounded) and whether every
    neighbour search found one at a finite distance (ggml asserts that; values near 1e10 overflow the distances).

    One loop over the trials and the re-rounding, with no call inside: numba counts references on every array a
    call passes, which cost more than the rounding itself here. The sizes come in as run-time ints (np.int64 at
    the call: a literal would compile one copy of this, the largest function, per type, for at most 5 % speed)."""
    pts, levels, gmap, slot, count, table, width = tables
    n = xval.size
    ngroups = n // dim
    for k in range(ngroups):
        ons[1, k] = redo == REDO_OFF
        for i in range(dim):
            Ls[1, k * dim + i] = 0
    best = F32(0)
    found = True
    last = 2 * nsteps + 1                  # trials 0 .. 2*nsteps, then the re-rounding
    for t in range(last + 1):
        r = 0                              # which row of Ls/ons this pass writes: 0 a trial, 1 the re-rounding
        if t < last:
            id_ = (F32(2 * kmax - 1) + F32(t - nsteps) * F32(step)) / denom
            this_scale = F32(1) / id_
        else:
            if not scale > 0:
                break
            if redo != REDO_ALL:
                off = False
                for k in range(ngroups):
                    off = off or not ons[1, k]
                if not off:
                    break
            r = 1
            id_ = F32(1) / scale
            this_scale = scale
        for k in range(ngroups):
            if r == 1 and redo == REDO_OFF and ons[1, k]:
                continue
            o = k * dim
            u = 0
            for i in range(dim):
                l = nearest_int(F32(0.5) * (id_ * xval[o + i] - F32(1)))
                l = max(0, min(kmax - 1, l))
                Ls[r, o + i] = l
                u |= l << (bits * i)
            on = gmap[u] >= 0
            ons[r, k] = on
            if on:
                continue
            s = slot[u]
            row = s * width
            best_d2 = F32(_FLT_MAX)
            win = -1
            for j in range(count[s]):
                g = table[row + j]
                d2 = F32(0)
                for i in range(dim):
                    diff = this_scale * pts[g, i] - xval[o + i]
                    d2 += waux[o + i] * diff * diff
                if d2 < best_d2:
                    best_d2 = d2
                    win = g
            if win < 0:
                found = False
                win = table[row]
            for i in range(dim):
                Ls[r, o + i] = levels[win, i]
        sumqx = F32(0)
        sumq2 = F32(0)
        for i in range(n):
            w = weight[i]
            q = F32(2 * Ls[r, i] + 1)
            sumqx += w * xval[i] * q
            sumq2 += w * q * q
        if r == 1:
            if sumq2 > 0:
                scale = sumqx / sumq2
        elif sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(n):
                Ls[1, i] = Ls[0, i]
            for k in range(ngroups):
                ons[1, k] = ons[0, k]
    return scale, found


@jit
def _grid_index(L, o, dim, bits, gmap):
    u = 0
    for i in range(dim):
        u |= L[o + i] << (bits * i)
    return gmap[u]


@jit
def _scale_nibble(scale, id_):
    """A sub-block scale as ggml's 4-bit level nearest_int(0.5*(scale/d - 1)), clamped to 0..15."""
    return max(0, min(15, nearest_int(F32(0.5) * (id_ * scale - F32(1)))))


@jit
def _put_u32(out, row, pos, v):
    for b in range(4):
        out[row, pos + b] = (v >> (8 * b)) & 255


@jit
def _make_qp_quants(n, nmax, x, Lq, w):
    """ggml's make_qp_quants: the weighted least-squares scale for levels 0..nmax (iterated coordinate-wise). Lq is
    C's uint8 L: a negative level (the sign-folded element) wraps to 255 there and is read back wrapped."""
    mx = F32(0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < F32(1e-15):
        for i in range(n):
            Lq[i] = 0
        return F32(0)
    iscale = F32(nmax) / mx
    for i in range(n):
        Lq[i] = nearest_int(iscale * x[i]) & 255
    scale = F32(1) / iscale
    best_mse = F32(0)
    for i in range(n):
        diff = x[i] - scale * F32(Lq[i])
        best_mse += w[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F32(0.1) * F32(is_) + F32(nmax)) / mx
        scale_is = F32(1) / iscale_is
        mse = F32(0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            mse += w[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F32(0)
    suml2 = F32(0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        Lq[i] = l & 255
        sumlx += w[i] * x[i] * F32(l)
        suml2 += w[i] * F32(l) * F32(l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            wi = w[i]
            li = F32(Lq[i])
            slx = sumlx - wi * x[i] * li
            sl2 = suml2 - wi * li * li
            if slx > 0 and sl2 > 0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != Lq[i]:
                    slx += wi * x[i] * F32(new_l)
                    sl2 += wi * F32(new_l) * F32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        Lq[i] = new_l & 255
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F32(0)


# ---------------------------------------------------------------------------------------------- the types

@jit
def _iq2_xxs(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq2_xxs_impl: sub-blocks of 32, groups of 8; the search starts from make_qp_quants' scale and
    every group is re-rounded at the winner. Bytes: qs as uint32 pairs (4 grid indices; 4x7 sign bits + scale)."""
    gmap = tables[2]
    weight, waux, xval = np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32)
    Ls, ons, Lq = np.zeros((2, 32), np.int64), np.zeros((2, 4), np.bool_), np.zeros(32, np.int64)
    signs = np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    found = True
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = block_sigma2(xbl, 1)
        max_scale = F32(0)
        for ib in range(8):
            xb = xbl[32 * ib:32 * ib + 32]
            _weights(xb, qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, False, weight, waux)
            mx = _fold_signs(xb, weight, True, xval, signs)
            scales[ib] = 0
            if mx < F32(1e-15):
                continue
            scale = _make_qp_quants(32, 4, xval, Lq, weight)
            eff_max = scale * F32(3)
            if eff_max <= 0:
                continue
            scale, ok = _search(xval, weight, waux, np.int64(8), np.int64(2), np.int64(3), np.int64(6), 0.1, eff_max,
                                scale, np.int64(REDO_ALL), tables, Ls, ons)
            found = found and ok
            if scale < 0:
                scale = -scale
                for k in range(4):
                    signs[k] = ~signs[k] & 127
            L = Ls[1]
            _put_u32(out, ibl, 2 + 8 * ib, _grid_index(L, 0, 8, 2, gmap) | (_grid_index(L, 8, 8, 2, gmap) << 8)
                     | (_grid_index(L, 16, 8, 2, gmap) << 16) | (_grid_index(L, 24, 8, 2, gmap) << 24))
            _put_u32(out, ibl, 6 + 8 * ib, signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if not max_scale:
            out[ibl, :] = 0
            dh[ibl] = 0
            continue
        d = max_scale / F32(31)
        dh[ibl] = d
        id_ = F32(1) / d
        for ib in range(8):
            out[ibl, 9 + 8 * ib] |= _scale_nibble(scales[ib], id_) << 4
    return found


@jit
def _track(xb, qwb, has_qw, sigma2, sigma_floor, parity, eps, dim, bits, kmax, nsteps, step, redo, tables, weight,
           waux, xval, signs, Ls, ons):
    """The sub-block of IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: weights, signs folded, the search from max/(2*kmax-1), signs
    flipped with a negative scale; the levels end in Ls[1]. Returns (scale, live, found as _search): live False for
    a sub-block ggml skips (max below eps, or 0), its levels 0."""
    _weights(xb, qwb, has_qw, sigma2, sigma_floor, weight, waux)
    mx = _fold_signs(xb, weight, parity, xval, signs)
    if mx < F32(eps) or mx == 0:
        Ls[1, :] = 0
        return F32(0), False, True
    scale, found = _search(xval, weight, waux, np.int64(dim), np.int64(bits), np.int64(kmax), np.int64(nsteps), step, mx,
                    mx / F32(2 * kmax - 1), np.int64(redo), tables, Ls, ons)
    if scale < 0:
        scale = -scale
        for k in range(xb.size // 8):
            signs[k] = ~signs[k] & (127 if parity else 255)
    return scale, True, found


@jit
def _iq2_xs(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq2_xs_impl: sub-blocks of 16, groups of 8. Bytes: qs as uint16 (grid index | 7 sign bits << 9),
    then the scale nibbles."""
    gmap = tables[2]
    weight, waux, xval = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
    Ls, ons, signs = np.zeros((2, 16), np.int64), np.zeros((2, 2), np.bool_), np.zeros(2, np.int64)
    scales = np.empty(16, np.float32)
    found = True
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = block_sigma2(xbl, 1)
        max_scale = F32(0)
        for ib in range(16):
            scale, live, ok = _track(xbl[16 * ib:16 * ib + 16], qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, False,
                                 True, 1e-15, 8, 2, 3, 9, 0.1, REDO_OFF, tables, weight, waux, xval, signs, Ls, ons)
            found = found and ok
            scales[ib] = scale
            if not live:
                continue
            for k in range(2):
                v = _grid_index(Ls[1], 8 * k, 8, 2, gmap) | (signs[k] << 9)
                out[ibl, 2 + 4 * ib + 2 * k] = v & 255
                out[ibl, 3 + 4 * ib + 2 * k] = v >> 8
            max_scale = max_scale if max_scale > scale else scale
        if not max_scale:
            out[ibl, :] = 0
            dh[ibl] = 0
            continue
        d = max_scale / F32(31)
        dh[ibl] = d
        id_ = F32(1) / d
        for ib in range(16):
            out[ibl, 66 + ib // 2] |= _scale_nibble(scales[ib], id_) << (4 * (ib % 2))
    return found


@jit
def _iq2_s(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq2_s_impl: sub-blocks of 16, groups of 8, 8 sign bits a group, 10-bit grid indices. Bytes: the
    indices' low bytes, the signs, the indices' top 2 bits (4 a byte), the scale nibbles."""
    gmap = tables[2]
    weight, waux, xval = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
    Ls, ons, signs = np.zeros((2, 16), np.int64), np.zeros((2, 2), np.bool_), np.zeros(2, np.int64)
    scales = np.empty(16, np.float32)
    found = True
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(16):
            scale, live, ok = _track(xbl[16 * ib:16 * ib + 16], qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, True,
                                 False, 1e-8, 8, 2, 3, 9, 0.1, REDO_OFF, tables, weight, waux, xval, signs, Ls, ons)
            found = found and ok
            scales[ib] = scale
            if not live:
                continue
            for k in range(2):
                i8 = 2 * ib + k
                gi = _grid_index(Ls[1], 8 * k, 8, 2, gmap)
                out[ibl, 2 + i8] = gi & 255
                out[ibl, 66 + i8 // 4] |= (gi >> 8) << (2 * (i8 % 4))
                out[ibl, 34 + i8] = signs[k]
            max_scale = max_scale if max_scale > scale else scale
        if not max_scale:
            dh[ibl] = 0
            continue
        d = max_scale / F32(31)
        dh[ibl] = d * F32(0.9875)
        id_ = F32(1) / d
        for ib in range(16):
            out[ibl, 74 + ib // 2] |= _scale_nibble(scales[ib], id_) << (4 * (ib % 2))
    return found


@jit
def _iq3_xxs(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq3_xxs_impl (grid of 256): sub-blocks of 32, groups of 4. Bytes: 64 grid indices, then per
    sub-block a uint32 of 4x7 sign bits and the scale nibble."""
    gmap = tables[2]
    weight, waux, xval = np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32)
    Ls, ons, signs = np.zeros((2, 32), np.int64), np.zeros((2, 8), np.bool_), np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    found = True
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(8):
            scale, live, ok = _track(xbl[32 * ib:32 * ib + 32], qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, False,
                                 True, 1e-8, 4, 3, 8, 15, 0.2, REDO_OFF, tables, weight, waux, xval, signs, Ls, ons)
            found = found and ok
            scales[ib] = scale
            if not live:
                continue
            for k in range(8):
                out[ibl, 2 + 8 * ib + k] = _grid_index(Ls[1], 4 * k, 4, 3, gmap)
            _put_u32(out, ibl, 66 + 4 * ib, signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
            max_scale = max_scale if max_scale > scale else scale
        if not max_scale:
            out[ibl, :] = 0
            dh[ibl] = 0
            continue
        d = max_scale / F32(31)
        dh[ibl] = d * F32(1.0125)
        id_ = F32(1) / d
        for ib in range(8):
            out[ibl, 69 + 4 * ib] |= _scale_nibble(scales[ib], id_) << 4
    return found


@jit
def _iq3_s(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq3_s_impl (grid of 512): sub-blocks of 32, groups of 4, every group re-rounded at the winning
    scale. Bytes: grid indices' low bytes, their top bits (8 a byte), 8 sign bits a group of 8, scale nibbles.
    ggml advances its index and sign pointers only past the sub-blocks it quantizes: after a skipped (all-zero)
    sub-block the later ones' bytes move down, and the tail stays zero."""
    gmap = tables[2]
    weight, waux, xval = np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32)
    Ls, ons, signs = np.zeros((2, 32), np.int64), np.zeros((2, 8), np.bool_), np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    found = True
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = block_sigma2(xbl, 2)
        max_scale = F32(0)
        done = 0
        for ib in range(8):
            scale, live, ok = _track(xbl[32 * ib:32 * ib + 32], qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, False,
                                 False, 0.0, 4, 3, 8, 9, 0.2, REDO_ALL_IF_OFF, tables, weight, waux, xval, signs, Ls,
                                 ons)
            found = found and ok
            scales[ib] = scale
            if not live:
                continue
            for k in range(8):
                gi = _grid_index(Ls[1], 4 * k, 4, 3, gmap)
                out[ibl, 2 + 8 * done + k] = gi & 255
                out[ibl, 66 + ib] |= (gi >> 8) << k
            for k in range(4):
                out[ibl, 74 + 4 * done + k] = signs[k]
            done += 1
            max_scale = max_scale if max_scale > scale else scale
        if not max_scale:
            dh[ibl] = 0
            continue
        d = max_scale / F32(31)
        dh[ibl] = d * F32(1.033)
        id_ = F32(1) / d
        for ib in range(0, 8, 2):
            out[ibl, 106 + ib // 2] = _scale_nibble(scales[ib], id_) | (_scale_nibble(scales[ib + 1], id_) << 4)
    return found


#: type -> (kernel, bytes per block)
_KERNELS = {"IQ2_XXS": (_iq2_xxs, 66), "IQ2_XS": (_iq2_xs, 74), "IQ2_S": (_iq2_s, 82), "IQ3_XXS": (_iq3_xxs, 98),
            "IQ3_S": (_iq3_s, 110)}


def quantize(name: str, x: np.ndarray, qw: np.ndarray | None, tables: tuple) -> np.ndarray:
    """Blocks x (nblocks, 256) float32 with importance weights qw (same shape, or None) -> (nblocks, type_size).
    ValueError where ggml would abort: values so large (about 1e9 without importance weights) that every weighted
    distance of a neighbour search overflows."""
    kernel, type_size = _KERNELS[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], type_size), np.uint8)
    dh = np.empty(x.shape[0], np.float32)
    has_qw = qw is not None
    if not kernel(x, np.ascontiguousarray(qw, dtype=np.float32) if has_qw else x, has_qw, tables, out, dh):
        raise ValueError(f"cannot quantize to {name}: values up to {float(np.abs(x).max()):.3g} overflow the float32 "
                         "distances of its grid search (ggml aborts on them)")
    out[:, :2] = dh.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return out
