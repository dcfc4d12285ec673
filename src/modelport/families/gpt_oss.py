"""gpt-oss (transformers `GptOssForCausalLM`, llama.cpp arch `gpt-oss`).

What differs from a Llama-style decoder, as llama.cpp's converter writes it:
  * the experts come stacked already: `mlp.experts.gate_up_proj` (experts, hidden, 2 x ff) with gate and up
    interleaved column by column, is split into `ffn_gate_exps` / `ffn_up_exps` (experts, ff, hidden), its bias
    likewise; `down_proj` (experts, ff, hidden) is transposed into `ffn_down_exps`; the way back interleaves and
    transposes again, bit for bit;
  * the router has a bias (`ffn_gate_inp.bias`), attention has biases and one learned sink logit per head
    (`attn_sinks.weight`), and the norm after attention is `post_attention_norm` (there is no FFN norm);
  * sliding-window attention on even layers, full on odd ones (llama.cpp's fixed pattern), YaRN RoPE, NEOX order;
  * the SwiGLU clamp (alpha 1.702, limit 7) is hard-coded in llama.cpp, so other `swiglu_limit`s are refused;
  * released checkpoints store the experts in MXFP4 (`*_proj_blocks`: 16 bytes of 4-bit codes per 32 values,
    `*_proj_scales`: one E8M0 exponent byte per block, rows already (out, in)): they are kept as they are, only
    repacked into ggml's block (the scale byte first, code j with code j + 16 in byte j instead of codes 2j and
    2j + 1) and split into gate and up by alternate rows; the way back unpacks them into the same two tensors,
    byte for byte, and config.json gets the `quantization_config` transformers reads them with.
"""

from __future__ import annotations

import re

import numpy as np

from ..core.dtypes import DTYPES
from ..core.errors import FormatError, UnsupportedError
from ..core.tensor import TensorRef
from .base import ROTARY_BUFFERS, Experts, f32, u32

MXFP4 = DTYPES["MXFP4"]
#: config.json's quantization_config of a checkpoint whose experts are MXFP4 (what gpt-oss releases carry).
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}

_GATE_UP = re.compile(r"blk\.(?P<bid>\d+)\.ffn_gate_up_exps\.(?P<kind>weight|bias)")
_GATE_OR_UP = re.compile(r"blk\.(?P<bid>\d+)\.ffn_(?P<which>gate|up)_exps\.(?P<kind>weight|bias)")
_HF_GATE_UP = re.compile(r"model\.layers\.(?P<bid>\d+)\.mlp\.experts\.gate_up_proj(?P<bias>_bias)?")
_DOWN = re.compile(r"blk\.\d+\.ffn_down_exps\.weight")
_HF_DOWN = re.compile(r"model\.layers\.\d+\.mlp\.experts\.down_proj")
_HF_PROJ = re.compile(r"model\.layers\.\d+\.mlp\.experts\.(gate_up|down)_proj")


# --- MXFP4: the checkpoint's layout <-> ggml's block_mxfp4 --------------------------------------------

def ggml_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(..., n_blocks, 16) code bytes + (..., n_blocks) exponents -> (..., n_blocks * 17) ggml blocks."""
    lo, hi = blocks & 0x0F, blocks >> 4
    codes = np.stack([lo, hi], axis=-1).reshape(*blocks.shape[:-1], 32)       # value order: byte j holds 2j, 2j+1
    packed = codes[..., :16] | (codes[..., 16:] << 4)                           # ggml: byte j holds j, j + 16
    return np.concatenate([scales[..., None], packed], axis=-1).reshape(*scales.shape[:-1], -1)


def checkpoint_mxfp4(raw: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `ggml_mxfp4`: ggml blocks -> (code bytes, exponents)."""
    raw = raw.reshape(*raw.shape[:-1], n_blocks, 17)
    scales, packed = raw[..., 0], raw[..., 1:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)                # values 0..31 in order
    return np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4)), np.ascontiguousarray(scales)


def mxfp4_ref(name: str, shape: tuple[int, ...], raw, like: TensorRef) -> TensorRef:
    """A lazy MXFP4 tensor from a loader of its ggml blocks (values dequantized by gguf-py on `read`)."""
    def values() -> np.ndarray:
        from gguf.quants import dequantize

        from gguf import GGMLQuantizationType

        return dequantize(raw(), GGMLQuantizationType.MXFP4).reshape(shape)
    return TensorRef(name, MXFP4, shape, values, file=like.file, raw_loader=raw)


