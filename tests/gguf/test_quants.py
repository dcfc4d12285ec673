"""modelport.gguf.quants against ggml itself (ggml_quantize_chunk through ctypes, from llama-cpp-python's libggml-base)
and against gguf-py (its legacy quantizers and its dequantizers)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from modelport.gguf import quant_math, quants
from tests.gguf.ggml_oracle import ggml_quantizer

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
ALL = LEGACY + KQUANTS


def _cases(n: int = 512) -> dict[str, np.ndarray]:
    """Varied inputs, 8 rows of n each (block-aligned), built to hit every branch of the reference code."""
    rng = np.random.default_rng(1234)
    f = np.float32
    normal = rng.standard_normal((8, n)).astype(f) * f(0.05)
    outliers = normal.copy()
    outliers.flat[rng.choice(outliers.size, 40, replace=False)] *= f(300)
    sparse = np.where(rng.random((8, n)) < 0.9, f(0), rng.standard_normal((8, n)).astype(f))
    mixed = normal.copy()
    mixed[0] = 0
    mixed[1] = -0.0
    mixed[2] = f(0.3)
    mixed[3] = f(-1.7)
    mixed[4, :64] = 0
    mixed[5, ::2] = -0.0
    mixed[6, 32:64] = f(2.0)
    levels = rng.integers(0, 3, (8, n)).astype(f)
    return {
        "normal": normal,
        "outliers": outliers,
        "sparse": sparse,
        "zero_const_rows": mixed,
        "tiny": (rng.standard_normal((8, n)) * 1e-7).astype(f),
        "subnormal_scales": (rng.standard_normal((8, n)) * 1e-30).astype(f),
        # subnormal weights: 1/scale overflows to inf, and ggml's casts of inf (x86) decide the levels
        "subnormal_values": (rng.standard_normal((8, n)) * 1e-40).astype(f),
        "smallest_subnormals": (rng.integers(-2, 3, (8, n)) * 1.4e-45).astype(f),
        # x*x overflows: inf weights, NaN scales that ggml's `>` comparisons skip and nearest_int(NaN) = 0
        "squares_overflow": (rng.standard_normal((8, n)) * 1e30).astype(f),
        "wide_range": (rng.standard_normal((8, n)) * 10.0 ** rng.integers(-20, 20, (8, n))).astype(f),
        "positive": rng.uniform(0.5, 2.0, (8, n)).astype(f),
        "negative": -rng.uniform(0.0, 3.0, (8, n)).astype(f),
        "heavy_tail": rng.standard_t(2, (8, n)).astype(f),
        "bf16_rounded": (rng.standard_normal((8, n)).astype(f).view(np.uint32) & 0xFFFF0000).view(f),
        "few_levels": rng.integers(-3, 4, (8, n)).astype(f) * f(0.25),
        # non-negative blocks whose min is a zero of either sign (ggml's min is the first of +0/-0)
        "signed_zeros": np.where(levels == 0, rng.choice(np.array([0.0, -0.0], f), (8, n)), levels * f(0.5)),
    }


# ------------------------------------------------------------------------------ ggml oracle (optional)

@pytest.fixture(scope="module")
def ggml():
    """ggml_quantize_chunk from the libggml-base that llama-cpp-python ships (optional dev extra)."""
    return ggml_quantizer()


@pytest.mark.parametrize("qtype", ALL + ["F16", "BF16"])
def test_bytes_equal_ggml(ggml, qtype):
    for label, x in _cases().items():
        ours = quants.quantize(x, qtype)
        ref = ggml(x, qtype)
        assert ours.shape == ref.shape
        if not np.array_equal(ours, ref):
            bad = np.argwhere(ours != ref)[:5]
            pytest.fail(f"{qtype} {label}: {len(np.argwhere(ours != ref))} bytes differ, first at {bad.tolist()}")


@pytest.mark.parametrize("qtype", KQUANTS)
def test_bytes_equal_ggml_many_random_blocks(ggml, qtype):
    """Many blocks with random per-block scale and offset, so rare branches (negative fitted min, ties) occur."""
    rng = np.random.default_rng(99)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    x *= rng.lognormal(0, 2, (64, 4, 1)).repeat(256, axis=1).reshape(64, 1024).astype(np.float32)
    x += rng.normal(0, 0.5, (64, 1)).astype(np.float32)
    assert np.array_equal(quants.quantize(x, qtype), ggml(x, qtype))


@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_bytes_equal_ggml_across_slices(ggml, qtype):
    """More blocks than one slice of the legacy and Q8_0 kernels (they work on a few thousand blocks at a time):
    random per-block scales and offsets, +a/-a ties for the signed max, zero and -0 blocks, subnormal steps (Q4_1's
    clamp) and a last slice of a block count that is not a multiple of 8, to check every slice lands in place."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((21, 16384)).astype(np.float32)
    x *= rng.lognormal(0, 2, (21, 512, 1)).repeat(32, axis=2).reshape(21, 16384).astype(np.float32)
    x += rng.normal(0, 0.3, (21, 512, 1)).repeat(32, axis=2).reshape(21, 16384).astype(np.float32)
    x[3, 64:96] = 0
    x[3, 96:128] = -0.0
    x[4, 0:32] = np.where(np.arange(32) % 2, 1.5, -1.5)          # +a first, then -a
    x[4, 33:64:2] = 1.5
    x[4, 32:64:2] = -1.5                                        # -a first
    x[5] = (rng.standard_normal(16384) * 5e-38).astype(np.float32)
    for rows in (x, x[:, :16384 - 96]):                     # 10752 blocks, then 10689
        rows = np.ascontiguousarray(rows)
        assert np.array_equal(quants.quantize(rows, qtype, threads=1), ggml(rows, qtype)), qtype


