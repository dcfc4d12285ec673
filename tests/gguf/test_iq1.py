"""modelport.gguf.iq1 (IQ1_S and IQ1_M compiled with numba) beyond test_iq_grid's cases: its tables against
iq_grid's grid, the thread pool (the kernels release the GIL and keep their scratch per call), and rows made to
reach the compiled loops' corners, against ggml's `ggml_quantize_chunk`."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.gguf import iq_grid, quants
from tests.gguf.ggml_oracle import ggml_quantizer

IQ1 = ("IQ1_S", "IQ1_M")


def test_kernel_tables_agree_with_gguf_py_grid():
    """Lattice points by base-3 code: each of gguf-py's IQ1 grid points maps to its index; every other point has a
    neighbour row, of grid points, nearest first (by squared distance; ggml keeps those at its 3 smallest)."""
    from gguf import quants as gq

    gq.IQ1_S.init_grid()
    levels = (np.asarray(gq.IQ1_S.grid).reshape(-1, 8) + 1).astype(np.int64)            # -1, 0, 1 -> 0, 1, 2
    tables = iq_grid.iq1_tables()
    base3 = (levels * 3 ** np.arange(8)).sum(axis=1)
    assert np.array_equal(tables.map3[base3], np.arange(len(levels)))
    off = np.flatnonzero(tables.map3 < 0)
    assert len(off) + len(levels) == 3 ** 8 and (tables.slot3[off] >= 0).all()
    rng = np.random.default_rng(0)
    for code in rng.choice(off, 50, replace=False):
        point = (code // 3 ** np.arange(8)) % 3
        listed = tables.nbr_code[tables.slot3[code], :tables.count[tables.slot3[code]]].astype(np.int64)
        nbr = (listed[:, None] >> (2 * np.arange(8))) & 3
        assert (tables.map3[(nbr * 3 ** np.arange(8)).sum(axis=1)] >= 0).all()
        d2 = ((nbr - point) ** 2).sum(axis=1)
        assert (np.diff(d2) >= 0).all() and d2[0] == ((levels - point) ** 2).sum(axis=1).min()
        assert len(np.unique(d2)) <= 3


@pytest.mark.parametrize("qtype", IQ1)
def test_threads_do_not_change_bytes(qtype):
    x = np.random.default_rng(7).standard_normal((160, 512)).astype(np.float32)        # 320 blocks: two chunks
    im = np.random.default_rng(8).lognormal(0, 1, 512).astype(np.float32)
    assert np.array_equal(quants.quantize(x, qtype, threads=1, imatrix=im),
                          quants.quantize(x, qtype, threads=3, imatrix=im))


def _corner_rows(n: int = 512) -> np.ndarray:
    f = np.float32
    rng = np.random.default_rng(5)
    subnormal_weighted = rng.standard_normal(n).astype(f)
    subnormal_weighted[::4] = f(3e-39) * rng.choice([-1, 1], n // 4)      # with `holes`: d underflows, 1/d is inf
    ties = rng.choice(np.array([-0.5, -0.0, 0.0, 0.5, 1.0], f), n)          # the sort's order among equal values
    outliers = (rng.standard_normal(n) * 0.01).astype(f)
    outliers[::16] = f(1e4)
    near_eps = (rng.standard_normal(n) * 1e-7).astype(f)                    # IQ1_M's sub-block threshold
    return np.stack([subnormal_weighted, ties, outliers, near_eps, np.full(n, f(0.7))])


@pytest.mark.long          # ggml builds its IQ1 neighbour tables on first use: 11-14 s
@pytest.mark.parametrize("qtype", IQ1)
def test_corner_rows_equal_ggml(qtype):
    ggml = ggml_quantizer()
    x = _corner_rows()
    holes = np.zeros(x.shape[1], np.float32)
    holes[::4] = 1
    spread = np.random.default_rng(9).lognormal(0, 2, x.shape[1]).astype(np.float32)
    for label, im in (("holes", holes), ("spread", spread), ("none", None)):
        if im is None and qtype == "IQ1_S":
            continue
        ours, ref = quants.quantize(x, qtype, imatrix=im), ggml(x, qtype, im)
        bad = [i for i in range(len(x)) if not np.array_equal(ours[i], ref[i])]
        assert not bad, f"{qtype} imatrix={label}: rows {bad} differ"
