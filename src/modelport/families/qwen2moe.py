"""Qwen2-MoE / Qwen1.5-MoE (transformers `Qwen2MoeForCausalLM`, llama.cpp arch `qwen2moe`).

Qwen2's attention (Q/K/V biases, NEOX RoPE) with a mixture of experts in every layer: the router (`mlp.gate`) as
`ffn_gate_inp`, the experts stacked into `ffn_{gate,up,down}_exps`, plus one shared expert (`ffn_*_shexp`) whose
output is scaled by a sigmoid gate (`shared_expert_gate`, a (1, hidden) matrix: `ffn_gate_inp_shexp`). llama.cpp's
graph keeps the top-k router weights unnormalized and makes every layer sparse, so other configs are refused.
"""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .base import DECODER_TENSORS, ROTARY_BUFFERS, Experts, u32
from .qwen2 import Qwen2

_DENSE_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
MOE_TENSORS = tuple(t for t in DECODER_TENSORS if not any(s in t[0] for s in _DENSE_MLP)) + (
    ("model.layers.{bid}.mlp.gate.weight", "blk.{bid}.ffn_gate_inp.weight"),
)
SHARED_EXPERT_TENSORS = (
    ("model.layers.{bid}.mlp.shared_expert_gate.weight", "blk.{bid}.ffn_gate_inp_shexp.weight"),
    ("model.layers.{bid}.mlp.shared_expert.gate_proj.weight", "blk.{bid}.ffn_gate_shexp.weight"),
    ("model.layers.{bid}.mlp.shared_expert.up_proj.weight", "blk.{bid}.ffn_up_shexp.weight"),
    ("model.layers.{bid}.mlp.shared_expert.down_proj.weight", "blk.{bid}.ffn_down_shexp.weight"),
)
#: Qwen-style experts (`mlp.experts.N.{gate,up,down}_proj`), which OLMoE shares.
QWEN_EXPERTS = (
    ("model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight", "blk.{bid}.ffn_gate_exps.weight"),
    ("model.layers.{bid}.mlp.experts.{xid}.up_proj.weight", "blk.{bid}.ffn_up_exps.weight"),
    ("model.layers.{bid}.mlp.experts.{xid}.down_proj.weight", "blk.{bid}.ffn_down_exps.weight"),
)


def check_every_layer_sparse(family: Experts) -> None:
    """llama.cpp's Qwen MoE graphs put experts in every layer; `mlp_only_layers` / `decoder_sparse_step` say otherwise."""
    c = family.config
    if c.get("mlp_only_layers") or int(c.get("decoder_sparse_step") or 1) != 1:
        raise UnsupportedError(f"{family.name}: dense layers among the sparse ones (mlp_only_layers / "
                               "decoder_sparse_step) have no llama.cpp equivalent")


class Qwen2Moe(Experts, Qwen2):
    name = "qwen2moe"
    hf_architectures = ("Qwen2MoeForCausalLM",)
    model_types = ("qwen2_moe",)
    tensors = MOE_TENSORS + SHARED_EXPERT_TENSORS
    expert_tensors = QWEN_EXPERTS
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu", "decoder_sparse_step": 1, "mlp_only_layers": []}
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    norm_topk_prob = False

    def tensor_shape(self, kind, dims):
        shared = int(self.config.get("shared_expert_intermediate_size") or dims.n_ff)
        shapes = {"ffn_gate_inp_shexp.weight": (1, dims.n_embd), "ffn_gate_shexp.weight": (shared, dims.n_embd),
                  "ffn_up_shexp.weight": (shared, dims.n_embd), "ffn_down_shexp.weight": (dims.n_embd, shared)}
        return shapes[kind] if kind in shapes else super().tensor_shape(kind, dims)

    def hparams(self):
        check_every_layer_sparse(self)
        c = self.config
        out = {**super().hparams(), **self.expert_hparams(c.get("moe_intermediate_size"))}
        if c.get("shared_expert_intermediate_size") is not None:
            out[self.key("expert_shared_feed_forward_length")] = u32(c["shared_expert_intermediate_size"])
        return out

    @classmethod
    def config_fields(cls, g, tensors):
        out = {**super().config_fields(g, tensors), **cls.expert_config(g, "num_experts"), "norm_topk_prob": False}
        for key, field in (("expert_feed_forward_length", "moe_intermediate_size"),
                           ("expert_shared_feed_forward_length", "shared_expert_intermediate_size")):
            if g.get(key) is not None:
                out[field] = g.get(key)
        return out


FAMILY = Qwen2Moe
