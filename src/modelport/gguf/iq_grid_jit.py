"""IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S compiled with numba, byte-identical to ggml's quantize_row_iq*_impl.

Why a loop per sub-block: each type rounds a sub-block (16 or 32 values) at a few dozen trial scales, snapping every
group of 8 (IQ2) or 4 (IQ3) that is not a grid point to its best neighbour by weighted distance, and keeps the scale
with the best fit. The work per group depends on the data (whether it is off the grid, how long its neighbour list
is), which NumPy could only vectorise by padding and masking, at 0.2-0.5x of ggml's single core; as loops they run in
cache, at ggml's speed or better (docs/gguf.md §10).

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

from .jit_math import F32, jit, nearest_int

QK_K = 256
_FLT_MAX = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------------------ shared steps

@jit
def _block_sigma2(xb, mul):
    """mul * sum(x^2) / 256 over the block, summed in C's order (ggml's sigma2: mul 1 for IQ2_XXS/XS, else 2)."""
    s = F32(0)
    for i in range(QK_K):
        s += xb[i] * xb[i]
    return F32(mul) * s / F32(QK_K)


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


@jit
def _snap_group(xval, waux, o, dim, bits, kmax, id_, scale, tables, L):
    """Round the group at o to its lattice levels at inverse scale id_ (into L); if that point is not in the grid,
    put in its neighbour with the least sum waux*(scale*q - x)^2 (the first on ties). Returns whether it was on."""
    pts, levels, gmap, slot, count, table, width = tables
    u = 0
    for i in range(dim):
        l = nearest_int(F32(0.5) * (id_ * xval[o + i] - F32(1)))
        l = max(0, min(kmax - 1, l))
        L[o + i] = l
        u |= l << (bits * i)
    if gmap[u] >= 0:
        return True
    s = slot[u]
    row = s * width
    best = F32(_FLT_MAX)
    win = -1
    for j in range(count[s]):
        g = table[row + j]
        d2 = F32(0)
        for i in range(dim):
            diff = scale * pts[g, i] - xval[o + i]
            d2 += waux[o + i] * diff * diff
        if d2 < best:
            best = d2
            win = g
    for i in range(dim):
        L[o + i] = levels[win, i]
    return False


@jit
def _fit(xval, weight, L, n):
    """sumqx, sumq2 of the levels L (q = 2L+1), in C's order."""
    sumqx = F32(0)
    sumq2 = F32(0)
    for i in range(n):
        w = weight[i]
        q = F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@jit
