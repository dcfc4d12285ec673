"""Llama 1/2/3, Mistral, SmolLM, TinyLlama (Mixtral, llama with experts, is `mixtral.py`)."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import UnsupportedError
from .base import ROTARY_BUFFERS, Family, Transform, u32


class Llama(Family):
    """Normal (adjacent-pair) RoPE in llama.cpp, rotate-half in transformers: Q and K rows are permuted per head."""

    name = "llama"
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    model_types = ("llama", "mistral")
    transforms = {"attn_q.weight": Transform.PERMUTE_Q, "attn_k.weight": Transform.PERMUTE_K,
                  "attn_q.bias": Transform.PERMUTE_Q, "attn_k.bias": Transform.PERMUTE_K}
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu", "mlp_bias": False}

    @classmethod
    def config_fields(cls, g, tensors):
        out = cls.common_config(g)
        out["attention_bias"] = "blk.0.attn_q.bias" in tensors
        if g.get("vocab_size") is not None:
            out["vocab_size"] = g.get("vocab_size")
        head_dim = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        if g.get("rope.dimension_count", head_dim) != head_dim:
            raise UnsupportedError("llama with partial rotary embeddings has no config.json equivalent")
        if "rope_freqs.weight" in tensors:
            out["rope_parameters"] = cls._llama3_rope(out, np.asarray(tensors["rope_freqs.weight"].read(), np.float32))
        return out

    # the (factor, low, high, original context) sets Llama 3.x checkpoints use, tried in turn
    _LLAMA3_CANDIDATES = tuple((lo, hi, ctx) for ctx in (8192, 4096, 16384, 32768, 2048, 131072)
                               for lo in (1.0, 2.0, 0.5) for hi in (4.0, 2.0, 8.0, 1.0))

    @classmethod
    def _llama3_rope(cls, cfg: dict, factors: np.ndarray) -> dict:
        """Recover Llama 3.1 rope scaling from the per-frequency factors, by recomputing them forward."""
        factor = float(str(np.float32(factors.max())))
        for lo, hi, ctx in cls._LLAMA3_CANDIDATES:
            rp = {**cfg["rope_parameters"], "rope_type": "llama3", "factor": factor, "low_freq_factor": lo,
                  "high_freq_factor": hi, "original_max_position_embeddings": ctx}
            got = cls({**cfg, "rope_parameters": rp}).extra_tensors()["rope_freqs.weight"]
            if got.shape == factors.shape and np.allclose(got, factors, rtol=1e-5, atol=1e-6):
                return rp
        raise UnsupportedError("rope_freqs.weight matches no Llama 3 rope scaling that config.json can express")

    def hparams(self):
        out = self.common_hparams()
        if self.config.get("vocab_size") is not None:
            out[self.key("vocab_size")] = u32(self.config["vocab_size"])
        out[self.key("rope.dimension_count")] = u32(self.head_dim())
        return out

    def extra_tensors(self):
        rp = self.rope_parameters()
        if str(rp.get("rope_type", "")).lower() != "llama3":
            return {}
        # Llama 3.1 scaling as per-frequency factors (`rope_freqs.weight`), computed as the reference converter does.
        base = float(rp.get("rope_theta", 10000.0))
        dim = self.head_dim()
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = rp.get("factor", 8.0)
        low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        old = rp.get("original_max_position_embeddings", 8192)
        low_wl, high_wl = old / low, old / high
        out = []
        for f in freqs.astype(np.float64):
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(1.0)
            elif wl > low_wl:
                out.append(factor)
            else:
                smooth = (old / wl - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return {"rope_freqs.weight": np.asarray(out, np.float32)}


FAMILY = Llama
