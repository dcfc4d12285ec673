"""Gemma 2: Gemma plus post-attention / post-FFN norms, logit soft-capping and sliding-window layers."""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .base import f32, u32
from .gemma import GEMMA_TENSORS, Gemma


class Gemma2(Gemma):
    name = "gemma2"
    hf_architectures = ("Gemma2ForCausalLM",)
    model_types = ("gemma2",)
    tensors = GEMMA_TENSORS + (
        ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight"),
        ("model.layers.{bid}.pre_feedforward_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
        ("model.layers.{bid}.post_feedforward_layernorm.weight", "blk.{bid}.post_ffw_norm.weight"),
    )

    LAYERS_27B = 46     # the 27B model, whose queries llama.cpp scales by 1/sqrt(hidden/heads)

    @classmethod
    def _query_scalar(cls, hidden: int, heads: int, n_layer: int, head_dim: int) -> int:
        """The query_pre_attn_scalar llama.cpp assumes: head_dim, or hidden/heads for the 27B model."""
        return hidden // heads if n_layer == cls.LAYERS_27B else head_dim

    @classmethod
    def config_fields(cls, g, tensors):
        out = cls.common_config(g)
        head_dim = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        out["query_pre_attn_scalar"] = cls._query_scalar(out["hidden_size"], out["num_attention_heads"],
                                                         out["num_hidden_layers"], head_dim)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            out[key] = g.get(key) or None
        out["sliding_window"] = g.get("attention.sliding_window")
        return out

    def hparams(self):
        c = self.config
        k = self.key
        out = super().hparams()
        expected = self._query_scalar(c["hidden_size"], self.n_head, self.n_layer, self.head_dim())
        if c.get("query_pre_attn_scalar") not in (None, expected):
            raise UnsupportedError("Gemma 2 with query_pre_attn_scalar != head_dim has no llama.cpp equivalent")
        out[k("attn_logit_softcapping")] = f32(c.get("attn_logit_softcapping") or 0.0)
        out[k("final_logit_softcapping")] = f32(c.get("final_logit_softcapping") or 0.0)
        out[k("attention.sliding_window")] = u32(c.get("sliding_window") or c["max_position_embeddings"])
        return out


FAMILY = Gemma2
