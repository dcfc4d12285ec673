"""The grid IQ quantizers (IQ3_XXS, IQ2_XXS, IQ2_XS, ...) in NumPy, byte-identical to ggml's `quantize_iq*`.

Why our own: these types are what the low-bit files people download are made of, and neither gguf-py nor any
pip package can write them. The algorithms are ports of ggml-quants.c (docs/gguf.md §6 for the float rules:
C's expression order, sequential sums, ggml's nearest_int): each group of 8 (IQ2) or 4 (IQ3) values is rounded
onto a lattice; a point that is not in the type's grid is replaced by its nearest grid neighbour, by weighted
distance, among a short list per lattice point that ggml precomputes at init (`iq2xs_init_impl`).

The grids come from gguf-py, which carries them for its dequantizers; the lattice map and neighbour lists are
rebuilt from them exactly as ggml builds them (sorted by integer distance, then by grid index; the points at the
`nwant` smallest distances). Everything is vectorised over the sub-blocks of a chunk: per-element state lives in
(elements, sub-blocks) arrays so that sums over a sub-block run row after row, in C's order, and the neighbour
search of all the off-grid groups of a pass is one flat computation over (group, neighbour) pairs.

The search (70-90 % of the time) was measured against these alternatives, all byte-identical and none faster
(issue 19, A/B in one process on this 2-core machine): every group scored against the whole grid once per chunk
by one matrix product, read back by the searches of every scale step (the reads miss the cache: 10-14 ns a
neighbour against 1-2 for the gather of grid points); coordinate-major planes instead of (neighbour, group, dim)
arrays (within 10 %); C's terms tabulated per group and level and summed by coordinate pairs (four gathers a
neighbour: 1.1-1.5x slower); np.einsum for the weighted sum (exact in C's order with three operands, but slower
for groups of 4 and no faster for 8).

Contract with modelport.gguf.quants: `GRID_KERNELS[name] = (fn, blocks_per_chunk)`, `fn(x, qw)` with x and qw
(importance weights, or None where ggml allows it) of shape (nblocks, 256) float32, returning (nblocks, type_size)
uint8. `REQUIRES_IMATRIX` lists the types ggml refuses to quantize without one.
"""

from __future__ import annotations

import functools

import numpy as np

from ..core.errors import ModelportError

QK_K = 256
_F = np.float32

#: Types ggml asserts an importance matrix for (ggml_quantize_requires_imatrix; IQ1_M too, in its quantizer).
REQUIRES_IMATRIX = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S"})


# ----------------------------------------------------------------------------------------------- helpers