def _scale_search(xval, weight, waux, n, dim, bits, kmax, nsteps, step, denom, scale, tables, L, Laux, on, on_aux):
    """ggml's trial scales id = (2*kmax-1 + is*step)/denom for is in -nsteps..nsteps: the levels (and which groups
    were on the grid) of the best fit so far go to L and `on`. Returns the scale, unchanged where no step won."""
    best = F32(0)
    for is_ in range(-nsteps, nsteps + 1):
        id_ = (F32(2 * kmax - 1) + F32(is_) * F32(step)) / denom
        this_scale = F32(1) / id_
        for k in range(n // dim):
            on_aux[k] = _snap_group(xval, waux, k * dim, dim, bits, kmax, id_, this_scale, tables, Laux)
        sumqx, sumq2 = _fit(xval, weight, Laux, n)
        if sumq2 > 0 and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(n):
                L[i] = Laux[i]
            for k in range(n // dim):
                on[k] = on_aux[k]
    return scale


@jit
def _refit(xval, weight, waux, n, dim, bits, kmax, scale, redo_all, on, tables, L):
    """Re-round the groups that were off the grid (all of them with `redo_all`) at the chosen scale, then fit the
    scale to the final levels."""
    id_ = F32(1) / scale
    for k in range(n // dim):
        if redo_all or not on[k]:
            _snap_group(xval, waux, k * dim, dim, bits, kmax, id_, scale, tables, L)
    sumqx, sumq2 = _fit(xval, weight, L, n)
    return sumqx / sumq2 if sumq2 > 0 else scale


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
    weight = np.empty(32, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.int64)
    Laux = np.zeros(32, np.int64)
    Lq = np.zeros(32, np.int64)
    on = np.zeros(4, np.bool_)
    on_aux = np.zeros(4, np.bool_)
    signs = np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = _block_sigma2(xbl, 1)
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
            scale = _scale_search(xval, weight, waux, 32, 8, 2, 3, 6, 0.1, eff_max, scale, tables, L, Laux, on,
                                  on_aux)
            if scale > 0:
                on[:] = False
                scale = _refit(xval, weight, waux, 32, 8, 2, 3, scale, True, on, tables, L)
            if scale < 0:
                scale = -scale
                for k in range(4):
                    signs[k] = ~signs[k] & 127
            lo = 0
            for k in range(4):
                lo |= _grid_index(L, 8 * k, 8, 2, gmap) << (8 * k)
            _put_u32(out, ibl, 2 + 8 * ib, lo)
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


@jit
def _track(xb, qwb, has_qw, sigma2, sigma_floor, parity, eps, dim, bits, kmax, nsteps, step, on_init, redo_all,
           tables, weight, waux, xval, signs, L, Laux, on, on_aux):
    """The sub-block of IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: the search from max/(2*kmax-1) that remembers which groups
    were on the grid, then the off-grid groups (all, with `redo_all`: IQ3_S) re-rounded at the winning scale; signs
    flipped with a negative scale. Returns (scale, False) for a sub-block ggml skips (max below eps, or 0)."""
    n = xb.size
    _weights(xb, qwb, has_qw, sigma2, sigma_floor, weight, waux)
    mx = _fold_signs(xb, weight, parity, xval, signs)
    L[:] = 0
    if mx < F32(eps) or mx == 0:
        return F32(0), False
    scale = mx / F32(2 * kmax - 1)
    on[:] = on_init
    scale = _scale_search(xval, weight, waux, n, dim, bits, kmax, nsteps, step, mx, scale, tables, L, Laux, on, on_aux)
    if scale > 0 and not on.all():
        scale = _refit(xval, weight, waux, n, dim, bits, kmax, scale, redo_all, on, tables, L)
    if scale < 0:
        scale = -scale
        for k in range(n // 8):
            signs[k] = ~signs[k] & (127 if parity else 255)
    return scale, True


@jit
def _iq2_xs(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq2_xs_impl: sub-blocks of 16, groups of 8. Bytes: qs as uint16 (grid index | 7 sign bits << 9),
    then the scale nibbles."""
    gmap = tables[2]
    weight, waux, xval = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
    L, Laux = np.zeros(16, np.int64), np.zeros(16, np.int64)
    on, on_aux = np.zeros(2, np.bool_), np.zeros(2, np.bool_)
    signs = np.zeros(2, np.int64)
    scales = np.empty(16, np.float32)
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = _block_sigma2(xbl, 1)
        max_scale = F32(0)
        for ib in range(16):
            scale, live = _track(xbl[16 * ib:16 * ib + 16], qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, False,
                                 True, 1e-15, 8, 2, 3, 9, 0.1, True, False, tables, weight, waux, xval, signs, L,
                                 Laux, on, on_aux)
            scales[ib] = scale
            if not live:
                continue
            for k in range(2):
                v = _grid_index(L, 8 * k, 8, 2, gmap) | (signs[k] << 9)
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


@jit
def _iq2_s(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq2_s_impl: sub-blocks of 16, groups of 8, 8 sign bits a group, 10-bit grid indices. Bytes: the
    indices' low bytes, the signs, the indices' top 2 bits (4 a byte), the scale nibbles."""
    gmap = tables[2]
    weight, waux, xval = np.empty(16, np.float32), np.empty(16, np.float32), np.empty(16, np.float32)
    L, Laux = np.zeros(16, np.int64), np.zeros(16, np.int64)
    on, on_aux = np.zeros(2, np.bool_), np.zeros(2, np.bool_)
    signs = np.zeros(2, np.int64)
    scales = np.empty(16, np.float32)
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = _block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(16):
            scale, live = _track(xbl[16 * ib:16 * ib + 16], qw[ibl, 16 * ib:16 * ib + 16], has_qw, sigma2, True,
                                 False, 1e-8, 8, 2, 3, 9, 0.1, True, False, tables, weight, waux, xval, signs, L,
                                 Laux, on, on_aux)
            scales[ib] = scale
            if not live:
                continue
            for k in range(2):
                i8 = 2 * ib + k
                gi = _grid_index(L, 8 * k, 8, 2, gmap)
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


@jit
def _iq3_xxs(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq3_xxs_impl (grid of 256): sub-blocks of 32, groups of 4. Bytes: 64 grid indices, then per
    sub-block a uint32 of 4x7 sign bits and the scale nibble."""
    gmap = tables[2]
    weight, waux, xval = np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32)
    L, Laux = np.zeros(32, np.int64), np.zeros(32, np.int64)
    on, on_aux = np.zeros(8, np.bool_), np.zeros(8, np.bool_)
    signs = np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = _block_sigma2(xbl, 2)
        max_scale = F32(0)
        for ib in range(8):
            scale, live = _track(xbl[32 * ib:32 * ib + 32], qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, False,
                                 True, 1e-8, 4, 3, 8, 15, 0.2, True, False, tables, weight, waux, xval, signs, L,
                                 Laux, on, on_aux)
            scales[ib] = scale
            if not live:
                continue
            for k in range(8):
                out[ibl, 2 + 8 * ib + k] = _grid_index(L, 4 * k, 4, 3, gmap)
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


@jit
def _iq3_s(x, qw, has_qw, tables, out, dh):
    """quantize_row_iq3_s_impl (grid of 512): sub-blocks of 32, groups of 4, every group re-rounded at the winning
    scale. Bytes: grid indices' low bytes, their top bits (8 a byte), 8 sign bits a group of 8, scale nibbles.
    ggml advances its index and sign pointers only past the sub-blocks it quantizes: after a skipped (all-zero)
    sub-block the later ones' bytes move down, and the tail stays zero."""
    gmap = tables[2]
    weight, waux, xval = np.empty(32, np.float32), np.empty(32, np.float32), np.empty(32, np.float32)
    L, Laux = np.zeros(32, np.int64), np.zeros(32, np.int64)
    on, on_aux = np.zeros(8, np.bool_), np.zeros(8, np.bool_)
    signs = np.zeros(4, np.int64)
    scales = np.empty(8, np.float32)
    for ibl in range(x.shape[0]):
        out[ibl, :] = 0
        xbl = x[ibl]
        sigma2 = _block_sigma2(xbl, 2)
        max_scale = F32(0)
        done = 0
        for ib in range(8):
            scale, live = _track(xbl[32 * ib:32 * ib + 32], qw[ibl, 32 * ib:32 * ib + 32], has_qw, sigma2, False,
                                 False, 0.0, 4, 3, 8, 9, 0.2, False, True, tables, weight, waux, xval, signs, L,
                                 Laux, on, on_aux)
            scales[ib] = scale
            if not live:
                continue
            for k in range(8):
                gi = _grid_index(L, 4 * k, 4, 3, gmap)
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


#: type -> (kernel, bytes per block)
_KERNELS = {"IQ2_XXS": (_iq2_xxs, 66), "IQ2_XS": (_iq2_xs, 74), "IQ2_S": (_iq2_s, 82), "IQ3_XXS": (_iq3_xxs, 98),
            "IQ3_S": (_iq3_s, 110)}


def quantize(name: str, x: np.ndarray, qw: np.ndarray | None, tables: tuple) -> np.ndarray:
    """Blocks x (nblocks, 256) float32 with importance weights qw (same shape, or None) -> (nblocks, type_size)."""
    kernel, type_size = _KERNELS[name]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty((x.shape[0], type_size), np.uint8)
    dh = np.empty(x.shape[0], np.float32)
    has_qw = qw is not None
    kernel(x, np.ascontiguousarray(qw, dtype=np.float32) if has_qw else x, has_qw, tables, out, dh)
    out[:, :2] = dh.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return out