# ------------------------------------------------------------------------------ always-run checks

@pytest.mark.parametrize("qtype", LEGACY)
def test_legacy_matches_gguf_py_off_zero(qtype):
    """gguf-py's legacy quantizers agree with ggml except for the sign of zero scales, so on data without
    zero blocks its bytes must equal ours."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((16, 256)) * rng.uniform(0.01, 10, (16, 1))).astype(np.float32)
    x += rng.uniform(-1, 1, (16, 1)).astype(np.float32)
    ref = gguf_quantize(x, GGMLQuantizationType[qtype])
    assert np.array_equal(quants.quantize(x, qtype), ref)


def test_zero_blocks_use_ggml_signed_zero():
    """ggml computes Q4_0/Q5_0's scale as max / -8 with max starting at +0.0, so an all-zero block stores -0.0 (0x8000)."""
    x = np.zeros((1, 32), np.float32)
    assert quants.quantize(x, "Q4_0")[0, :2].tobytes() == b"\x00\x80"
    assert quants.quantize(x, "Q5_0")[0, :2].tobytes() == b"\x00\x80"
    assert quants.quantize(x, "Q8_0")[0, :2].tobytes() == b"\x00\x00"


# Upper bounds for RMS error / RMS on N(0, 1) data, about 20 % above what the reference algorithms give
# (measured: Q2_K 0.294, Q3_K 0.150, Q4_K 0.070, Q5_K 0.036, Q6_K 0.0175, Q4_0 0.086, Q4_1 0.077, Q5_0 0.042,
# Q5_1 0.038, Q8_0 0.0053), so a wrong scale, offset or packing fails.
_REL_ERR = {"Q2_K": 0.35, "Q3_K": 0.18, "Q4_K": 0.085, "Q5_K": 0.045, "Q6_K": 0.022,
            "Q4_0": 0.1, "Q4_1": 0.09, "Q5_0": 0.05, "Q5_1": 0.045, "Q8_0": 0.0065}


@pytest.mark.parametrize("qtype", ALL)
def test_round_trip_through_gguf_py_dequantize(qtype):
    x = np.random.default_rng(3).standard_normal((32, 768)).astype(np.float32)
    q = quants.quantize(x, qtype)
    y = quants.dequantize(q, qtype)
    assert y.shape == x.shape and y.dtype == np.float32
    rel = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x ** 2)))
    assert rel < _REL_ERR[qtype]


