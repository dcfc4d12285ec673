"""Qwen2 / Qwen2.5: llama-style names plus Q/K/V biases, NEOX RoPE (no permutation)."""

from __future__ import annotations

from .base import ROTARY_BUFFERS, Family


class Qwen2(Family):
    name = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}

    def hparams(self):
        return self.common_hparams()

    def has_tensor(self, kind):
        """Q/K/V always carry biases, the output projection never (whatever `attention_bias` says)."""
        if kind.startswith(("attn_q.", "attn_k.", "attn_v.")) and kind.endswith(".bias"):
            return True
        if kind == "attn_output.bias":
            return False
        return super().has_tensor(kind)


FAMILY = Qwen2
