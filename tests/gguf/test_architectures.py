"""Family registry: names both ways, the Q/K permutation and its inverse, metadata types."""

from __future__ import annotations

import numpy as np
import pytest

from modelport import families as A
from modelport.core.errors import UnsupportedError
from tests.factory import random_model

torch = pytest.importorskip("torch")  # dev dependency; the oracles below are transformers' own modules
transformers = pytest.importorskip("transformers")


def _tiny(arch: str, **kw):
    """An unseeded random model of `arch`, hidden 32 (in memory: the tests read its state dict and config)."""
    common = dict(vocab_size=96, num_hidden_layers=kw.pop("num_hidden_layers", 2))
    geometry = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    if arch == "gpt2":
        return random_model("gpt2", None, n_embd=32, n_layer=2, n_head=4, vocab_size=96, **kw)
    if arch == "phi3":
        return random_model("phi3", None, **geometry | dict(num_key_value_heads=4), pad_token_id=0, **common, **kw)
    if arch == "qwen3":
        return random_model("qwen3", None, **geometry, head_dim=16, **common, **kw)
    if arch in ("gemma", "gemma2", "gemma3"):
        if arch != "gemma":
            kw.setdefault("query_pre_attn_scalar", 8)
        return random_model(arch, None, **geometry, head_dim=8, pad_token_id=0, **common, **kw)
    if arch == "smollm3":
        return random_model(arch, None, **geometry, pad_token_id=0, **common, **kw)
    if arch == "olmo2":
        return random_model(arch, None, **geometry, pad_token_id=0, **common, **kw)
    return random_model(arch, None, **geometry, **common, **kw)


