"""modelport.gguf.quants with importance weights (an imatrix) and the IQ4, ternary and MXFP4 types, against ggml's
`ggml_quantize_chunk` (ctypes on llama-cpp-python's libggml-base) given the same weights, against gguf-py's
dequantizers, and through llama.cpp itself (a file of each new type loads and computes what its bytes say)."""

from __future__ import annotations

import numpy as np
import pytest

from gguf import GGMLQuantizationType, GGUFWriter
from modelport.core.dtypes import DTYPES
from modelport.gguf import quants
from tests.gguf.ggml_oracle import ggml_quantizer

from .test_mixes import _llama_tensors
from .test_quants import _cases, ggml  # noqa: F401  (the ggml fixture)

WEIGHTED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
IGNORING = ["Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]                  # ggml quantizes these the same with or without
NEW = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]


def _weights(n: int, seed: int = 5) -> dict[str, np.ndarray]:
    """Importance weights as an imatrix gives them (mean squared activations): spread over orders of magnitude,
    some columns never active (0), and all equal."""
    rng = np.random.default_rng(seed)
    return {
        "lognormal": rng.lognormal(0, 2, n).astype(np.float32),
        "with_zeros": np.where(rng.random(n) < 0.3, 0, rng.uniform(0.01, 5, n)).astype(np.float32),
        "flat": np.full(n, 0.7, np.float32),
    }


@pytest.fixture(scope="module")
def ggml_w():
    """ggml_quantize_chunk with importance weights (None for none)."""
    return ggml_quantizer()


def _diff(ours, ref) -> str:
    bad = np.argwhere(ours != ref)
    return f"{len(bad)} bytes differ, first at {bad[:5].tolist()}"


@pytest.mark.parametrize("qtype", WEIGHTED + IGNORING)
def test_bytes_equal_ggml_with_importance_weights(ggml_w, qtype):
    """Every input family of test_quants (outliers, zeros, constant rows, tiny and subnormal magnitudes, ...) with
    each kind of weights, and without weights for the new types."""
    cases = _cases()
    weightings = dict(_weights(512))
    if qtype in NEW:
        weightings["none"] = None
    for wlabel, w in weightings.items():
        for label, x in cases.items():
            ours = quants.quantize(x, qtype, imatrix=w)
            ref = ggml_w(x, qtype, w)
            assert ours.shape == ref.shape
            assert np.array_equal(ours, ref), f"{qtype} {label} weights={wlabel}: {_diff(ours, ref)}"


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
def test_bytes_equal_ggml_many_random_blocks_weighted(ggml_w, qtype):
    """Many blocks with random scale and offset per block, heavy-tailed weights with zeros: rare branches of the
    weighted searches (negative fitted minima, all-zero weight sub-blocks, make_qp_quants' descent)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, 1024)).astype(np.float32)
    x *= rng.lognormal(0, 2, (32, 4, 1)).repeat(256, axis=1).reshape(32, 1024).astype(np.float32)
    x += rng.normal(0, 0.5, (32, 1)).astype(np.float32)
    w = rng.lognormal(0, 3, 1024).astype(np.float32)
    w[rng.random(1024) < 0.1] = 0
    w[256:288] = 0                                                  # a whole sub-block nobody activates
    ours = quants.quantize(x, qtype, imatrix=w)
    assert np.array_equal(ours, ggml_w(x, qtype, w)), _diff(ours, ggml_w(x, qtype, w))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_0"])
def test_weighted_q4_0_q5_0_edge_blocks(ggml_w, qtype):
    """The compiled make_qx_quants search (legacy_jit) on the blocks where C's float rules decide: +a/-a ties for
    the max, signed zeros, magnitudes either side of GROUP_MAX_EPS, a block nobody activates (every sum 0), rows
    whose x^2 overflows (infinite sigma2 and weights, NaN sums that `>` skips), exact ties between trial scales;
    then rows of 3 blocks (an odd row length) over more than one chunk."""
    f = np.float32
    rng = np.random.default_rng(23)
    x = (rng.standard_normal((8, 512)) * 0.05).astype(f)
    x[0, 0:32] = np.where(np.arange(32) % 2, f(1.5), f(-1.5))      # -a first
    x[0, 32:64] = np.where(np.arange(32) % 2, f(-1.5), f(1.5))     # +a first
    x[0, 64:96] = 0
    x[0, 96:128] = -0.0
    x[0, 128:160] = np.linspace(-9e-16, 9e-16, 32, dtype=f)        # |max| < 1e-15: levels 0, d = 0
    x[0, 160:192] = np.where(np.arange(32) == 5, f(2e-15), f(0))   # just above it
    x[1, :] = f(0.75)                                                # constant: every trial fits the same
    x[2, :] = rng.integers(-4, 5, 512).astype(f) * f(0.5)           # few levels: exact ties between trials
    x[3, 7] = f(3e19)                                                # x^2 = inf: sigma2 and every weight inf
    x[4, 40:72] = (rng.standard_normal(32) * 2e19).astype(f)        # one block overflows, its row's sigma2 too
    x[5] = (rng.standard_normal(512) * 1e-40).astype(f)              # subnormal values: weights = qw*sqrt(~0)
    w = rng.lognormal(0, 2, 512).astype(f)
    w[rng.random(512) < 0.1] = 0
    w[224:256] = 0                                                   # a whole block nobody activates
    ours = quants.quantize(x, qtype, imatrix=w)
    assert np.array_equal(ours, ggml_w(x, qtype, w)), _diff(ours, ggml_w(x, qtype, w))
    odd = (rng.standard_normal((1400, 96)) * rng.lognormal(0, 2, (1400, 1))).astype(f)   # 4200 blocks: 2 chunks
    w3 = rng.lognormal(0, 1, 96).astype(f)
    ours = quants.quantize(odd, qtype, threads=2, imatrix=w3)
    assert np.array_equal(ours, ggml_w(odd, qtype, w3)), _diff(ours, ggml_w(odd, qtype, w3))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_0", "IQ4_XS"])
def test_experts_take_their_own_weights(ggml_w, qtype):
    """A 3-D tensor (n_expert, rows, ncols) with one row of weights per expert: each expert is quantized with its
    own, as llama-quantize passes each expert's slice of the imatrix to ggml_quantize_chunk."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 4, 512)) * 0.05).astype(np.float32)
    w = rng.lognormal(0, 2, (3, 512)).astype(np.float32)
    ours = quants.quantize(x, qtype, imatrix=w)
    for e in range(3):
        assert np.array_equal(ours[e], ggml_w(x[e], qtype, w[e])), f"expert {e}"
    shared = quants.quantize(x, qtype, imatrix=w[0])                # one row of weights: shared by all experts
    assert np.array_equal(shared[1], ggml_w(x[1], qtype, w[0]))
    assert not np.array_equal(shared[1], ours[1])


