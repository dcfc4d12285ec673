"""SmolLM3: Llama with RoPE left out of every fourth layer (NoPE), as llama.cpp's smollm3 arch."""

from __future__ import annotations

from ..core.errors import UnsupportedError
from .llama import Llama


class SmolLM3(Llama):
    """llama.cpp fixes the RoPE-free step at 4, so a config with another pattern is refused."""

    name = "smollm3"
    hf_architectures = ("SmolLM3ForCausalLM",)
    model_types = ("smollm3",)
    layout_model_types = ()
    NO_ROPE_STEP = 4

    @classmethod
    def _rope_layers(cls, n_layer: int) -> list[int]:
        """transformers' `no_rope_layers`: 1 where the layer uses RoPE."""
        return [int((i + 1) % cls.NO_ROPE_STEP != 0) for i in range(n_layer)]

    @classmethod
    def config_fields(cls, g, tensors):
        out = super().config_fields(g, tensors)
        out["no_rope_layers"] = cls._rope_layers(out["num_hidden_layers"])
        out["no_rope_layer_interval"] = cls.NO_ROPE_STEP
        return out

    def hparams(self):
        layers = self.config.get("no_rope_layers")
        if layers is not None and list(layers) != self._rope_layers(self.n_layer):
            raise UnsupportedError("SmolLM3 with RoPE-free layers other than every fourth has no llama.cpp equivalent")
        if self.config.get("use_sliding_window"):
            raise UnsupportedError("SmolLM3 with sliding-window attention has no llama.cpp equivalent")
        return super().hparams()


FAMILY = SmolLM3