ARCHS = ["llama", "smollm3", "qwen2", "qwen3", "gpt2", "phi3", "gemma", "gemma2", "gemma3", "olmo2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_hf_tensor_maps_to_gguf_and_back(arch):
    model = _tiny(arch)
    config = model.config.to_dict()
    fam = A.for_config(config)
    names = list(model.state_dict())
    mapped = {n: fam.gguf_name(n) for n in names}
    assert all(g is None or len(g.encode()) <= 63 for g in mapped.values())
    kept = {n: g for n, g in mapped.items() if g is not None}
    assert len(set(kept.values())) == len(kept)
    assert "token_embd.weight" in kept.values() and "output_norm.weight" in kept.values()
    for hf, gg in kept.items():
        back = fam.hf_name(gg)
        assert back == hf or "transformer." + back == hf


def test_unknown_tensor_and_unknown_architecture_are_clear_errors():
    fam = A.for_config(_tiny("llama").config.to_dict())
    with pytest.raises(UnsupportedError, match="no GGUF name"):
        fam.gguf_name("model.layers.0.mlp.experts.0.weight")
    with pytest.raises(UnsupportedError) as exc:
        A.for_config({"architectures": ["MambaForCausalLM"], "model_type": "mamba"})
    msg = str(exc.value)
    for name in ("MambaForCausalLM", "Gemma2ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"):
        assert name in msg


def test_permutation_order_and_inverse():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    p = A.permute_qk(w, 1)
    assert (p[:, 0] // 3).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert np.array_equal(A.unpermute_qk(p, 1), w)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4 * 16, 10)).astype(np.float32)
    assert np.array_equal(A.unpermute_qk(A.permute_qk(w, 4), 4), w)
    b = rng.standard_normal(4 * 16).astype(np.float32)
    assert np.array_equal(A.unpermute_qk(A.permute_qk(b, 4), 4), b)


def test_permuted_weights_with_adjacent_pair_rope_give_hf_attention_scores():
    """q.k after HF rotate-half RoPE == q.k after llama.cpp's adjacent-pair RoPE on the permuted rows (GQA: K uses n_kv)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = _tiny("llama")
    fam = A.for_config(model.config.to_dict())
    d, n_head, n_kv = 8, 4, 2
    attn = model.model.layers[0].self_attn
    wq, wk = attn.q_proj.weight.detach().numpy(), attn.k_proj.weight.detach().numpy()
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    pos = np.arange(5)
    inv = 1.0 / (10000.0 ** (np.arange(0, d, 2) / d))
    ang = pos[:, None] * inv[None, :]                                  # (T, d/2)
    cos = torch.tensor(np.concatenate([np.cos(ang)] * 2, -1), dtype=torch.float32)[None]
    sin = torch.tensor(np.concatenate([np.sin(ang)] * 2, -1), dtype=torch.float32)[None]
    q = torch.tensor(x @ wq.T).view(1, 5, n_head, d).transpose(1, 2)
    k = torch.tensor(x @ wk.T).view(1, 5, n_kv, d).transpose(1, 2)
    qr, kr = apply_rotary_pos_emb(q, k, cos, sin)
    ref = torch.einsum("bhtd,bhsd->bhts", qr, kr.repeat_interleave(n_head // n_kv, 1)).numpy()

    def rope_pairs(v):  # llama.cpp LLAMA_ROPE_TYPE_NORM: rotate (2i, 2i+1)
        out = v.copy()
        c, s = np.cos(ang)[None, :, :], np.sin(ang)[None, :, :]
        out[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
        out[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
        return out

    gq = fam.to_gguf("blk.0.attn_q.weight", wq)
    gk = fam.to_gguf("blk.0.attn_k.weight", wk)
    q2 = rope_pairs((x @ gq.T).reshape(5, n_head, d).transpose(1, 0, 2))
    k2 = rope_pairs((x @ gk.T).reshape(5, n_kv, d).transpose(1, 0, 2))
    got = np.einsum("htd,hsd->hts", q2, np.repeat(k2, n_head // n_kv, 0))
    np.testing.assert_allclose(got, ref[0], rtol=1e-4, atol=1e-5)
    assert np.array_equal(fam.to_hf("blk.0.attn_k.weight", gk), wk)


@pytest.mark.parametrize("arch", ARCHS)
def test_hparams_have_llama_cpp_types(arch):
    fam = A.for_config(_tiny(arch).config.to_dict())
    meta = fam.hparams()
    assert meta[f"{fam.name}.block_count"] == 2
    for key, value in meta.items():
        assert key.startswith(fam.name + ".")
        assert isinstance(value, (np.uint32, np.float32, str)), (key, type(value))
    assert isinstance(meta[f"{fam.name}.embedding_length"], np.uint32)
    eps = [k for k in meta if "epsilon" in k]
    assert eps and all(isinstance(meta[k], np.float32) for k in eps)


def test_rope_theta_from_transformers5_and_from_old_configs():
    new = _tiny("llama", rope_theta=500000.0).config.to_dict()
    assert "rope_theta" in (new.get("rope_parameters") or {}) or "rope_theta" in new
    assert A.for_config(new).hparams()["llama.rope.freq_base"] == np.float32(500000.0)
    old = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
           "intermediate_size": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 64}
    meta = A.for_config(old).hparams()
    assert meta["llama.rope.freq_base"] == np.float32(1e6)
    assert meta["llama.rope.dimension_count"] == 16 and meta["llama.attention.head_count_kv"] == 4


def test_llama3_rope_factors_match_transformers_inv_freq():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = transformers.LlamaConfig(hidden_size=512, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                                   max_position_embeddings=131072, rope_parameters=rope)
    fam = A.for_config(cfg.to_dict())
    factors = fam.extra_tensors()["rope_freqs.weight"]
    inv_scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    d = 128
    base = 1.0 / (500000.0 ** (np.arange(0, d, 2, dtype=np.float32) / d))
    np.testing.assert_allclose(base / factors, inv_scaled.numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0


def test_gemma_norms_shift_by_one_and_gemma2_attention_scale_is_checked():
    fam = A.for_config(_tiny("gemma").config.to_dict())
    w = np.array([0.5, -0.25], np.float32)
    assert np.array_equal(fam.to_gguf("blk.0.attn_norm.weight", w), w + 1)
    assert np.array_equal(fam.to_hf("output_norm.weight", w + 1), w)
    assert fam.gguf_name("lm_head.weight") is None          # always tied; llama.cpp reuses token_embd
    with pytest.raises(UnsupportedError, match="query_pre_attn_scalar"):
        A.for_config(_tiny("gemma2", query_pre_attn_scalar=256).config.to_dict()).hparams()


def test_smollm3_nope_pattern_other_than_every_fourth_is_refused():
    config = _tiny("smollm3", num_hidden_layers=8).config.to_dict()
    assert config["no_rope_layers"] == [1, 1, 1, 0, 1, 1, 1, 0] and A.for_config(config).name == "smollm3"
    A.for_config(config).hparams()
    with pytest.raises(UnsupportedError, match="every fourth"):
        A.for_config(dict(config, no_rope_layers=[1] * 8)).hparams()


def test_gemma3_configs_llama_cpp_cannot_run_are_refused():
    """llama.cpp hard-codes Gemma 3's layer pattern (every sixth global) and local RoPE base (10,000)."""
    config = _tiny("gemma3", num_hidden_layers=6).config.to_dict()
    assert A.for_config(config).hparams()["gemma3.attention.sliding_window"] == config["sliding_window"]
    other_pattern = dict(config, layer_types=["full_attention"] * 6)
    with pytest.raises(UnsupportedError, match="every sixth"):
        A.for_config(other_pattern).hparams()
    rope = {**config["rope_parameters"], "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}
    with pytest.raises(UnsupportedError, match="10000"):
        A.for_config(dict(config, rope_parameters=rope)).hparams()
    with pytest.raises(UnsupportedError, match="query_pre_attn_scalar"):
        A.for_config(dict(config, query_pre_attn_scalar=99)).hparams()


def test_olmo2_has_post_norms_full_projection_qk_norms_and_refuses_what_llama_cpp_cannot_load():
    model = _tiny("olmo2")
    fam = A.for_config(model.config.to_dict())
    assert fam.name == "olmo2"
    mapped = {fam.gguf_name(n) for n in model.state_dict()} - {None}
    assert "blk.0.post_attention_norm.weight" in mapped and "blk.0.post_ffw_norm.weight" in mapped
    assert not any(n.endswith(("attn_norm.weight", "ffn_norm.weight")) for n in mapped)
    shapes = fam.tensor_shapes()
    assert shapes["blk.1.attn_q_norm.weight"] == (32,) and shapes["blk.1.attn_k_norm.weight"] == (16,)
    state = model.state_dict()
    assert {n: tuple(t.shape) for n, t in state.items()} == {fam.hf_name(g): s for g, s in shapes.items()}
    w = np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    assert np.array_equal(fam.to_gguf("blk.0.attn_q.weight", w), w)     # NEOX RoPE: no permutation
    for bad in (dict(tie_word_embeddings=True), dict(attention_bias=True)):
        with pytest.raises(UnsupportedError, match="OLMo 2"):
            A.for_config(_tiny("olmo2", **bad).config.to_dict()).hparams()