@pytest.mark.parametrize("qtype", KQUANTS)
def test_exact_grid_values_survive(qtype):
    """16 evenly spaced levels per sub-block: Q4_K/Q5_K (scale + min, 16+ levels) must reproduce them almost exactly
    (measured max error 0.001); the others are bounded by half a step."""
    x = np.tile(np.linspace(-1, 1, 16, dtype=np.float32), 16)[None, :]
    y = quants.dequantize(quants.quantize(x, qtype), qtype)
    assert np.max(np.abs(x - y)) < {"Q2_K": 0.3, "Q3_K": 0.2, "Q4_K": 0.005, "Q5_K": 0.005, "Q6_K": 0.02}[qtype]


@pytest.mark.parametrize("qtype", ALL + ["F32", "F16", "BF16"])
def test_shapes_and_sizes(qtype):
    from modelport.core.dtypes import DTYPES
    x = np.random.default_rng(0).standard_normal((3, 2, 512)).astype(np.float32)
    q = quants.quantize(x, qtype)
    assert q.dtype == np.uint8
    assert q.shape[:2] == (3, 2)
    assert q.nbytes == DTYPES[qtype].nbytes(x.size)


@pytest.mark.parametrize("qtype,rows", [("Q4_K", 80), ("Q6_K", 80), ("Q8_0", 300), ("Q4_1", 300), ("Q3_K", 200)])
def test_threads_do_not_change_bytes(qtype, rows):
    x = np.random.default_rng(5).standard_normal((rows, 4096)).astype(np.float32)   # more than one chunk of blocks
    assert np.array_equal(quants.quantize(x, qtype, threads=1), quants.quantize(x, qtype, threads=4))


def test_bad_row_length_and_type():
    with pytest.raises(ValueError, match="block size 256"):
        quants.quantize(np.zeros((2, 96), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="block size 32"):
        quants.quantize(np.zeros((2, 48), np.float32), "Q8_0")
    bad = np.ones((2, 256), np.float32)
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        quants.quantize(bad, "Q6_K")
    for value in (np.nan, np.inf, -np.inf):          # the legacy kernels check their own max and min, by slice
        bad = np.ones((40, 8192), np.float32)
        bad[39, 8000] = value
        for qtype in LEGACY:
            with pytest.raises(ValueError, match=f"cannot quantize to {qtype}: the tensor contains NaN or infinity"):
                quants.quantize(bad, qtype, threads=1)
    with pytest.raises(ValueError, match="cannot quantize to Q8_K"):
        quants.quantize(np.zeros((2, 256), np.float32), "Q8_K")


def test_accepts_enum_and_other_float_inputs():
    x = np.random.default_rng(0).standard_normal((4, 256))
    a = quants.quantize(x, GGMLQuantizationType.Q4_K)
    b = quants.quantize(x.astype(np.float32), "q4_k")
    assert np.array_equal(a, b)



def test_rounding_matches_ggml_nearest_int_past_2_22():
    """ggml rounds with `float v = x + 12582912.f; int i = bits(v); return (i & 0x7fffff) - 0x400000`, which
    wraps for |x| >= 2^22 instead of rounding. The kernels use np.rint below that and the bit trick above it;
    real blocks never get there (a level needs |x| >= amax/8, which bounds every x/d), so check it directly."""
    import struct

    def c_nearest_int(x: float) -> int:
        v = np.float32(np.float32(x) + np.float32(12582912.0))
        return (struct.unpack("<i", struct.pack("<f", v))[0] & 0x7FFFFF) - 0x400000

    v = np.array([0.5, 1.5, -2.5, 4194302.7, 4194303.0, 4194304.0, -4194305.0, 5e6, -7e6, 8388607.0, 3.3e7],
                 np.float32)
    expected = np.array([min(max(c_nearest_int(float(x)), -32), 31) for x in v], np.float32)
    assert np.array_equal(quant_math.rint_clip(v.copy(), -32, 31), expected)
    assert expected[3:].tolist() != np.clip(np.rint(v[3:]), -32, 31).tolist()   # the wrap does differ from rint
