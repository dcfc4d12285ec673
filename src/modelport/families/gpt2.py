"""GPT-2: fused QKV, learned positions, LayerNorm with bias; Conv1D weights are stored transposed."""

from __future__ import annotations

from .base import Family, Transform, f32, first, u32


class GPT2(Family):
    name = "gpt2"
    hf_architectures = ("GPT2LMHeadModel", "GPT2Model")
    model_types = ("gpt2",)
    strip_prefixes = ("transformer.",)
    tensors = (
        ("wte.weight", "token_embd.weight"),
        ("wpe.weight", "position_embd.weight"),
        ("ln_f.weight", "output_norm.weight"),
        ("ln_f.bias", "output_norm.bias"),
        ("lm_head.weight", "output.weight"),
        ("h.{bid}.ln_1.weight", "blk.{bid}.attn_norm.weight"),
        ("h.{bid}.ln_1.bias", "blk.{bid}.attn_norm.bias"),
        ("h.{bid}.attn.c_attn.weight", "blk.{bid}.attn_qkv.weight"),
        ("h.{bid}.attn.c_attn.bias", "blk.{bid}.attn_qkv.bias"),
        ("h.{bid}.attn.c_proj.weight", "blk.{bid}.attn_output.weight"),
        ("h.{bid}.attn.c_proj.bias", "blk.{bid}.attn_output.bias"),
        ("h.{bid}.ln_2.weight", "blk.{bid}.ffn_norm.weight"),
        ("h.{bid}.ln_2.bias", "blk.{bid}.ffn_norm.bias"),
        ("h.{bid}.mlp.c_fc.weight", "blk.{bid}.ffn_up.weight"),
        ("h.{bid}.mlp.c_fc.bias", "blk.{bid}.ffn_up.bias"),
        ("h.{bid}.mlp.c_proj.weight", "blk.{bid}.ffn_down.weight"),
        ("h.{bid}.mlp.c_proj.bias", "blk.{bid}.ffn_down.bias"),
    )
    transforms = {"attn_qkv.weight": Transform.TRANSPOSE, "attn_output.weight": Transform.TRANSPOSE,
                  "ffn_up.weight": Transform.TRANSPOSE, "ffn_down.weight": Transform.TRANSPOSE}
    ignore = (r"h\.\d+\.attn\.(masked_)?bias",)
    hf_defaults = {"activation_function": "gelu_new"}
    tied_by_default = True
    lora_targets = ("c_attn", "c_proj", "c_fc")

    @classmethod
    def config_fields(cls, g, tensors):
        n_embd = g.need("embedding_length")
        ff = g.get("feed_forward_length", 4 * n_embd)
        return {"n_embd": n_embd, "n_layer": g.need("block_count"), "n_head": g.need("attention.head_count"),
                "n_positions": g.need("context_length"), "n_inner": None if ff == 4 * n_embd else ff,
                "layer_norm_epsilon": g.get("attention.layer_norm_epsilon", 1e-5)}

    def __init__(self, config):
        super().__init__(config)
        self.n_head_kv = self.n_head

    def hf_name(self, gguf_name: str) -> str:
        name = super().hf_name(gguf_name)   # GPT2LMHeadModel keeps the body under "transformer."
        return name if name == "lm_head.weight" else self.strip_prefixes[0] + name

    def has_tensor(self, kind):
        """Every LayerNorm and linear layer has a bias."""
        return kind != "output.weight" or not self.dims().tied

    def hparams(self):
        c = self.config
        n_embd = int(first(c, "n_embd", "hidden_size"))
        k = self.key
        return {
            k("block_count"): u32(self.n_layer),
            k("context_length"): u32(first(c, "n_ctx", "n_positions", "max_position_embeddings")),
            k("embedding_length"): u32(n_embd),
            k("feed_forward_length"): u32(c.get("n_inner") or 4 * n_embd),
            k("attention.head_count"): u32(self.n_head),
            k("attention.layer_norm_epsilon"): f32(first(c, "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
        }


FAMILY = GPT2
