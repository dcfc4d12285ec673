"""Mixtral (transformers `MixtralForCausalLM`): llama with a mixture of experts, written as llama.cpp's arch `llama`.

Each layer's router (`block_sparse_moe.gate`) becomes `ffn_gate_inp`, and the experts' w1 / w3 / w2 (gate, up,
down) are stacked into `ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps` of shape (n_expert, rows, cols), as
llama.cpp's converter does. llama.cpp's llama graph normalizes the top-k router weights, as Mixtral does.
A GGUF of arch `llama` with `llama.expert_count` comes back as Mixtral.
"""

from __future__ import annotations

from .base import DECODER_TENSORS, Experts
from .llama import Llama

_DENSE_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class Mixtral(Experts, Llama):
    hf_architectures = ("MixtralForCausalLM",)
    model_types = ("mixtral",)
    tensors = tuple(t for t in DECODER_TENSORS if not any(s in t[0] for s in _DENSE_MLP)) + (
        ("model.layers.{bid}.block_sparse_moe.gate.weight", "blk.{bid}.ffn_gate_inp.weight"),
    )
    expert_tensors = (
        ("model.layers.{bid}.block_sparse_moe.experts.{xid}.w1.weight", "blk.{bid}.ffn_gate_exps.weight"),
        ("model.layers.{bid}.block_sparse_moe.experts.{xid}.w3.weight", "blk.{bid}.ffn_up_exps.weight"),
        ("model.layers.{bid}.block_sparse_moe.experts.{xid}.w2.weight", "blk.{bid}.ffn_down_exps.weight"),
    )
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")     # the experts' w1/w2/w3 are not Linear names peft
    hf_defaults = {"hidden_act": "silu"}
    norm_topk_prob = True

    def hparams(self):
        return {**super().hparams(), **self.expert_hparams()}

    @classmethod
    def config_fields(cls, g, tensors):
        out = super().config_fields(g, tensors)
        out.pop("attention_bias", None)
        return {**out, **cls.expert_config(g)}


FAMILY = Mixtral
