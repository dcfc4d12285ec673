"""Gemma (1): llama-style layers, NEOX RoPE, (1 + w) RMSNorm, embeddings always tied."""

from __future__ import annotations

from .base import ROTARY_BUFFERS, Family, Transform, f32, u32

#: What Gemma 1, 2 and 3 share: the attention and MLP matrices and the input norm.
GEMMA_TENSORS = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
    ("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight"),
    ("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight"),
    ("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
    ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
    ("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight"),
    ("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight"),
    ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
)


class Gemma(Family):
    """lm_head, if saved, is dropped: llama.cpp reuses token_embd."""

    name = "gemma"
    hf_architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)
    tensors = GEMMA_TENSORS + (("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),)
    transforms = {"norm.weight": Transform.NORM_PLUS_ONE}
    ignore = ROTARY_BUFFERS + (r"lm_head\.weight",)
    hf_defaults = {"hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True}
    tied_by_default = True

    def hparams(self):
        c = self.config
        k = self.key
        head_dim = self.head_dim()
        out = {
            k("context_length"): u32(c["max_position_embeddings"]),
            k("embedding_length"): u32(c["hidden_size"]),
            k("block_count"): u32(self.n_layer),
            k("feed_forward_length"): u32(c["intermediate_size"]),
            k("attention.head_count"): u32(self.n_head),
            k("attention.head_count_kv"): u32(self.n_head_kv),
            k("attention.layer_norm_rms_epsilon"): f32(c["rms_norm_eps"]),
            k("attention.key_length"): u32(head_dim),
            k("attention.value_length"): u32(head_dim),
        }
        theta = self.rope_parameters().get("rope_theta")
        if theta is not None:
            out[k("rope.freq_base")] = f32(theta)
        return out


FAMILY = Gemma
