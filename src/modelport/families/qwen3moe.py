"""Qwen3-MoE (transformers `Qwen3MoeForCausalLM`, llama.cpp arch `qwen3moe`): Qwen3's attention (per-head Q/K
norms, its own head size) with Qwen-style experts in every layer and no shared expert. llama.cpp's graph always
normalizes the top-k router weights (Qwen3-30B-A3B's `norm_topk_prob: true`); a config that does not is refused."""

from __future__ import annotations

from .base import QK_NORM_TENSORS, Experts
from .qwen2moe import MOE_TENSORS, QWEN_EXPERTS, check_every_layer_sparse
from .qwen3 import Qwen3


class Qwen3Moe(Experts, Qwen3):
    name = "qwen3moe"
    hf_architectures = ("Qwen3MoeForCausalLM",)
    model_types = ("qwen3_moe",)
    tensors = MOE_TENSORS + QK_NORM_TENSORS
    expert_tensors = QWEN_EXPERTS
    hf_defaults = {"hidden_act": "silu", "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    norm_topk_prob = True

    def hparams(self):
        check_every_layer_sparse(self)
        return {**super().hparams(), **self.expert_hparams(self.config.get("moe_intermediate_size"))}

    @classmethod
    def config_fields(cls, g, tensors):
        out = {**super().config_fields(g, tensors), **cls.expert_config(g, "num_experts")}
        if g.get("expert_feed_forward_length") is not None:
            out["moe_intermediate_size"] = g.get("expert_feed_forward_length")
        return out


FAMILY = Qwen3Moe
