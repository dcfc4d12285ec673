"""Qwen3: Qwen2's layout without the Q/K/V biases, plus an RMS norm over each head of Q and K."""

from __future__ import annotations

from .base import DECODER_TENSORS, QK_NORM_TENSORS, ROTARY_BUFFERS, Family


class Qwen3(Family):
    """The head size is its own setting (`head_dim`, 128 by default in transformers), written as
    `attention.key_length`."""

    name = "qwen3"
    hf_architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    tensors = DECODER_TENSORS + QK_NORM_TENSORS
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}
    HEAD_DIM_DEFAULT = 128

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.HEAD_DIM_DEFAULT)

    def hparams(self):
        return self.common_hparams(head_dim_default=self.HEAD_DIM_DEFAULT)

    @classmethod
    def config_fields(cls, g, tensors):
        out = cls.common_config(g)
        out["attention_bias"] = "blk.0.attn_q.bias" in tensors
        out.setdefault("head_dim", out["hidden_size"] // out["num_attention_heads"])   # else transformers says 128
        return out


FAMILY = Qwen3