@pytest.mark.parametrize("qtype", IGNORING)
def test_types_that_ignore_the_weights(qtype):
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    w = np.random.default_rng(1).lognormal(0, 2, 512).astype(np.float32)
    assert qtype not in quants.USES_IMATRIX
    assert np.array_equal(quants.quantize(x, qtype, imatrix=w), quants.quantize(x, qtype))


@pytest.mark.parametrize("qtype", WEIGHTED)
def test_weights_change_the_bytes_and_lower_the_weighted_error(qtype):
    """The point of an imatrix: the error weighted by it is lower than without it (columns that matter more are
    kept more exactly)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    w = rng.lognormal(0, 2, 512).astype(np.float32)
    plain = quants.dequantize(quants.quantize(x, qtype), qtype)
    weighted = quants.dequantize(quants.quantize(x, qtype, imatrix=w), qtype)
    err_plain = float(np.sum(w * (x - plain) ** 2))
    err_weighted = float(np.sum(w * (x - weighted) ** 2))
    assert err_weighted < err_plain


@pytest.mark.parametrize("qtype,rows", [("Q4_0", 600), ("Q4_K", 80), ("IQ4_XS", 80), ("IQ4_NL", 300)])
def test_threads_and_chunks_do_not_change_weighted_bytes(ggml_w, qtype, rows):
    """More rows than one chunk: chunks are whole rows (the legacy types' weights use the row's mean square)."""
    x = np.random.default_rng(5).standard_normal((rows, 4096)).astype(np.float32)
    w = np.random.default_rng(6).lognormal(0, 1, 4096).astype(np.float32)
    one = quants.quantize(x, qtype, threads=1, imatrix=w)
    assert np.array_equal(one, quants.quantize(x, qtype, threads=3, imatrix=w))
    assert np.array_equal(one[-3:], ggml_w(x[-3:], qtype, w))


def test_bad_importance_weights():
    x = np.zeros((2, 512), np.float32)
    with pytest.raises(ValueError, match=r"importance matrix has 256 values for rows of 512"):
        quants.quantize(x, "Q4_K", imatrix=np.ones(256, np.float32))
    with pytest.raises(ValueError, match=r"expected \(512,\) or \(3, 512\)"):
        quants.quantize(np.zeros((3, 2, 512), np.float32), "Q4_K", imatrix=np.ones((2, 512), np.float32))
    bad = np.ones(512, np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        quants.quantize(x, "IQ4_XS", imatrix=bad)


# Upper bounds for RMS error / RMS on N(0, 1) data, about 10 % above what ggml's algorithms give (measured: IQ4_NL
# 0.0756, IQ4_XS 0.0761, MXFP4 0.1155; TQ1_0 and TQ2_0 0.808: three levels at 0 and +-max of 256, made for
# ternary-trained weights, not for Gaussian ones).
_REL_ERR = {"IQ4_NL": 0.083, "IQ4_XS": 0.084, "TQ1_0": 0.85, "TQ2_0": 0.85, "MXFP4": 0.127}


@pytest.mark.parametrize("qtype", NEW)
def test_new_types_round_trip_through_gguf_py(qtype):
    x = np.random.default_rng(3).standard_normal((32, 768)).astype(np.float32)
    q = quants.quantize(x, qtype)
    assert q.nbytes == DTYPES[qtype].nbytes(x.size)
    y = quants.dequantize(q, qtype)
    assert y.shape == x.shape and y.dtype == np.float32
    rel = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x ** 2)))
    assert rel < _REL_ERR[qtype]


def test_ternary_values_are_exact():
    """Weights that are already ternary (BitNet b1.58: {-1, 0, 1} times one scale per block) survive exactly."""
    rng = np.random.default_rng(4)
    x = (rng.integers(-1, 2, (4, 512)) * 0.125).astype(np.float32)
    x[:, 0] = 0.125                                                 # every block's scale is 0.125
    for qtype in ("TQ1_0", "TQ2_0"):
        assert np.array_equal(quants.dequantize(quants.quantize(x, qtype), qtype), x)


def test_mxfp4_keeps_values_on_its_grid():
    """E2M1 values times a power-of-two block scale are exactly representable in MXFP4."""
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    rng = np.random.default_rng(5)
    scale = np.float32(2.0) ** rng.integers(-8, 8, (8, 2)).astype(np.float32)
    x = rng.choice(grid, (8, 64)) * scale.repeat(32, axis=1)
    x[:, ::32] = 6 * scale                                          # each block's max sets its exponent
    x = x.astype(np.float32)
    assert np.array_equal(quants.dequantize(quants.quantize(x, "MXFP4"), "MXFP4"), x)


def test_mxfp4_exponent_next_to_powers_of_two(ggml_w):
    """e = floor(log2f(amax)) - 2 + 127: just below 2^k, log2f rounds up to k; subnormal maxima wrap the uint8."""
    rows = []
    for k in range(-140, 128, 3):
        v = np.float32(2.0) ** np.float32(k)
        for _ in range(3):
            row = np.full(32, v * np.float32(0.3), np.float32)
            row[5], row[7] = v, -v * np.float32(0.9)
            rows.append(row)
            v = np.nextafter(v, np.float32(0))
    x = np.array(rows, np.float32)
    assert np.array_equal(quants.quantize(x, "MXFP4"), ggml_w(x, "MXFP4", None))


# ------------------------------------------------------------------------------ llama.cpp runs the files

_DIMS = (2, 256, 4, 2, 512, 64)                                      # n_layer, hidden, heads, kv heads, ffn, vocab


def _write_gguf(path, tensors, qtype=None):
    """A tiny llama GGUF (test_mixes' metadata); tensors given as uint8 block bytes are stored as `qtype`."""
    n_layer, hidden, n_head, n_kv, ffn, vocab = _DIMS
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens = [f"t{i}" for i in range(vocab)]
    tokens[2:4] = ["t", "1"]                                          # llama.cpp wants at least one merge
    w.add_token_list(tokens)
    w.add_token_types([1] * vocab)
    w.add_token_merges(["t 1"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for name, arr in tensors.items():
        if arr.dtype == np.uint8:
            w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=GGMLQuantizationType[qtype])
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _logits(llama_cpp, path, ids):
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        llm.eval(ids)
        logits = np.array(llm.scores[:len(ids)], np.float32)
        out = [tok for _, tok in zip(range(4), llm.generate(ids, top_k=1, temp=0.0, reset=True))]
    finally:
        llm.close()
    return logits, out


@pytest.mark.slow
@pytest.mark.parametrize("qtype", NEW + ["Q4_K"])
def test_llama_cpp_runs_a_file_of_each_type(tmp_path, qtype):
    """llama.cpp loads a model whose weights are `qtype` (quantized here with an imatrix where the type uses one),
    generates with it, and its logits are those of the same model with gguf-py's dequantization of our bytes as F32
    weights (within llama.cpp's own 8-bit quantization of the activations): it reads our blocks as we wrote them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    n_layer, hidden, n_head, n_kv, ffn, vocab = _DIMS
    tensors = _llama_tensors(n_layer, hidden, n_head, n_kv, ffn, vocab, False, seed=7)
    rng = np.random.default_rng(8)
    imatrix = {n: rng.lognormal(0, 1, n).astype(np.float32) for n in (hidden, ffn)}
    quantized, dequantized = {}, {}
    for name, arr in tensors.items():
        if arr.ndim == 2 and name != "token_embd.weight":
            q = quants.quantize(arr, qtype, imatrix=imatrix[arr.shape[1]] if qtype in quants.USES_IMATRIX else None)
            quantized[name] = q
            dequantized[name] = quants.dequantize(q, qtype)
        else:
            quantized[name] = dequantized[name] = arr
    _write_gguf(tmp_path / "q.gguf", quantized, qtype)
    _write_gguf(tmp_path / "f32.gguf", dequantized)
    ids = [int(i) for i in rng.integers(2, vocab, 24)]
    got, generated = _logits(llama_cpp, tmp_path / "q.gguf", ids)
    want, _ = _logits(llama_cpp, tmp_path / "f32.gguf", ids)
    assert len(generated) == 4 and np.isfinite(got).all()
    rel = float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))
    assert rel < 0.05, f"{qtype}: llama.cpp's logits differ from the dequantized model's by {rel:.3f}"
