"""Gemma 3 text models (Gemma3ForCausalLM: the 1B, and the language model of the larger ones)."""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .base import QK_NORM_TENSORS, f32, u32
from .gemma import Gemma
from .gemma2 import Gemma2


class Gemma3(Gemma2):
    """Gemma 2's norms plus a norm over each head of Q and K, no attention soft-capping. llama.cpp fixes two things
    the config could vary: every sixth layer is global (the others slide), and the sliding layers use RoPE base
    10,000; a config that differs is refused rather than converted into a model that computes something else."""

    name = "gemma3"
    hf_architectures = ("Gemma3ForCausalLM",)
    model_types = ("gemma3_text",)
    tensors = Gemma2.tensors + QK_NORM_TENSORS
    SWA_PATTERN = 6
    LOCAL_ROPE_BASE = 10000.0
    LAYERS_27B = 62

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or 256)               # Gemma3TextConfig's default

    @classmethod
    def _layer_types(cls, n_layer: int) -> list[str]:
        return ["full_attention" if (i + 1) % cls.SWA_PATTERN == 0 else "sliding_attention" for i in range(n_layer)]

    @classmethod
    def config_fields(cls, g, tensors):
        out = super().config_fields(g, tensors)
        out.pop("attn_logit_softcapping")
        out["head_dim"] = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        out["layer_types"] = cls._layer_types(out["num_hidden_layers"])
        out["rope_parameters"] = {"full_attention": out["rope_parameters"],
                                  "sliding_attention": {"rope_type": "default", "rope_theta": cls.LOCAL_ROPE_BASE}}
        return out

    def hparams(self):
        c = self.config
        k = self.key
        layer_types = c.get("layer_types")
        if layer_types and list(layer_types) != self._layer_types(self.n_layer):
            raise UnsupportedError("Gemma 3 with global layers other than every sixth has no llama.cpp equivalent")
        both = c.get("rope_parameters") or {}
        local = both.get("sliding_attention") if isinstance(both.get("sliding_attention"), dict) else {}
        local_base = local.get("rope_theta", c.get("rope_local_base_freq", self.LOCAL_ROPE_BASE))
        if float(local_base) != self.LOCAL_ROPE_BASE or local.get("rope_type", "default") != "default":
            raise UnsupportedError("Gemma 3 sliding layers need RoPE base 10000 without scaling, as llama.cpp assumes")
        expected = self._query_scalar(c["hidden_size"], self.n_head, self.n_layer, self.head_dim())
        if c.get("query_pre_attn_scalar", 256) != expected:
            raise UnsupportedError("Gemma 3 with query_pre_attn_scalar != head_dim has no llama.cpp equivalent")
        if c.get("attn_logit_softcapping"):
            raise UnsupportedError("Gemma 3 has no attention soft-capping in llama.cpp")
        out = Gemma.hparams(self)
        rp = self.rope_parameters()
        if rp.get("rope_type") == "linear" and rp.get("factor") is not None:
            out[k("rope.scaling.type")] = "linear"
            out[k("rope.scaling.factor")] = f32(rp["factor"])
        elif rp.get("rope_type") not in (None, "default"):
            raise UnsupportedError(f"Gemma 3 rope scaling {rp.get('rope_type')!r} is not supported")
        if c.get("final_logit_softcapping"):
            out[k("final_logit_softcapping")] = f32(c["final_logit_softcapping"])
        out[k("attention.sliding_window")] = u32(c.get("sliding_window") or c["max_position_embeddings"])
        return out


FAMILY = Gemma3