def _swap_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


class GptOss(Experts):
    name = "gpt-oss"
    hf_architectures = ("GptOssForCausalLM",)
    model_types = ("gpt_oss",)
    tensors = (
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
        ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight"),
        ("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight"),
        ("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight"),
        ("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
        ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
        ("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias"),
        ("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias"),
        ("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias"),
        ("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias"),
        ("model.layers.{bid}.self_attn.sinks", "blk.{bid}.attn_sinks.weight"),
        ("model.layers.{bid}.mlp.router.weight", "blk.{bid}.ffn_gate_inp.weight"),
        ("model.layers.{bid}.mlp.router.bias", "blk.{bid}.ffn_gate_inp.bias"),
        ("model.layers.{bid}.mlp.experts.gate_up_proj", "blk.{bid}.ffn_gate_up_exps.weight"),
        ("model.layers.{bid}.mlp.experts.gate_up_proj_bias", "blk.{bid}.ffn_gate_up_exps.bias"),
        ("model.layers.{bid}.mlp.experts.down_proj", "blk.{bid}.ffn_down_exps.weight"),
        ("model.layers.{bid}.mlp.experts.down_proj_bias", "blk.{bid}.ffn_down_exps.bias"),
        ("model.layers.{bid}.mlp.experts.gate_up_proj_blocks", "blk.{bid}.ffn_gate_up_exps.weight"),
        ("model.layers.{bid}.mlp.experts.gate_up_proj_scales", "blk.{bid}.ffn_gate_up_exps.weight"),
        ("model.layers.{bid}.mlp.experts.down_proj_blocks", "blk.{bid}.ffn_down_exps.weight"),
        ("model.layers.{bid}.mlp.experts.down_proj_scales", "blk.{bid}.ffn_down_exps.weight"),
    )
    ignore = ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu", "attention_bias": True, "swiglu_limit": 7.0}
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    SWIGLU_LIMIT = 7.0

    # --- names and the 1 -> n / n -> 1 hook ---------------------------------------------------

    def hf_name(self, gguf_name):
        m = _GATE_OR_UP.fullmatch(gguf_name)
        if m:
            suffix = "_bias" if m.group("kind") == "bias" else ""
            return f"model.layers.{m.group('bid')}.mlp.experts.gate_up_proj{suffix}"
        return super().hf_name(gguf_name)

    def split_tensor(self, name, ref):
        """HF -> GGUF: the interleaved gate/up into two tensors (weights transposed), down_proj transposed; MXFP4
        gate/up split by alternate rows as they are. GGUF -> HF: MXFP4 experts into `_blocks` and `_scales`."""
        if ref.dtype == MXFP4 and _HF_PROJ.fullmatch(name):
            return self._to_blocks_and_scales(name, ref)
        m = _GATE_UP.fullmatch(name)
        if m and ref.dtype == MXFP4:
            rows = ref.shape[1] // 2
            return [(name.replace("gate_up", kind), mxfp4_ref(name.replace("gate_up", kind), (ref.shape[0], rows,
                                                                                            ref.shape[2]),
                                                              lambda i=i: np.ascontiguousarray(ref.read_raw()[:, i::2]),
                                                              ref))
                    for i, kind in enumerate(("gate", "up"))]
        if m:
            weight = m.group("kind") == "weight"
            n_ff = ref.shape[-1] // 2
            shape = (ref.shape[0], n_ff, ref.shape[1]) if weight else (ref.shape[0], n_ff)

            def half(offset: int):
                def load():
                    values = np.asarray(ref.read())[..., offset::2]
                    return _swap_last(values) if weight else np.ascontiguousarray(values)
                return ref.derive(load, shape=shape, raw_loader=None, storage=None, extra={})
            return [(name.replace("gate_up", kind), half(i)) for i, kind in enumerate(("gate", "up"))]
        if _DOWN.fullmatch(name) and ref.dtype != MXFP4:
            return [(name, ref.derive(lambda: _swap_last(np.asarray(ref.read())), shape=_swapped(ref.shape),
                                      raw_loader=None, storage=None, extra={}))]
        return super().split_tensor(name, ref)

    def merge_tensors(self, name, parts):
        """HF -> GGUF: MXFP4 blocks + scales into one ggml MXFP4 tensor. GGUF -> HF: gate and up interleaved back into
        gate_up_proj (and transposed; MXFP4 rows interleaved as they are), down_proj transposed."""
        if len(parts) == 2 and {p.name.rsplit("_", 1)[-1] for p in parts} == {"blocks", "scales"}:
            return self._from_blocks_and_scales(name, parts)
        m = _HF_GATE_UP.fullmatch(name)
        if m and parts and all(p.dtype == MXFP4 for p in parts):
            by_kind = {p.name.split(".")[2].split("_")[1]: p for p in parts}
            gate, up = by_kind["gate"], by_kind["up"]
            shape = (gate.shape[0], 2 * gate.shape[1], gate.shape[2])

            def raw():
                g = np.asarray(gate.read_raw()).reshape(*gate.shape[:2], -1)
                out = np.empty((shape[0], shape[1], g.shape[-1]), np.uint8)
                out[:, 0::2] = g
                out[:, 1::2] = np.asarray(up.read_raw()).reshape(g.shape)
                return out
            return mxfp4_ref(name, shape, raw, gate)
        if _HF_DOWN.fullmatch(name) and len(parts) == 1 and parts[0].dtype == MXFP4:
            return parts[0].derive(parts[0].read, name=name)
        if m:
            by_kind = {p.name.split(".")[2].split("_")[1]: p for p in parts}    # blk.N.ffn_gate_exps.weight
            if set(by_kind) != {"gate", "up"} or len(parts) != 2:
                raise FormatError(f"{name} needs ffn_gate_exps and ffn_up_exps, got {[p.name for p in parts]}")
            gate, up = by_kind["gate"], by_kind["up"]
            weight = not m.group("bias")
            shape = (gate.shape[0], gate.shape[2], 2 * gate.shape[1]) if weight else (gate.shape[0], 2 * gate.shape[1])

            def load():
                out = None
                for offset, p in enumerate((gate, up)):
                    values = np.asarray(p.read())
                    values = np.swapaxes(values, -1, -2) if weight else values
                    if out is None:
                        out = np.empty(shape, values.dtype)
                    out[..., offset::2] = values
                return out
            return gate.derive(load, name=name, shape=shape, raw_loader=None, storage=None, extra={})
        if _HF_DOWN.fullmatch(name) and len(parts) == 1:
            ref = parts[0]
            return ref.derive(lambda: _swap_last(np.asarray(ref.read())), name=name, shape=_swapped(ref.shape),
                              raw_loader=None, storage=None, extra={})
        return super().merge_tensors(name, parts)

    @staticmethod
    def _from_blocks_and_scales(name: str, parts: list[TensorRef]) -> TensorRef:
        blocks, scales = sorted(parts, key=lambda p: p.name.endswith("_scales"))
        if blocks.dtype.name != "U8" or scales.dtype.name != "U8" or tuple(blocks.shape[:-1]) != tuple(scales.shape) \
                or blocks.shape[-1] != 16:
            raise FormatError(f"{blocks.name!r} {list(blocks.shape)} / {scales.name!r} {list(scales.shape)} are not "
                              "MXFP4 blocks (uint8 [..., blocks, 16]) and their scales (uint8 [..., blocks])")
        shape = (*scales.shape[:-1], 32 * scales.shape[-1])
        return mxfp4_ref(name, shape, lambda: ggml_mxfp4(np.asarray(blocks.read()), np.asarray(scales.read())), blocks)

    @staticmethod
    def _to_blocks_and_scales(name: str, ref: TensorRef) -> list[tuple[str, TensorRef]]:
        n_blocks = ref.shape[-1] // 32
        held: dict = {}

        def part(i: int):
            def load():
                if not held:
                    held["pair"] = checkpoint_mxfp4(np.asarray(ref.read_raw()).reshape(*ref.shape[:-1], -1), n_blocks)
                return held.pop("pair")[i] if i else held["pair"][i]
            return load
        u8 = DTYPES["U8"]
        return [(f"{name}_blocks", TensorRef(f"{name}_blocks", u8, (*ref.shape[:-1], n_blocks, 16), part(0))),
                (f"{name}_scales", TensorRef(f"{name}_scales", u8, (*ref.shape[:-1], n_blocks), part(1)))]

    # --- metadata ------------------------------------------------------------------------------

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or 64)

    def tensor_shape(self, kind, dims):
        if kind == "attn_sinks.weight":
            return (dims.n_head,)
        if kind.startswith("ffn_gate_up_exps."):       # the HF side's fused tensor: replaced in `tensor_shapes`
            return ()
        return super().tensor_shape(kind, dims)

    def tensor_shapes(self):
        """The family's table, with the fused gate/up replaced by llama.cpp's two tensors and their biases."""
        out = {n: s for n, s in super().tensor_shapes().items() if ".ffn_gate_up_exps." not in n}
        d = self.dims()
        for i in range(d.n_layer):
            for kind in ("ffn_gate_exps.bias", "ffn_up_exps.bias"):
                out[f"blk.{i}.{kind}"] = self.tensor_shape(kind, d)
        return out

    def is_mxfp4(self) -> bool:
        """Whether config.json declares the experts MXFP4 (stored as `_blocks` + `_scales`)."""
        return (self.config.get("quantization_config") or {}).get("quant_method") == "mxfp4"

    def kept_types(self):
        if not self.is_mxfp4():
            return {}
        return {f"blk.{i}.ffn_{k}_exps.weight": "MXFP4" for i in range(self.n_layer) for k in ("gate", "up", "down")}

    def hf_tensor_shapes(self):
        """The checkpoint's own expert tensors (fused gate/up, (experts, in, out); or MXFP4 blocks and scales)."""
        d = self.dims()
        out = {k: v for k, v in super().hf_tensor_shapes().items() if ".mlp.experts." not in k}
        n, ff, h = d.n_expert, d.n_ff_expert, d.n_embd
        for i in range(d.n_layer):
            p = f"model.layers.{i}.mlp.experts."
            out.update({p + "gate_up_proj_bias": (n, 2 * ff), p + "down_proj_bias": (n, h)})
            if self.is_mxfp4():
                out.update({p + "gate_up_proj_blocks": (n, 2 * ff, h // 32, 16), p + "gate_up_proj_scales": (n, 2 * ff, h // 32),
                            p + "down_proj_blocks": (n, h, ff // 32, 16), p + "down_proj_scales": (n, h, ff // 32)})
            else:
                out.update({p + "gate_up_proj": (n, h, 2 * ff), p + "down_proj": (n, ff, h)})
        return out

    def has_tensor(self, kind):
        if kind.endswith(".bias") or kind == "attn_sinks.weight":
            return True
        return super().has_tensor(kind)

    def hparams(self):
        c = self.config
        if not c.get("attention_bias", True):
            raise UnsupportedError("gpt-oss without attention biases has no llama.cpp equivalent")
        if float(c.get("swiglu_limit", self.SWIGLU_LIMIT)) != self.SWIGLU_LIMIT:
            raise UnsupportedError(f"gpt-oss with swiglu_limit {c['swiglu_limit']}: llama.cpp hard-codes "
                                   f"{self.SWIGLU_LIMIT}")
        pattern = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.n_layer)]
        if c.get("layer_types") not in (None, pattern):
            raise UnsupportedError("gpt-oss: llama.cpp slides the window on even layers and attends fully on odd "
                                   "ones; this config's layer_types differ")
        out = {**self.common_hparams(head_dim_default=self.head_dim()), **self.expert_hparams(c["intermediate_size"])}
        out[self.key("attention.sliding_window")] = u32(c["sliding_window"])
        rp = self.rope_parameters()
        for key in ("beta_fast", "beta_slow"):
            if rp.get("rope_type") == "yarn" and rp.get(key) is not None:
                out[self.key(f"rope.scaling.yarn_{key}")] = f32(rp[key])
        return out

    @classmethod
    def config_fields(cls, g, tensors):
        out = {**cls.common_config(g), **cls.expert_config(g)}
        n = out["num_hidden_layers"]
        out["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
        out["sliding_window"] = g.need("attention.sliding_window")
        if any(ref.dtype == MXFP4 for name, ref in tensors.items() if "_exps." in name):
            out["quantization_config"] = dict(MXFP4_CONFIG)
        rp = out["rope_parameters"]
        if rp.get("rope_type") == "yarn":
            rp["truncate"] = False               # gpt-oss's YaRN (transformers' default for the model)
            for key in ("beta_fast", "beta_slow"):
                if g.get(f"rope.scaling.yarn_{key}") is not None:
                    rp[key] = g.get(f"rope.scaling.yarn_{key}")
        return out


def _swapped(shape) -> tuple[int, ...]:
    return (*shape[:-2], shape[-1], shape[-2])


FAMILY = GptOss
