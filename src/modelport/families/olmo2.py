"""OLMo 2 (transformers `Olmo2ForCausalLM`, llama.cpp arch `olmo2`).

Llama's projections with the norms moved: no pre-norms, an RMS norm after attention and after the MLP (each
before its residual add), and Q/K RMS norms over the whole projection (not per head), no biases, NEOX RoPE (so no
Q/K permutation). llama.cpp's loader wants a separate output matrix, head size hidden/heads and no biases; a config
that differs is refused rather than converted into a model llama.cpp cannot load or runs differently.
"""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .base import DECODER_TENSORS, QK_NORM_TENSORS, ROTARY_BUFFERS, ProjectionQKNorm

_PRE_NORMS_AND_BIASES = ("input_layernorm", "post_attention_layernorm", ".bias")


class Olmo2(ProjectionQKNorm):
    name = "olmo2"
    hf_architectures = ("Olmo2ForCausalLM",)
    model_types = ("olmo2",)
    tensors = tuple(t for t in DECODER_TENSORS if not any(s in t[0] for s in _PRE_NORMS_AND_BIASES)) \
        + QK_NORM_TENSORS + (
            ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight"),
            ("model.layers.{bid}.post_feedforward_layernorm.weight", "blk.{bid}.post_ffw_norm.weight"),
        )
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu", "attention_bias": False}

    def hparams(self):
        c = self.config
        if c.get("attention_bias"):
            raise UnsupportedError("OLMo 2 with attention biases has no llama.cpp equivalent")
        if c.get("tie_word_embeddings"):
            raise UnsupportedError("OLMo 2 with tied embeddings has no llama.cpp equivalent (it needs output.weight)")
        if c.get("head_dim") not in (None, int(c["hidden_size"]) // self.n_head):
            raise UnsupportedError("OLMo 2 with head_dim != hidden_size / num_attention_heads has no llama.cpp "
                                   "equivalent")
        return self.common_hparams()


FAMILY = Olmo2