def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int, bit for bit (round half to even, wrapping past 2^22), as int32."""
    i = (np.asarray(v, dtype=_F) + _F(12582912.0)).view(np.int32)
    return (i & 0x007FFFFF) - 0x00400000


def _seq_sum(a: np.ndarray) -> np.ndarray:
    """C's `s = 0; for i: s += a[i]` over axis 0 of a C-contiguous array (NumPy adds row after row there)."""
    return np.add.reduce(a, axis=0) + _F(0.0)


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    """(nb, 256) -> (n, nb*256/n): element i of every sub-block of n in row i (contiguous)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v, dtype=_F).astype(np.float16)).view(np.uint8).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------- grids

class _Grid:
    """A type's grid: levels (G, dim) in 0..nlev-1, the lattice map code -> grid index (or -1), and per
    off-grid code its neighbour list (CSR: start, count into `nbrs`)."""

    def __init__(self, gguf_cls, bits: int, nwant: int, rounds: tuple[int, ...]):
        hexes = np.frombuffer(gguf_cls.grid_hex, np.uint8).reshape(-1, 2)
        nib = np.where(hexes > 0x40, hexes + 9, hexes) & 0x0F
        packed = (nib[:, 0] << 4) | nib[:, 1]
        per_byte = 8 // bits                     # gguf-py's layout: 8 // per_byte bits a field
        fields = (packed[:, None] >> np.arange(0, 8, 8 // per_byte, dtype=np.uint8)) & ((1 << bits) - 1)
        self.levels = fields.reshape(gguf_cls.grid_shape).astype(np.int32)
        self.size, self.dim = self.levels.shape
        self.bits = bits
        self.shifts = (bits * np.arange(self.dim)).astype(np.int32)
        self.pos = (2 * self.levels + 1).astype(_F)          # ggml's grid points, as floats for the distances
        codes = (self.levels << self.shifts).sum(axis=1)
        nmap = 1 << (bits * self.dim)
        self.map = np.full(nmap, -1, np.int32)
        self.map[codes] = np.arange(self.size, dtype=np.int32)
        self._neighbours(nwant, rounds)

    def _neighbours(self, nwant: int, rounds: tuple[int, ...]) -> None:
        maxlev = int(self.levels.max())
        off = np.flatnonzero(self.map < 0)
        lev = (off[:, None] >> self.shifts) & ((1 << self.bits) - 1)
        off = off[lev.max(axis=1) <= maxlev]      # only codes the quantizers can produce (levels clipped)
        lev = (off[:, None] >> self.shifts) & ((1 << self.bits) - 1)
        pos = (2 * self.levels + 1).astype(np.int32)
        lists, counts = [], []
        for s in range(0, len(off), 1024):
            p = 2 * lev[s:s + 1024] + 1
            d2 = ((pos[None, :, :] - p[:, None, :]) ** 2).sum(axis=-1)
            order = np.argsort(d2, axis=1, kind="stable")              # by distance, then by grid index
            ds = np.take_along_axis(d2, order, axis=1)
            rank = np.concatenate([np.zeros((len(ds), 1), np.int64),
                                   np.cumsum(ds[:, 1:] != ds[:, :-1], axis=1)], axis=1)
            keep = rank < nwant
            counts.append(keep.sum(axis=1))
            # the list padded with copies of its last entry: a copy never wins over the first, so padded rows can
            # be searched whole (the first minimum is what ggml takes)
            last = np.take_along_axis(order, keep.sum(axis=1, keepdims=True) - 1, axis=1)
            lists.append(np.where(keep, order, last)[:, :self.size])
        counts = np.concatenate(counts)
        width = int(counts.max())
        table = np.concatenate([np.pad(a, ((0, 0), (0, max(0, width - a.shape[1]))), mode="edge")[:, :width]
                                for a in lists]).astype(np.int32)
        #: per off-grid code (numbered by `slot`): its neighbour count and list (padded), flat
        self.count = counts
        self.width = width
        self.table = table.reshape(-1)
        self.slot = np.full(len(self.map), -1, np.int32)
        self.slot[off] = np.arange(len(off), dtype=np.int32)
        #: the rounds of the search: (first, end) positions in the lists and those neighbours' grid points,
        #: (dim, end - first, slots)
        ends = [e for e in rounds if e < width] + [width]
        self._table2d = table
        self._bounds = list(zip([0] + ends[:-1], ends))
        self.rounds = self.rounds_for(self.pos)
        self.levT = np.ascontiguousarray(self.levels.T)

    def rounds_for(self, pos: np.ndarray) -> list:
        """The search rounds with grid points valued `pos` (G, dim): (first, end, points (end - first, slots, dim))."""
        # groups of 8 integer coordinates (IQ2's, not IQ1's shifted ones) are kept as int8: the gather, which dominates
        # the search, then moves a quarter of the bytes, and int8 -> float32 is exact (measured 10-20 % faster; for
        # IQ3's groups of 4 the extra conversion costs more than it saves)
        small = self.dim == 8 and bool(np.all(pos == np.round(pos)) and np.abs(pos).max() < 128)
        rounds = [(c0, c1, np.ascontiguousarray(pos[self._table2d[:, c0:c1]].transpose(1, 0, 2)))
                  for c0, c1 in self._bounds]
        return [(c0, c1, pts.astype(np.int8)) for c0, c1, pts in rounds] if small else rounds

    def codes(self, L: np.ndarray) -> np.ndarray:
        """Levels (D, S) -> lattice codes (D/dim, S)."""
        Lg = L.reshape(-1, self.dim, L.shape[-1])
        u = Lg[:, 0] << self.shifts[0]
        for i in range(1, self.dim):
            u = u | (Lg[:, i] << self.shifts[i])
        return u

    def _best(self, slot, x, w, sc, rounds) -> np.ndarray:
        """The winning grid index for groups with neighbour lists `slot`, values x and sqrt-weights w (m, dim) at
        scales sc (m,)."""
        scr = np.repeat(sc, self.dim).reshape(-1, self.dim)
        cnt = self.count[slot]
        sel = best_d2 = best_k = None
        for r, (c0, c1, pts) in enumerate(rounds):
            if r:
                sel = np.flatnonzero(cnt > c0) if sel is None else sel[cnt[sel] > c0]
                if sel.size == 0:
                    break
                sl, scs, xs, ws = slot[sel], scr[sel], x[sel], w[sel]
            else:
                sl, scs, xs, ws = slot, scr, x, w
            # whole grid points gathered at once, (k, m, dim): every operand below is contiguous over (m, dim)
            diff = np.take(pts, sl, axis=1)
            if diff.dtype != _F:
                diff = diff.astype(_F)
            diff *= scs
            diff -= xs
            t = diff * ws
            t *= diff
            d2 = t[..., 0] + t[..., 1]                                # C's d2, summed in element order, (k, m)
            for i in range(2, self.dim):
                d2 += t[..., i]
            dmin = np.minimum.reduce(d2, axis=0)
            # the first k with d2 == dmin: the largest of (step - k) over the matches
            first = np.maximum.reduce(np.equal(d2, dmin).view(np.uint8) * _rev(c1 - c0), axis=0)
            k = (c1 - c0 - first).astype(np.int64) + c0
            if r == 0:
                best_d2, best_k = dmin, k
            else:
                better = dmin < best_d2[sel]
                upd = sel[better]
                best_d2[upd] = dmin[better]
                best_k[upd] = k[better]
        return self.table[slot.astype(np.int64) * self.width + best_k]

    def snap(self, L: np.ndarray, xg: np.ndarray, wg: np.ndarray, scale: np.ndarray, rounds=None) -> np.ndarray:
        """Replace the groups of L (D, S) that are not grid points by their best neighbour (iq*_find_best_neighbour:
        least sum waux*(scale*q - x)^2, the first on ties); xg, wg are the values and sqrt-weights by group,
        (G*S, dim). Returns the mask (G, S) of groups that were off grid.

        The lists are searched a few neighbours at a time (`_ROUNDS`: all off-grid groups for the first ones, then
        only those with longer lists); a later round wins only when strictly smaller, as in C's loop."""
        u = self.codes(L)
        off = self.map[u] < 0
        f = np.flatnonzero(off)
        if f.size == 0:
            return off
        S = L.shape[-1]
        g, s = np.divmod(f, S)
        slot = self.slot[u.reshape(-1)[f]]
        sc = scale[s]
        rounds = self.rounds if rounds is None else rounds
        win = np.empty(f.size, np.int64)
        # in batches of groups, so that the (neighbours, groups, dim) temporaries stay in the cache
        batch = max(256, (1 << _BATCH_LOG2) // ((rounds[0][1] - rounds[0][0]) * self.dim))
        for b0 in range(0, f.size, batch):
            b1 = min(b0 + batch, f.size)
            fb = f[b0:b1]
            win[b0:b1] = self._best(slot[b0:b1], np.take(xg, fb, axis=0), np.take(wg, fb, axis=0), sc[b0:b1], rounds)
        flat = L.reshape(-1)
        base = (g * self.dim) * S + s
        for i in range(self.dim):
            flat[base + i * S] = self.levT[i][win]
        return off


#: where the rounds of the neighbour search end, by type (the last one ends at the longest list): chosen from the
#: list lengths each type's searches meet, by a cost model of a fixed cost per round and call plus one per
#: neighbour scored (10-25 % less modelled search time than one split per group size; IQ1_M shares IQ1_S's)
_ROUNDS = {"IQ3_XXS": (6, 12, 20), "IQ3_S": (10, 16, 24), "IQ2_XXS": (20, 32, 48, 64, 96),
           "IQ2_XS": (32, 64, 96, 128, 192), "IQ2_S": (10, 12, 16, 24), "IQ1_S": (16, 32, 64, 128)}
_BATCH_LOG2 = 21            # about this many elements in a batch of the neighbour search


@functools.cache
def _rev(n: int) -> np.ndarray:
    return np.arange(n, 0, -1, dtype=np.uint8)[:, None]


@functools.cache
def _grid(name: str) -> _Grid:
    from gguf import quants as gq
    spec = {"IQ2_XXS": (gq.IQ2_XXS, 2, 2), "IQ2_XS": (gq.IQ2_XS, 2, 2), "IQ2_S": (gq.IQ2_S, 2, 1),
            "IQ3_XXS": (gq.IQ3_XXS, 3, 2), "IQ3_S": (gq.IQ3_S, 3, 3), "IQ1_S": (gq.IQ1_S, 2, 3)}
    cls, bits, nwant = spec[name]
    return _Grid(cls, bits, nwant, _ROUNDS[name])


def _by_group(a: np.ndarray, dim: int) -> np.ndarray:
    """(D, S) per element -> (G*S, dim): one row per group, group-major (g*S + s)."""
    D, S = a.shape
    return np.ascontiguousarray(a.reshape(D // dim, dim, S).transpose(0, 2, 1)).reshape(-1, dim)


def _levels(grid: _Grid, xval, waux, id_, nscale, kmax: int, xg=None, wg=None):
    """Round every value to its lattice level at inverse scale id_ (per sub-block), then snap off-grid groups
    with the neighbour search at scale nscale: returns (L int32 (D, S), off-grid mask (G, S))."""
    v = xval * id_
    v -= _F(1)
    v *= _F(0.5)
    L = np.clip(nearest_int(v), 0, kmax - 1)
    if xg is None:
        xg, wg = _by_group(xval, grid.dim), _by_group(waux, grid.dim)
    off = grid.snap(L, xg, wg, nscale)
    return L, off


def _sums(wx, w, L):
    """sumqx, sumq2 over a sub-block with q = 2L+1: C's `sumqx += w*xval[i]*q; sumq2 += w*q*q`."""
    q = (2 * L + 1).astype(_F)
    return _seq_sum(wx * q), _seq_sum((w * q) * q)


# ------------------------------------------------------------------------------------- shared first steps

def _prepare(x, qw, n, sigma_mul, parity=True, fallback="x2"):
    """Weights and sign-folded values of sub-blocks of n, as in every grid quantizer: returns (W, waux, xval,
    signs (n/8, S) uint8, max (S,)). With qw, W = qw*sqrt(sigma2 + x^2); without, x^2 (fallback "x2") or
    sigma2/4 + x^2 ("sigma", IQ2_S). With `parity` (the XXS/XS types, whose signs are 7 bits a group of 8) a group
    with an odd number of negatives keeps the sign of its least important element folded in xval."""
    per = QK_K // n
    X = _rows(x, n)
    xx = np.ascontiguousarray((x * x).T)
    sigma2 = _seq_sum(xx)
    if sigma_mul != 1:
        sigma2 = _F(sigma_mul) * sigma2
    sigma2 = np.repeat(sigma2 / _F(QK_K), per)
    if qw is not None:
        W = _rows(np.asarray(qw, _F), n) * np.sqrt(sigma2 + X * X)
    elif fallback == "sigma":
        W = _F(0.25) * sigma2 + X * X
    else:
        W = X * X
    waux = np.sqrt(W)
    xval = np.abs(X)
    neg = (X < 0).reshape(n // 8, 8, -1)
    bitv = (np.uint8(1) << np.arange(8, dtype=np.uint8))[None, :, None]
    signs = (neg * bitv).sum(axis=1, dtype=np.uint8)
    if parity:
        odd = (neg.sum(axis=1) & 1).astype(bool)
        k, s = np.nonzero(odd)
        if k.size:
            a = ((W * X) * X).reshape(n // 8, 8, -1)
            imin = np.argmin(a[k, :, s], axis=1)
            xval[k * 8 + imin, s] = -xval[k * 8 + imin, s]
            signs[k, s] ^= (np.uint8(1) << imin.astype(np.uint8))
        signs &= np.uint8(127)
    return W, waux, xval, signs, xval.max(axis=0)


def _search(grid, xval, W, waux, id_fn, steps, kmax, init_scale):
    """The scale search `for is: id = id_fn(is); ... if sumqx^2 > best*sumq2: keep`: returns (scale, winning
    step or None per sub-block as an int array with -999 for none)."""
    wx = W * xval
    S = xval.shape[1]
    best = np.zeros(S, _F)
    scale = init_scale.copy()
    win_is = np.full(S, -999, np.int32)
    xg, wg = _by_group(xval, grid.dim), _by_group(waux, grid.dim)
    for is_ in steps:
        id_ = id_fn(is_)
        L, _ = _levels(grid, xval, waux, id_, _F(1) / id_, kmax, xg, wg)
        sumqx, sumq2 = _sums(wx, W, L)
        with np.errstate(all="ignore"):
            win = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            new_scale = sumqx / sumq2
        scale = np.where(win, new_scale, scale)
        best = np.where(win, scale * sumqx, best)
        win_is[win] = is_
    return scale, win_is


def _block_scales(scales, per, div=_F(31)):
    """Super-block scale d = max(sub-block scales)/31 and the 4-bit sub-block levels nearest_int(0.5*(s/d - 1))."""
    sc = scales.reshape(-1, per)
    max_scale = sc.max(axis=1)
    with np.errstate(all="ignore"):
        d = max_scale / div
        id_ = _F(1) / d
        v = id_[:, None] * sc
        v -= _F(1)
        v *= _F(0.5)
    ls = np.clip(nearest_int(v), 0, 15).astype(np.uint32)
    return max_scale, d, ls


# --------------------------------------------------------------------------------- IQ3_XXS, IQ2_XS, IQ2_XXS

def _track_search(x, qw, name, n, kmax, nsteps, step, eps, sigma_mul, parity=True, fallback="x2",
                  redo_all=False):
    """quantize_row_iq3_xxs_impl / iq2_xs / iq3_s / iq2_s's per-sub-block part: the scale search that remembers which
    groups were on the grid, then the re-rounding at the final scale of the off-grid groups (of all groups, and
    also when no step won, with `redo_all`: IQ3_S). eps None: a sub-block is skipped only when its max is 0.
    Returns (L (n, S), scales (S,), signs (n/8, S), live (S,))."""
    grid = _grid(name)
    W, waux, xval, signs, mx = _prepare(x, qw, n, sigma_mul, parity, fallback)
    live = (mx > 0) if eps is None else ~(mx < _F(eps))
    mxs = np.where(live, mx, _F(1))
    with np.errstate(all="ignore"):
        top = _F(2 * kmax - 1)
        scale, win_is = _search(grid, xval, W, waux, lambda i: (top + _F(i) * _F(step)) / mxs,
                                range(-nsteps, nsteps + 1), kmax, mxs / top)
        won = win_is != -999
        id_w = (top + win_is.astype(_F) * _F(step)) / mxs
        L, off = _levels(grid, xval, waux, id_w, _F(1) / id_w, kmax)
    L[:, ~won] = 0
    off[:, ~won] = redo_all                  # IQ3_S starts with every group marked off the grid
    redo = off.any(axis=0) & (scale > 0) & live
    if redo.any():
        cols = np.flatnonzero(redo)
        with np.errstate(all="ignore"):
            sc = scale[cols]
            L2, _ = _levels(grid, np.ascontiguousarray(xval[:, cols]), np.ascontiguousarray(waux[:, cols]),
                            _F(1) / sc, sc, kmax)
        if not redo_all:
            keep = ~np.repeat(off[:, cols], grid.dim, axis=0)         # on-grid groups keep their levels
            L2[keep] = L[:, cols][keep]
        L[:, cols] = L2
        sumqx, sumq2 = _sums(np.ascontiguousarray((W * xval)[:, cols]), np.ascontiguousarray(W[:, cols]), L2)
        with np.errstate(all="ignore"):
            scale[cols] = np.where(sumq2 > 0, sumqx / sumq2, sc)
    return _finish_signs(L, scale, signs, live, 127 if parity else 255)


def _finish_signs(L, scale, signs, live, mask=127):
    flip = scale < 0
    if flip.any():
        scale = np.where(flip, -scale, scale)
        signs[:, flip] = (~signs[:, flip]) & np.uint8(mask)
    scale = np.where(live, scale, _F(0))
    L[:, ~live] = 0
    signs[:, ~live] = 0
    return L, scale, signs, live


def _make_qp_scale(xval, W, nmax: int) -> np.ndarray:
    """make_qp_quants(n, nmax, x, L, w)'s returned scale, over sub-blocks (columns). L is uint8 in C, so negative
    levels (the sign-folded element) wrap to 255 where C stores them; that is kept."""
    with np.errstate(all="ignore"):
        mx = np.maximum(xval.max(axis=0), _F(0))
        nm = _F(nmax)
        iscale = nm / mx
        L8 = (nearest_int(iscale * xval) & 255).astype(_F)
        sc = _F(1) / iscale
        d = xval - sc * L8
        best = _seq_sum((W * d) * d)
        for is_ in (-4, -3, -2, -1, 1, 2, 3, 4):
            isc = (_F(0.1) * _F(is_) + nm) / mx
            l = np.minimum(nearest_int(isc * xval), nmax).astype(_F)
            d = xval - (_F(1) / isc) * l
            mse = _seq_sum((W * d) * d)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, isc, iscale)
        li = np.minimum(nearest_int(iscale * xval), nmax)
        lf = li.astype(_F)
        Lu = (li & 255)                       # what C's uint8_t L[] holds
        wxa = W * xval
        sumlx = _seq_sum(wxa * lf)
        suml2 = _seq_sum((W * lf) * lf)
        active = np.ones(xval.shape[1], bool)
        for _ in range(5):
            changed = np.zeros(xval.shape[1], bool)
            for i in range(xval.shape[0]):
                w, wxi, xi = W[i], wxa[i], xval[i]
                Li = Lu[i].astype(_F)
                slx = sumlx - wxi * Li
                sl2 = suml2 - (w * Li) * Li
                nl = np.minimum(nearest_int((xi * sl2) / slx), nmax)
                nlf = nl.astype(_F)
                slx = slx + wxi * nlf
                sl2 = sl2 + (w * nlf) * nlf
                acc = (active & (sumlx - wxi * Li > 0) & (suml2 - (w * Li) * Li > 0) & (nl != Lu[i])
                       & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2))
                if acc.any():
                    Lu[i] = np.where(acc, nl & 255, Lu[i])
                    sumlx = np.where(acc, slx, sumlx)
                    suml2 = np.where(acc, sl2, suml2)
                    changed |= acc
            active &= changed
            if not active.any():
                break
        return np.where(suml2 > 0, sumlx / suml2, _F(0))


def _iq2_xxs_search(x, qw):
    grid = _grid("IQ2_XXS")
    kmax = 3
    W, waux, xval, signs, mx = _prepare(x, qw, 32, 1)
    live = ~(mx < _F(1e-15))
    scale = _make_qp_scale(xval, W, kmax + 1)
    with np.errstate(all="ignore"):
        eff_max = scale * _F(kmax)
    live &= ~(eff_max <= 0)
    effs = np.where(live, eff_max, _F(1))
    with np.errstate(all="ignore"):
        scale, _ = _search(grid, xval, W, waux, lambda i: (_F(5) + _F(i) * _F(0.1)) / effs, range(-6, 7), kmax,
                           scale)
        pos = scale > 0
        sc = np.where(pos, scale, _F(1))
        L, _ = _levels(grid, xval, waux, _F(1) / sc, sc, kmax)
        sumqx, sumq2 = _sums(W * xval, W, L)
        scale = np.where(pos & (sumq2 > 0), sumqx / sumq2, scale)
    # C leaves L as make_qp_quants/the search left it where scale <= 0; those levels only reach the bytes when the
    # scale is negative after the search (never seen), so they are taken from the re-rounding too.
    return _finish_signs(L, scale, signs, live)


def _iq3_xxs(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ3_XXS")
    L, scales, signs, _ = _track_search(x, qw, "IQ3_XXS", 32, 8, 15, 0.2, 1e-8, 2)
    gi = grid.map[grid.codes(L)].astype(np.uint8)                 # (8, S): 8 groups of 4 per sub-block
    sas = (signs[0].astype(np.uint32) | (signs[1].astype(np.uint32) << 7) | (signs[2].astype(np.uint32) << 14)
           | (signs[3].astype(np.uint32) << 21))
    max_scale, d, ls = _block_scales(scales, 8)
    sas = sas.reshape(nb, 8) | (ls << 28)
    zero = max_scale == 0
    with np.errstate(all="ignore"):
        dh = _fp16_bytes(np.where(zero, _F(0), d * _F(1.0125)))
    q3 = np.ascontiguousarray(gi.T).reshape(nb, 64)
    out = np.concatenate([dh, q3, sas.astype("<u4").view(np.uint8).reshape(nb, 32)], axis=1)
    out[zero, 2:] = 0
    return out


def _iq2_xxs(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ2_XXS")
    L, scales, signs, _ = _iq2_xxs_search(x, qw)
    gi = grid.map[grid.codes(L)].astype(np.uint32)                # (4, S)
    lo = gi[0] | (gi[1] << 8) | (gi[2] << 16) | (gi[3] << 24)
    s32 = signs.astype(np.uint32)
    hi = s32[0] | (s32[1] << 7) | (s32[2] << 14) | (s32[3] << 21)
    max_scale, d, ls = _block_scales(scales, 8)
    hi = hi.reshape(nb, 8) | (ls << 28)
    q2 = np.stack([lo.reshape(nb, 8), hi], axis=2).reshape(nb, 16)
    zero = max_scale == 0
    out = np.concatenate([_fp16_bytes(np.where(zero, _F(0), d)), q2.astype("<u4").view(np.uint8).reshape(nb, 64)],
                         axis=1)
    out[zero, 2:] = 0
    return out


def _iq2_xs(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ2_XS")
    L, scales, signs, _ = _track_search(x, qw, "IQ2_XS", 16, 3, 9, 0.1, 1e-15, 1)
    gi = grid.map[grid.codes(L)].astype(np.uint16)                # (2, S)
    q2 = gi | (signs.astype(np.uint16) << 9)
    q2 = np.ascontiguousarray(q2.T).reshape(nb, 32)
    max_scale, d, ls = _block_scales(scales, 16)
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    zero = max_scale == 0
    out = np.concatenate([_fp16_bytes(np.where(zero, _F(0), d)), q2.astype("<u2").view(np.uint8).reshape(nb, 64),
                          sc], axis=1)
    out[zero, 2:66] = 0                      # C clears qs; the scales bytes were zeroed at the start
    out[zero, 66:] = 0
    return out


def _iq3_s(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ3_S")
    L, scales, signs, live = _track_search(x, qw, "IQ3_S", 32, 8, 9, 0.2, None, 2, parity=False, redo_all=True)
    gi = grid.map[grid.codes(L)]                                   # (8, S)
    qh = ((gi >> 8) << np.arange(8, dtype=np.int32)[:, None]).sum(axis=0).astype(np.uint8).reshape(nb, 8)
    qs = np.ascontiguousarray((gi & 255).astype(np.uint8).T).reshape(nb, 8, 8)
    sg = np.ascontiguousarray(signs.T).reshape(nb, 8, 4)
    # ggml advances its qs and signs pointers only past sub-blocks it quantized: a skipped (all-zero) sub-block
    # shifts the later ones' grid indices and signs down, and the tail stays zero
    lv = live.reshape(nb, 8)
    if not lv.all():
        order = np.argsort(~lv, axis=1, kind="stable")
        qs = np.take_along_axis(qs, order[:, :, None], axis=1)
        sg = np.take_along_axis(sg, order[:, :, None], axis=1)
        dead = ~np.take_along_axis(lv, order, axis=1)
        qs[dead] = 0
        sg[dead] = 0
    max_scale, d, ls = _block_scales(scales, 8)
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    zero = max_scale == 0
    with np.errstate(all="ignore"):
        dh = _fp16_bytes(np.where(zero, _F(0), d * _F(1.033)))
    sc[zero] = 0
    return np.concatenate([dh, qs.reshape(nb, 64), qh, sg.reshape(nb, 32), sc], axis=1)


def _iq2_s(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ2_S")
    L, scales, signs, _ = _track_search(x, qw, "IQ2_S", 16, 3, 9, 0.1, 1e-8, 2, parity=False, fallback="sigma")
    gi = grid.map[grid.codes(L)]                                   # (2, S): group i8 = 2*ib + k
    gi = np.ascontiguousarray(gi.T).reshape(nb, 32)
    qh = ((gi >> 8).reshape(nb, 8, 4) << (2 * np.arange(4, dtype=np.int32))).sum(axis=2).astype(np.uint8)
    sg = np.ascontiguousarray(signs.T).reshape(nb, 32)
    max_scale, d, ls = _block_scales(scales, 16)
    sc = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)
    zero = max_scale == 0
    with np.errstate(all="ignore"):
        dh = _fp16_bytes(np.where(zero, _F(0), d * _F(0.9875)))
    sc[zero] = 0
    return np.concatenate([dh, (gi & 255).astype(np.uint8), sg, qh, sc], axis=1)


# ------------------------------------------------------------------------------------------- IQ1_S, IQ1_M

@functools.cache
def iq1_tables():
    """IQ1's grid (shared by IQ1_S and IQ1_M), its neighbour lists laid out for modelport.gguf.iq1's kernels."""
    from . import iq1
    grid = _grid("IQ1_S")
    return iq1.kernel_tables(grid.levels, grid.map, grid.slot, grid.count, grid.table, grid.width)


def _iq1_s(x, qw):
    # numba: imported when an IQ1 kernel first runs (0.5 s), not with the CLI
    from . import iq1
    return iq1.quantize_iq1_s(x, qw, iq1_tables())


def _iq1_m(x, qw):
    from . import iq1
    return iq1.quantize_iq1_m(x, qw, iq1_tables())


# ------------------------------------------------------------------------------------------------- public

def _needs(name, fn):
    def run(x, qw):
        if qw is None and name in REQUIRES_IMATRIX:
            raise ModelportError(f"{name} needs an importance matrix (--imatrix), as llama-quantize requires")
        return fn(x, qw)
    run.__name__ = fn.__name__
    return run


#: gguf type name -> (fn(x, qw) -> bytes, blocks per chunk)
GRID_KERNELS = {
    "IQ3_XXS": (_needs("IQ3_XXS", _iq3_xxs), 1024),
    "IQ2_XXS": (_needs("IQ2_XXS", _iq2_xxs), 1024),
    "IQ2_XS": (_needs("IQ2_XS", _iq2_xs), 1024),
    "IQ3_S": (_needs("IQ3_S", _iq3_s), 1024),
    "IQ2_S": (_needs("IQ2_S", _iq2_s), 1024),
    "IQ1_S": (_needs("IQ1_S", _iq1_s), 256),
    "IQ1_M": (_needs("IQ1_M", _iq1_m), 256),
}
