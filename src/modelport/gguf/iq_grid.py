"""The grid IQ quantizers (IQ1_S ... IQ3_S), byte-identical to ggml's `quantize_iq*`: the grids and neighbour lists
here, the per-sub-block search compiled with numba in modelport.gguf.iq_grid_jit (IQ2_*, IQ3_*) and
modelport.gguf.iq1 (IQ1_S, IQ1_M).

Why our own: these types are what the low-bit files people download are made of, and neither gguf-py nor any
pip package can write them. The algorithms are ports of ggml-quants.c (docs/gguf.md §6 for the float rules:
C's expression order, sequential sums, ggml's nearest_int): each group of 8 (IQ2, IQ1) or 4 (IQ3) values is
rounded onto a lattice; a point that is not in the type's grid is replaced by its nearest grid neighbour, by
weighted distance, among a short list per lattice point that ggml precomputes at init (`iq2xs_init_impl`).

The grids come from gguf-py, which carries them for its dequantizers; the lattice map and neighbour lists are
rebuilt from them exactly as ggml builds them (sorted by integer distance, then by grid index; the points at the
`nwant` smallest distances), and handed to the compiled kernels as plain arrays.

Why numba for the search: it is a loop per group with data-dependent work (on the grid or not, lists of 1 to 200
neighbours). Vectorised in NumPy over the sub-blocks of a chunk (per-element state in (elements, sub-blocks)
arrays, the neighbour search as one flat computation over (group, neighbour) pairs, in rounds by list length), the
IQ2/IQ3 kernels reached only 0.37-0.50x of ggml's single core however the work was laid out (a whole-grid matrix
product per chunk, coordinate-major planes, tabulated terms and np.einsum were all measured, none faster); as numba
loops in C's order they run at 1.2-1.5x (docs/gguf.md §6.3). The kernel modules are imported only when one of
their types first runs: `import numba` costs 0.5 s, which no command that does not quantize should pay.

Contract with modelport.gguf.quants: `GRID_KERNELS[name] = (fn, blocks_per_chunk)`, `fn(x, qw)` with x and qw
(importance weights, or None where ggml allows it) of shape (nblocks, 256) float32, returning (nblocks, type_size)
uint8; the kernels release the GIL, so quants' thread pool runs chunks in parallel. `REQUIRES_IMATRIX` lists the
types ggml refuses to quantize without one.
"""

from __future__ import annotations

import functools

import numpy as np

from ..core.errors import ModelportError

#: Types ggml asserts an importance matrix for (ggml_quantize_requires_imatrix; IQ1_M too, in its quantizer).
REQUIRES_IMATRIX = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S"})


# ------------------------------------------------------------------------------------------------- grids

class _Grid:
    """A type's grid: levels (G, dim) in 0..nlev-1, the lattice map code -> grid index (or -1), and per off-grid
    code (numbered by `slot`) its neighbour count and list, a row of `width` in the flat `table`."""

    def __init__(self, gguf_cls, bits: int, nwant: int):
        hexes = np.frombuffer(gguf_cls.grid_hex, np.uint8).reshape(-1, 2)
        nib = np.where(hexes > 0x40, hexes + 9, hexes) & 0x0F
        packed = (nib[:, 0] << 4) | nib[:, 1]
        per_byte = 8 // bits                     # gguf-py's layout: 8 // per_byte bits a field
        fields = (packed[:, None] >> np.arange(0, 8, 8 // per_byte, dtype=np.uint8)) & ((1 << bits) - 1)
        self.levels = fields.reshape(gguf_cls.grid_shape).astype(np.int32)
        self.size, self.dim = self.levels.shape
        self.bits = bits
        self.shifts = (bits * np.arange(self.dim)).astype(np.int32)
        self.pos = (2 * self.levels + 1).astype(np.float32)      # ggml's grid points, as floats for the distances
        codes = (self.levels << self.shifts).sum(axis=1)
        nmap = 1 << (bits * self.dim)
        self.map = np.full(nmap, -1, np.int32)
        self.map[codes] = np.arange(self.size, dtype=np.int32)
        self._neighbours(nwant)

    def _neighbours(self, nwant: int) -> None:
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


@functools.cache
def _grid(name: str) -> _Grid:
    from gguf import quants as gq
    spec = {"IQ2_XXS": (gq.IQ2_XXS, 2, 2), "IQ2_XS": (gq.IQ2_XS, 2, 2), "IQ2_S": (gq.IQ2_S, 2, 1),
            "IQ3_XXS": (gq.IQ3_XXS, 3, 2), "IQ3_S": (gq.IQ3_S, 3, 3), "IQ1_S": (gq.IQ1_S, 2, 3)}
    return _Grid(*spec[name])


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
