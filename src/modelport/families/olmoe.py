"""OLMoE (transformers `OlmoeForCausalLM`, llama.cpp arch `olmoe`).

Llama's pre-norm decoder with NEOX RoPE (no Q/K permutation), Q/K RMS norms over the whole projection (as OLMo 2)
and Qwen-style experts (`mlp.experts.N.*`, router `mlp.gate`) in every layer, top-k weights unnormalized.
llama.cpp's loader wants a separate output matrix, as many K/V heads as query heads and no Q/K/V clipping; configs that differ are refused.
"""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .base import QK_NORM_TENSORS, ROTARY_BUFFERS, Experts, ProjectionQKNorm
from .qwen2moe import MOE_TENSORS, QWEN_EXPERTS


class Olmoe(Experts, ProjectionQKNorm):
    name = "olmoe"
    hf_architectures = ("OlmoeForCausalLM",)
    model_types = ("olmoe",)
    tensors = tuple(t for t in MOE_TENSORS if not t[0].endswith(".bias")) + QK_NORM_TENSORS
    expert_tensors = QWEN_EXPERTS
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu", "attention_bias": False, "norm_topk_prob": False}
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    norm_topk_prob = False

    def hparams(self):
        c = self.config
        if c.get("tie_word_embeddings"):
            raise UnsupportedError("OLMoE with tied embeddings has no llama.cpp equivalent (it needs output.weight)")
        if c.get("clip_qkv") is not None:
            raise UnsupportedError("OLMoE with clip_qkv has no llama.cpp equivalent")
        if self.n_head_kv != self.n_head:
            raise UnsupportedError("OLMoE with grouped-query attention has no llama.cpp equivalent (its K norm spans "
                                   "hidden_size)")
        if c.get("attention_bias"):
            raise UnsupportedError("OLMoE with attention biases has no llama.cpp equivalent")
        return {**self.common_hparams(), **self.expert_hparams()}

    @classmethod
    def config_fields(cls, g, tensors):
        return {**cls.common_config(g), **cls.expert_config(g, "num_experts")}


FAMILY = Olmoe
