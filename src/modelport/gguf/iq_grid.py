"""The grid IQ quantizers (IQ3_XXS, IQ2_XXS, IQ2_XS, ...), byte-identical to ggml's `quantize_iq*`: the grids and
neighbour tables here; the IQ2/IQ3 types' per-sub-block search in modelport.gguf.iq_grid_jit (numba); IQ1_S and
IQ1_M's search still in NumPy below (`_Grid.snap`).

Why our own: these types are what the low-bit files people download are made of, and neither gguf-py nor any
pip package can write them. The algorithms are ports of ggml-quants.c (docs/gguf.md §6 for the float rules:
C's expression order, sequential sums, ggml's nearest_int): each group of 8 (IQ2) or 4 (IQ3) values is rounded
onto a lattice; a point that is not in the type's grid is replaced by its nearest grid neighbour, by weighted
distance, among a short list per lattice point that ggml precomputes at init (`iq2xs_init_impl`).

The grids come from gguf-py, which carries them for its dequantizers; the lattice map and neighbour lists are
rebuilt from them exactly as ggml builds them (sorted by integer distance, then by grid index; the points at the
`nwant` smallest distances), and handed to the compiled kernels as plain arrays (`_tables`).

Why numba for the search: it is a loop per group with data-dependent work (on the grid or not, lists of 1 to 200
neighbours). Vectorised in NumPy over the sub-blocks of a chunk (per-element state in (elements, sub-blocks)
arrays, the neighbour search as one flat computation over (group, neighbour) pairs, in rounds by list length), the
IQ2/IQ3 kernels reached only 0.37-0.50x of ggml's single core however the work was laid out (a whole-grid matrix
product per chunk, coordinate-major planes, tabulated terms and np.einsum were all measured, none faster); as numba
loops, in C's order, they run at 1.2-1.4x (docs/gguf.md §6.3). iq_grid_jit is imported only when one of these
types first runs: `import numba` costs 0.5 s, which no command that does not quantize should pay.

Contract with modelport.gguf.quants: `GRID_KERNELS[name] = (fn, blocks_per_chunk)`, `fn(x, qw)` with x and qw
(importance weights, or None where ggml allows it) of shape (nblocks, 256) float32, returning (nblocks, type_size)
uint8; the kernels release the GIL, so quants' thread pool runs chunks in parallel. `REQUIRES_IMATRIX` lists the
types ggml refuses to quantize without one.
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

    def snap(self, L: np.ndarray, xg: np.ndarray, wg: np.ndarray, scale: np.ndarray, rounds: list) -> np.ndarray:
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


#: where the rounds of the NumPy neighbour search (`_Grid.snap`) end, by type (the last one ends at the longest
#: list): chosen from the list lengths its searches meet, by a cost model of a fixed cost per round and call plus
#: one per neighbour scored (IQ1_M shares IQ1_S's; the other types search in iq_grid_jit)
_ROUNDS = {"IQ1_S": (16, 32, 64, 128)}
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
    return _Grid(cls, bits, nwant, _ROUNDS.get(name, ()))


def _by_group(a: np.ndarray, dim: int) -> np.ndarray:
    """(D, S) per element -> (G*S, dim): one row per group, group-major (g*S + s)."""
    D, S = a.shape
    return np.ascontiguousarray(a.reshape(D // dim, dim, S).transpose(0, 2, 1)).reshape(-1, dim)


# ----------------------------------------------------------------- IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S

@functools.cache
def _tables(name: str) -> tuple:
    """A grid as the arrays modelport.gguf.iq_grid_jit's kernels take: points (G, dim) float32 (2*level+1), levels
    (G, dim), the lattice map, and per off-grid code its neighbour list (slot, count, flat table, row width)."""
    grid = _grid(name)
    return (np.ascontiguousarray(grid.pos), np.ascontiguousarray(grid.levels), grid.map, grid.slot,
            grid.count.astype(np.int32), grid.table, int(grid.width))


def _compiled(name: str, x, qw):
    from . import iq_grid_jit  # numba: imported when one of these types first runs (0.5 s), not with the CLI
    return iq_grid_jit.quantize(name, x, qw, _tables(name))


def _iq3_xxs(x, qw):
    return _compiled("IQ3_XXS", x, qw)


def _iq2_xxs(x, qw):
    return _compiled("IQ2_XXS", x, qw)


def _iq2_xs(x, qw):
    return _compiled("IQ2_XS", x, qw)


def _iq3_s(x, qw):
    return _compiled("IQ3_S", x, qw)


def _iq2_s(x, qw):
    return _compiled("IQ2_S", x, qw)


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


# ------------------------------------------------------------------------------------------------- IQ1_S

#: IQ1's levels -1, 0, 1 shifted by +-IQ1S_DELTA (1/8), by shift
_IQ1_Q = {1: np.array([-1 + 0.125, 0.125, 1 + 0.125], _F), -1: np.array([-1 - 0.125, -0.125, 1 - 0.125], _F)}
_I1, _I2 = np.triu_indices(33)               # the splits (i1 <= i2) in C's loop order


def _running_best(sqx, sq2, scale):
    """C's running best over candidates in order (`if (sumq2 > 0 && sumqx^2 > best*sumq2) { scale = sumqx/sumq2;
    best = scale*sumqx; }`, best from -FLT_MAX), per column of (candidates, S): returns (winner or -1, scale).

    The last update, the winner, is among the candidates within float noise of the top score (any other is below
    the best held at its turn, or is overtaken by the top one), and a scan of those alone makes the same updates
    from there on: so only those are scanned, a few per column."""
    S = sqx.shape[1]
    with np.errstate(all="ignore"):
        score = sqx / sq2
        score *= sqx
        valid = sq2 > 0
        top = np.max(score, axis=0, initial=_F(0), where=valid)
        near = score >= top * _F(1 - 1e-4)
        near &= valid
        pos, col = np.nonzero(near)             # (a transposed nonzero is several times slower)
        order = np.argsort(col, kind="stable")     # by column, each column's candidates still in order
        col, pos = col[order], pos[order]
        cnt = np.bincount(col, minlength=S)
        k = np.arange(col.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        cand = np.full((int(cnt.max()) if cnt.size else 0, S), -1, np.int64)
        cand[k, col] = pos
        best = np.full(S, -np.finfo(_F).max, _F)
        win = np.full(S, -1, np.int64)
        cols = np.arange(S)
        for c in cand:
            have = c >= 0
            cc = np.where(have, c, 0)
            q2, qx = sq2[cc, cols], sqx[cc, cols]
            ok = have & (q2 > 0) & (qx * qx > best * q2)
            sc = qx / q2
            best = np.where(ok, sc * qx, best)
            scale = np.where(ok, sc, scale)
            win = np.where(ok, cc, win)
    return win, scale


def _sorted_split(x, W):
    """The sub-blocks' values sorted (stably: glibc's qsort is a merge sort) and each element's rank."""
    order = np.argsort(x, axis=0, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(x.shape[0])[:, None], axis=0)
    return order, rank, np.take_along_axis(x, order, axis=0), np.take_along_axis(W, order, axis=0)


def _prefix(v):
    """(n, S) -> (n+1, S): 0, then C's running sums."""
    out = np.zeros((v.shape[0] + 1, v.shape[1]), _F)
    np.cumsum(v, axis=0, out=out[1:])
    return out


def _iq1_split(x32, W):
    """quantize_row_iq1_s_impl's exhaustive search for the two boundaries that split a sub-block's values, sorted,
    into the levels -1, 0, +1 (shifted by +-IQ1S_DELTA): returns (L (32, S) in 0..2, scale, shift, found)."""
    n, S = x32.shape
    order, rank, xs, ws = _sorted_split(x32, W)
    sumx, sumw = _prefix(ws * xs), _prefix(ws)
    a_x, b_x = sumx[_I1] - sumx[0], sumx[_I2] - sumx[_I1]
    c_x = sumx[n] - sumx[_I2]
    a_w, b_w = sumw[_I1] - sumw[0], sumw[_I2] - sumw[_I1]
    c_w = sumw[n] - sumw[_I2]
    with np.errstate(all="ignore"):
        sqx = np.empty((len(_I1), 2, S), _F)
        sq2 = np.empty((len(_I1), 2, S), _F)
        for h, p in enumerate((_IQ1_Q[1], _IQ1_Q[-1])):
            sqx[:, h] = a_x * p[0] + b_x * p[1] + c_x * p[2]
            sq2[:, h] = (a_w * p[0]) * p[0] + (b_w * p[1]) * p[1] + (c_w * p[2]) * p[2]
    # candidates in C's order: (i1, i2), +delta before -delta
    win, scale = _running_best(sqx.reshape(-1, S), sq2.reshape(-1, S), np.max(np.abs(x32), axis=0))
    found = win >= 0
    pair = np.where(found, win // 2, 0)
    shift = np.where(win % 2 == 0, 1, -1)
    L = (rank >= _I1[pair]).astype(np.int32) + (rank >= _I2[pair])
    neg = scale < 0
    L = np.where(neg, 2 - L, L)
    scale = np.where(neg, -scale, scale)
    shift = np.where(neg, -shift, shift)
    return L, scale, shift, found


def _iq1_s(x, qw):
    nb = x.shape[0]
    grid = _grid("IQ1_S")
    X = _rows(x, 32)
    xx = np.ascontiguousarray((x * x).T)
    sigma2 = np.repeat(_F(2) * _seq_sum(xx) / _F(QK_K), 8)
    W = _rows(np.asarray(qw, _F), 32) * np.sqrt(sigma2 + X * X)
    mx = np.abs(X).max(axis=0)
    live = ~(mx < _F(1e-12))
    L, scale, shift, found = _iq1_split(X, W)
    live &= found
    scale = np.where(live, scale, _F(0))
    shift = np.where(live, shift, 1)
    L[:, ~live] = 1
    off = np.zeros((4, X.shape[1]), bool)
    for sh in (1, -1):                           # the neighbours are scored with the sub-block's shifted levels
        cols = np.flatnonzero(live & (shift == sh))
        if cols.size:
            sub = np.ascontiguousarray(L[:, cols])
            o = grid.snap(sub, _by_group(X[:, cols], 8), _by_group(W[:, cols], 8), scale[cols],
                          _iq1_rounds(sh))
            L[:, cols] = sub
            off[:, cols] = o
    redo = off.any(axis=0) & live
    if redo.any():
        cols = np.flatnonzero(redo)
        qv = np.where(shift[cols] == 1, _IQ1_Q[1][L[:, cols]], _IQ1_Q[-1][L[:, cols]])
        Wc, Xc = W[:, cols], X[:, cols]
        sqx = _seq_sum(np.ascontiguousarray((Wc * qv) * Xc))
        sq2 = _seq_sum(np.ascontiguousarray((Wc * qv) * qv))
        with np.errstate(all="ignore"):
            scale[cols] = np.where((sqx > 0) & (sq2 > 0), sqx / sq2, scale[cols])
    gi = grid.map[grid.codes(L)]                                    # (4, S)
    gi = np.where(live[None, :], gi, 0)
    qs = np.ascontiguousarray((gi & 255).astype(np.uint8).T).reshape(nb, 32)
    h = ((gi >> 8) << (3 * np.arange(4, dtype=np.int32))[:, None]).sum(axis=0).astype(np.uint16)
    max_scale, d, _ = _block_scales(scale, 8, _F(15))
    with np.errstate(all="ignore"):
        v = (_F(1) / d)[:, None] * scale.reshape(nb, 8)
        v -= _F(1)
        v *= _F(0.5)
    ls = np.clip(nearest_int(v), 0, 7) | np.where(shift.reshape(nb, 8) == -1, 8, 0)
    zero = max_scale == 0
    qh = h.reshape(nb, 8) | np.where(zero[:, None], 0, ls << 12).astype(np.uint16)
    with np.errstate(all="ignore"):
        dh = _fp16_bytes(np.where(zero, _F(0), d * _F(1.125)))
    return np.concatenate([dh, qs, qh.astype("<u2").view(np.uint8).reshape(nb, 16)], axis=1)


@functools.cache
def _iq1_rounds(shift: int) -> list:
    grid = _grid("IQ1_S")
    return grid.rounds_for(_IQ1_Q[shift][grid.levels])


_J1, _J2 = np.triu_indices(17)               # IQ1_M's splits of 16
_IQ1M_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)


def _iq1_m(x, qw):
    """quantize_row_iq1_m_impl: sub-blocks of 16, each half (group of 8) with its own level shift (4 combinations
    searched with the split), 3-bit sub-block scales, and the fp16 block scale refitted over the final levels and
    spread over the top nibbles of the four scale words."""
    nb = x.shape[0]
    grid = _grid("IQ1_S")
    X = _rows(x, 16)
    S = X.shape[1]
    xx = np.ascontiguousarray((x * x).T)
    sigma2 = np.repeat(_F(2) * _seq_sum(xx) / _F(QK_K), 16)
    W = (X * X) if qw is None else _rows(np.asarray(qw, _F), 16) * np.sqrt(sigma2 + X * X)
    mx = np.abs(X).max(axis=0)
    live = ~(mx < _F(1e-7))
    order, rank, xs, ws = _sorted_split(X, W)
    first_half = order < 8
    px = [_prefix(np.where(first_half, ws * xs, _F(0))), _prefix(np.where(first_half, _F(0), ws * xs))]
    pw = [_prefix(np.where(first_half, ws, _F(0))), _prefix(np.where(first_half, _F(0), ws))]
    xp, xm = _IQ1_Q[1], _IQ1_Q[-1]
    p2, m2 = xp[2], xm[2]
    cp1, cp2 = xp[0] * xp[0] - xp[1] * xp[1], xp[1] * xp[1] - xp[2] * xp[2]
    cm1, cm2 = xm[0] * xm[0] - xm[1] * xm[1], xm[1] * xm[1] - xm[2] * xm[2]
    with np.errstate(all="ignore"):
        qx, q2 = {}, {}
        for h in (0, 1):
            sx = px[h][_J1] + px[h][_J2]
            tx, tw = px[h][16], pw[h][16]
            qx[h, 1] = tx * p2 - sx
            qx[h, -1] = tx * m2 - sx
            q2[h, 1] = ((tw * p2) * p2 + pw[h][_J1] * cp1) + pw[h][_J2] * cp2
            q2[h, -1] = ((tw * m2) * m2 + pw[h][_J1] * cm1) + pw[h][_J2] * cm2
        combos = ((1, 1), (1, -1), (-1, 1), (-1, -1))        # k = 0..3: (first half's shift, second half's)
        sqx = np.empty((len(_J1), 4, S), _F)
        sq2 = np.empty((len(_J1), 4, S), _F)
        for c, (a, b) in enumerate(combos):
            np.add(qx[0, a], qx[1, b], out=sqx[:, c])
            np.add(q2[0, a], q2[1, b], out=sq2[:, c])
        sqx, sq2 = sqx.reshape(-1, S), sq2.reshape(-1, S)
    win, scale = _running_best(sqx, sq2, mx)
    live &= win >= 0
    pair = np.where(live, win // 4, 0)
    best_k = np.where(live, win % 4, 0)
    L = (rank >= _J1[pair]).astype(np.int32) + (rank >= _J2[pair])
    neg = scale < 0
    L = np.where(neg, 2 - L, L)
    scale = np.where(neg, -scale, scale)
    best_k = np.where(neg, 3 - best_k, best_k)
    scale = np.where(live, scale, _F(0))
    best_k = np.where(live, best_k, 0)
    L[:, ~live] = 1
    shifts = np.stack([np.where(best_k < 2, 1, -1), np.where(best_k % 2 == 0, 1, -1)])   # (2, S) per group
    off = np.zeros((2, S), bool)
    for g in (0, 1):
        for sh in (1, -1):
            cols = np.flatnonzero(live & (shifts[g] == sh))
            if cols.size:
                sub = np.ascontiguousarray(L[8 * g:8 * g + 8, cols])
                off[g, cols] = grid.snap(sub, _by_group(X[8 * g:8 * g + 8, cols], 8),
                                         _by_group(W[8 * g:8 * g + 8, cols], 8), scale[cols], _iq1_rounds(sh))[0]
                L[8 * g:8 * g + 8, cols] = sub
    qv = np.where(np.repeat(shifts, 8, axis=0) == 1, xp[L], xm[L])      # each element's level value
    redo = off.any(axis=0) & live
    if redo.any():
        cols = np.flatnonzero(redo)
        Wc, qc = W[:, cols], qv[:, cols]
        sqx_f = _seq_sum(np.ascontiguousarray((Wc * qc) * X[:, cols]))
        sq2_f = _seq_sum(np.ascontiguousarray((Wc * qc) * qc))
        with np.errstate(all="ignore"):
            scale[cols] = np.where((sqx_f > 0) & (sq2_f > 0), sqx_f / sq2_f, scale[cols])
    gi = np.where(live[None, :], grid.map[grid.codes(L)], 0)                # (2, S)
    qs = np.ascontiguousarray((gi & 255).astype(np.uint8).T).reshape(nb, 32)
    qh = ((gi[0] >> 8) | ((gi[1] >> 8) << 4)).astype(np.uint8).reshape(nb, 16)
    sc16 = scale.reshape(nb, 16)
    max_scale = sc16.max(axis=1)
    zero = max_scale == 0
    with np.errstate(all="ignore"):
        d = max_scale / _F(15)
        v = (_F(1) / d)[:, None] * sc16
        v -= _F(1)
        v *= _F(0.5)
    ls = np.clip(nearest_int(v), 0, 7)                                      # (nb, 16)
    qh = np.where(zero[:, None], qh, qh | _IQ1M_MASKS[best_k.reshape(nb, 16)])
    # the refit of d over every element, skipped sub-blocks too (grid point 0, the +delta levels)
    qv_all = np.where(live[None, :], qv, xp[grid.levels[0]][np.arange(16) % 8][:, None])
    mult = (2 * ls + 1).astype(_F).reshape(-1)                               # per sub-block, block-major
    q = qv_all * mult[None, :]
    Wq = W * q
    order256 = lambda a: np.ascontiguousarray(a.T.reshape(nb, 256).T)       # noqa: E731  element order per block
    sqx_f = _seq_sum(order256(Wq * X))
    sq2_f = _seq_sum(order256(Wq * q))
    with np.errstate(all="ignore"):
        d = np.where(sq2_f > 0, sqx_f / sq2_f, d)
        s16 = np.ascontiguousarray((d * _F(1.1125)).astype(np.float16)).view(np.uint16).astype(np.uint32)
    sc = np.zeros((nb, 4), np.uint32)
    for j in range(4):
        sc[:, j] = ls[:, 4 * j] | (ls[:, 4 * j + 1] << 3) | (ls[:, 4 * j + 2] << 6) | (ls[:, 4 * j + 3] << 9)
    sc[:, 0] |= (s16 & 0x000F) << 12
    sc[:, 1] |= (s16 & 0x00F0) << 8
    sc[:, 2] |= (s16 & 0x0F00) << 4
    sc[:, 3] |= s16 & 0xF000
    sc[zero] = 0
    return np.concatenate([qs, qh, sc.astype("<u2").view(np.uint8).reshape(nb, 8)], axis=1)


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
    "IQ1_S": (_needs("IQ1_S", _iq1_s), 128),
    "IQ1_M": (_needs("IQ1_M", _iq1_m), 128),
}
