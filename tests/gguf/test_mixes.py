"""modelport.gguf.mixes (per-tensor types of llama.cpp's file types) and the kernels, against llama.cpp's own
`llama_model_quantize` (through llama-cpp-python, an optional dev extra) run on F32 GGUFs written here by gguf-py."""

from __future__ import annotations

import numpy as np
import pytest

from gguf import GGUFReader, GGUFWriter
from modelport.gguf import quants
from modelport.gguf.mixes import FTYPES, ModelShape, allows_quantization, choose_types


def _llama_tensors(n_layer, hidden, n_head, n_kv, ffn, vocab, tied, seed=0):
    """Tensors of a tiny llama-shaped model, GGUF names, NumPy shapes (rows, row length)."""
    rng = np.random.default_rng(seed)
    kv = hidden // n_head * n_kv

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    t = {"token_embd.weight": w(vocab, hidden), "output_norm.weight": np.ones(hidden, np.float32)}
    if not tied:
        t["output.weight"] = w(vocab, hidden)
    for i in range(n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = np.ones(hidden, np.float32)
        t[p + "attn_q.weight"] = w(hidden, hidden)
        t[p + "attn_k.weight"] = w(kv, hidden)
        t[p + "attn_v.weight"] = w(kv, hidden)
        t[p + "attn_output.weight"] = w(hidden, hidden)
        t[p + "ffn_norm.weight"] = np.ones(hidden, np.float32)
        t[p + "ffn_gate.weight"] = w(ffn, hidden)
        t[p + "ffn_up.weight"] = w(ffn, hidden)
        t[p + "ffn_down.weight"] = w(hidden, ffn)
    return t


def _write_f32_gguf(path, tensors, n_layer, hidden, n_head, n_kv, ffn, vocab):
    """The llama metadata llama.cpp requires (GGUF.md §2) plus a tiny gpt2-style vocabulary."""
    wr = GGUFWriter(str(path), "llama")
    wr.add_context_length(128)
    wr.add_embedding_length(hidden)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(ffn)
    wr.add_head_count(n_head)
    wr.add_head_count_kv(n_kv)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_dimension_count(hidden // n_head)
    wr.add_rope_freq_base(10000.0)
    wr.add_file_type(0)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")
    tokens = [f"t{i}" for i in range(vocab)]
    wr.add_token_list(tokens)
    wr.add_token_types([1] * vocab)
    wr.add_token_merges(["t 1"] if "t1" in tokens and "t" in tokens else [])
    wr.add_bos_token_id(0)
    wr.add_eos_token_id(1)
    for name, arr in tensors.items():
        wr.add_tensor(name, arr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _ref_types(tensors):
    return {name: (arr.shape, "F32") for name, arr in tensors.items()}


# ------------------------------------------------------------------------------ rules alone (no llama.cpp)

def test_q4_k_m_32_layers_use_more_bits_pattern():
    tensors = _ref_types(_llama_tensors(32, 256, 8, 2, 256, 64, tied=False))
    types = choose_types(tensors, "Q4_K_M", ModelShape(32, 8, 2))
    six = {i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"}
    assert six == {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    assert {i for i in range(32) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"} == six
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"
    assert types["blk.5.attn_q.weight"] == "Q4_K"
    assert types["blk.5.attn_norm.weight"] == "F32"


def test_tied_embeddings_take_the_output_rule():
    tensors = _ref_types(_llama_tensors(2, 256, 4, 4, 512, 64, tied=True))
    assert choose_types(tensors, "Q4_0", ModelShape(2, 4, 4))["token_embd.weight"] == "Q6_K"
    assert choose_types(tensors, "Q8_0", ModelShape(2, 4, 4))["token_embd.weight"] == "Q8_0"
    assert choose_types(tensors, "F16", ModelShape(2, 4, 4))["token_embd.weight"] == "F16"


def test_row_length_fallbacks():
    tensors = _ref_types(_llama_tensors(2, 64, 4, 2, 96, 64, tied=False))
    types = choose_types(tensors, "Q4_K_M", ModelShape(2, 4, 2))
    assert types["blk.0.attn_q.weight"] == "Q5_0"            # Q4_K -> Q5_0
    assert types["blk.1.ffn_down.weight"] == "Q8_0"          # Q6_K (use_more_bits) -> Q8_0
    assert types["output.weight"] == "Q8_0"                  # row not divisible by 256 -> Q8_0
    odd = _ref_types(_llama_tensors(1, 48, 4, 4, 80, 64, tied=False))
    assert choose_types(odd, "Q4_K_M", ModelShape(1, 4, 4))["blk.0.attn_q.weight"] == "F16"


def test_candidates():
    assert allows_quantization("blk.0.attn_q.weight", (64, 64))
    assert not allows_quantization("blk.0.attn_norm.weight", (64,))
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", (8, 64))
    assert not allows_quantization("blk.0.attn_q.weight", (1, 64))      # one row: 1-D for ggml
    assert not allows_quantization("rope_freqs", (64, 64))
    with pytest.raises(ValueError, match="unknown file type"):
        choose_types({}, "Q9_K", ModelShape(1, 1, 1))


# ------------------------------------------------------------------------------ against llama_model_quantize

MODELS = {
    # name: (n_layer, hidden, n_head, n_kv, ffn, vocab, tied, compare bytes)
    "h256_l2_gqa2": (2, 256, 4, 2, 512, 64, False, True),
    "h64_l2_tied_fallbacks": (2, 64, 4, 4, 96, 32, True, True),
    "h320_l8_gqa5": (8, 320, 5, 1, 352, 48, False, True),
    "h256_l8_gqa4_ffn352": (8, 256, 8, 2, 352, 48, False, True),
    "h48_l2_f16_fallback": (2, 48, 4, 2, 80, 32, False, True),
    "h256_l32_gqa4": (32, 256, 8, 2, 256, 32, False, False),
}

TYPE_NAMES = {0: "F32", 1: "F16", 30: "BF16"}
LEGACY_AND_K = [f for f in FTYPES if f[0] in "FBQ"]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")     # optional dev extra (llama-cpp-python), not a core dependency


def _quantize_with_llama(llama_cpp, src, dst, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed for {ftype}"


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_types_and_bytes_match_llama_quantize(llama_cpp, tmp_path, model):
    n_layer, hidden, n_head, n_kv, ffn, vocab, tied, check_bytes = MODELS[model]
    tensors = _llama_tensors(n_layer, hidden, n_head, n_kv, ffn, vocab, tied, seed=list(MODELS).index(model))
    src = tmp_path / "f32.gguf"
    _write_f32_gguf(src, tensors, n_layer, hidden, n_head, n_kv, ffn, vocab)
    shape = ModelShape(n_layer, n_head, n_kv)
    for ftype in LEGACY_AND_K:      # the IQ, TQ and MXFP4 mixes: tests/gguf/test_imatrix.py
        dst = tmp_path / f"{ftype}.gguf"
        _quantize_with_llama(llama_cpp, src, dst, ftype)
        reader = GGUFReader(str(dst))
        got = {t.name: t.tensor_type.name for t in reader.tensors}
        want = choose_types(_ref_types(tensors), ftype, shape)
        assert got == want, f"{model} {ftype}: " + str({k: (got[k], want[k]) for k in got if got[k] != want.get(k)})
        if not check_bytes:
            continue
        for t in reader.tensors:
            ours = quants.quantize(tensors[t.name], got[t.name])
            assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ours.reshape(-1)), \
                f"{model} {ftype}: {t.name} ({got[t.name]}) bytes differ"
        dst.unlink()
