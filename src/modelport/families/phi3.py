"""Phi-3 / Phi-3.5 / Phi-4 mini: fused QKV and gate_up, NEOX RoPE, optional long-rope scaling."""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import FormatError, UnsupportedError
from .base import ROTARY_BUFFERS, Family, f32, first, u32


class Phi3(Family):
    """Long-context checkpoints (128k, rope type `longrope`, formerly `su`; `yarn`) keep per-frequency
    `long_factor`/`short_factor` lists: llama.cpp stores them as the F32 tensors `rope_factors_long/short`
    and the attention scale as `rope.scaling.attn_factor`; the way back folds them into rope_parameters."""

    name = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)
    tensors = (
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
        ("model.layers.{bid}.self_attn.qkv_proj.weight", "blk.{bid}.attn_qkv.weight"),
        ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
        ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
        ("model.layers.{bid}.mlp.gate_up_proj.weight", "blk.{bid}.ffn_up.weight"),
        ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
    )
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}
    lora_targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

    def tensor_shape(self, kind, dims):
        if kind == "ffn_up.weight":              # gate and up in one matrix
            return (2 * dims.n_ff, dims.n_embd)
        return super().tensor_shape(kind, dims)

    @classmethod
    def config_fields(cls, g, tensors):
        out = cls.common_config(g)
        out["original_max_position_embeddings"] = g.get("rope.scaling.original_context_length",
                                                        out.get("max_position_embeddings"))
        head_dim = out["hidden_size"] // out["num_attention_heads"]
        rot = g.get("rope.dimension_count", head_dim) / head_dim
        if rot != 1.0:
            out["partial_rotary_factor"] = out["rope_parameters"]["partial_rotary_factor"] = rot
        out["sliding_window"] = g.get("attention.sliding_window") or None
        if "rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors:
            if not ("rope_factors_long.weight" in tensors and "rope_factors_short.weight" in tensors):
                raise FormatError("the GGUF has only one of rope_factors_long/rope_factors_short")
            rp = out["rope_parameters"]
            rp.update(rope_type="longrope", original_max_position_embeddings=out["original_max_position_embeddings"])
            for kind in ("long", "short"):
                values = np.asarray(tensors[f"rope_factors_{kind}.weight"].read(), np.float32).reshape(-1)
                rp[f"{kind}_factor"] = [float(str(v)) for v in values]   # shortest text that is the same float32
            stored = g.get("rope.scaling.attn_factor")
            if stored is not None and np.float32(stored) != np.float32(cls._attn_factor(out, rp)):
                rp["attention_factor"] = stored
        return out

    @staticmethod
    def _attn_factor(config: dict, rp: dict) -> float:
        """The cos/sin scale of long-rope models, as transformers computes it (and llama.cpp's converter,
        which takes the same context ratio; the original Phi-3 `yarn` variant used 0.1 ln(s) + 1)."""
        if rp.get("attention_factor") is not None:
            return float(rp["attention_factor"])
        orig = rp.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        scale = rp.get("factor") or config["max_position_embeddings"] / orig
        if scale <= 1.0:
            return 1.0
        if str(rp.get("rope_type", "")).lower() == "yarn":
            return 0.1 * math.log(scale) + 1.0
        return math.sqrt(1 + math.log(scale) / math.log(orig))

    def _rope_dims(self) -> int:
        rp = self.rope_parameters()
        rot = rp.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 1.0))
        return int(rot * int(self.config["hidden_size"])) // self.n_head

    def _long_rope(self) -> dict | None:
        """rope_parameters of a long-rope checkpoint, checked; None for a plain one."""
        rp = self.rope_parameters()
        if not rp.get("long_factor") and not rp.get("short_factor"):
            return None
        kind = str(rp.get("rope_type", "")).lower()
        if kind not in ("longrope", "su", "yarn"):
            raise UnsupportedError(f"Phi-3 rope scaling {kind!r} is not supported (longrope, su and yarn are)")
        half = self._rope_dims() // 2
        for key in ("long_factor", "short_factor"):
            if not isinstance(rp.get(key), list) or len(rp[key]) != half:
                raise UnsupportedError(f"rope_parameters.{key} must list {half} numbers (half the rotary dims)")
        return rp

    def extra_tensors(self):
        rp = self._long_rope()
        if rp is None:
            return {}
        return {f"rope_factors_{kind}.weight": np.asarray(rp[f"{kind}_factor"], np.float32) for kind in ("long", "short")}

    def hparams(self):
        c = self.config
        k = self.key
        rp = self.rope_parameters()
        long_rope = self._long_rope()
        n_embd = int(c["hidden_size"])
        orig = first(rp, "original_max_position_embeddings") or c.get("original_max_position_embeddings") \
            or c.get("max_position_embeddings")
        return {
            k("context_length"): u32(c["max_position_embeddings"]),
            k("rope.scaling.original_context_length"): u32(orig),
            k("embedding_length"): u32(n_embd),
            k("feed_forward_length"): u32(c["intermediate_size"]),
            k("block_count"): u32(self.n_layer),
            k("attention.head_count"): u32(self.n_head),
            k("attention.head_count_kv"): u32(self.n_head_kv),
            k("attention.layer_norm_rms_epsilon"): f32(c["rms_norm_eps"]),
            k("rope.dimension_count"): u32(self._rope_dims()),
            k("rope.freq_base"): f32(rp.get("rope_theta", 10000.0)),
            k("attention.sliding_window"): u32(c.get("sliding_window") or 0),
            **({k("rope.scaling.attn_factor"): f32(self._attn_factor(c, long_rope))} if long_rope else {}),
        }


FAMILY = Phi3
