"""Per-tensor type choice for llama.cpp file types (Q4_K_M etc.), as llama-quantize makes it.

A transcription of `llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp (docs/gguf.md §8) for the ftypes modelport
writes, without imatrix, `--pure` or manual overrides. No library exposes this choice without quantizing the whole
file, so it is ours; tests compare it with what `llama_cpp.llama_model_quantize` picks.

Rules that depend on the order of tensors (the attn_v and ffn_down counters) use llama.cpp's processing order:
non-block tensors first, then blk.0.*, blk.1.*, ..., by name within a layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.dtypes import DTYPES

#: llama_ftype enum values (`general.file_type`).
FTYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "BF16": 32,
}

#: The tensor type each ftype starts from (llama_ftype_get_default_type).
BASE_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}

# tensor_type_fallback: a type whose block does not divide the row length falls back to a 32-block type.
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

# Names llama.cpp never quantizes (substrings), from tensor_allows_quantization.
_NEVER = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
          "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
          "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
          "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
          "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
          "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
          "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
          ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_NEVER_EXACT = ("position_embd.weight", "token_types.weight")

_LAYER = re.compile(r"blk\.(-?\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters the rules look at (from the GGUF's `<arch>.*` keys)."""
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    arch: str = "llama"

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        return self.arch == "llama" and self.n_layer == 80 and self.n_head != self.n_head_kv


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _n_dims(shape) -> int:
    ne = list(reversed(shape))           # GGUF order: ne[0] is the row length
    n = 1
    for i, v in enumerate(ne):
        if v > 1:
            n = i + 1
    return n


def allows_quantization(name: str, shape) -> bool:
    """Whether llama-quantize would quantize this tensor at all (2D+ `*weight`, not norms, routers, ...)."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    return not any(s in name for s in _NEVER) and name not in _NEVER_EXACT


def _sort_key(name: str):
    m = _LAYER.match(name)
    return (int(m.group(1)) if m else -1, name.encode())


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _State:
    def __init__(self, model: ModelShape, names):
        self.model = model
        cats = [_category(n) for n in names]
        self.n_attention_wv = sum(c in ("attn_v", "attn_qkv", "attn_kv_b") for c in cats)
        self.tied = "output" not in cats
        self.i_attention_wv = 0
        self.i_ffn_down = 0
        self.n_ffn_down = model.n_layer

    def layer(self, i: int, name: str) -> int:
        if max(1, self.model.n_expert) > 1:
            m = _LAYER.match(name)
            if not m or not 0 <= int(m.group(1)) < self.model.n_layer:
                raise ValueError(f"cannot tell the layer of tensor {name}")
            return int(m.group(1))
        return i


def _impl(st: _State, new: str, name: str, ncols: int, ftype: str) -> str:
    """llama_tensor_get_type_impl for the K and legacy ftypes."""
    m = st.model
    cat = _category(name)
    falcon = m.arch == "falcon"
    if cat == "output" or (st.tied and cat == "token_embd"):
        if falcon or ncols % DTYPES[new].block_size:
            return "Q8_0"
        return new if new == "Q8_0" else "Q6_K"
    if cat == "token_embd":
        return new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        if ftype == "Q2_K":
            new = "Q4_K" if m.n_gqa >= 4 else "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if st.i_attention_wv < 2 else "Q4_K"
        elif ftype == "Q3_K_L":
            new = "Q5_K"
        elif ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and st.i_attention_wv < 4:
            new = "Q5_K"
        if m.is_70b and new in ("Q3_K", "Q4_K"):
            new = "Q5_K"
        if m.n_expert == 8:
            new = "Q8_0"
        st.i_attention_wv += 1
    elif cat == "attn_k":
        if m.n_expert == 8:
            new = "Q8_0"
    elif cat == "ffn_down":
        i, n = st.layer(st.i_ffn_down, name), st.n_ffn_down
        if ftype == "Q2_K":
            new = "Q3_K"
        elif ftype == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K" if (not falcon or _use_more_bits(i, n)) else "Q3_K"
        elif ftype == "Q3_K_L":
            new = "Q4_K" if falcon else "Q5_K"
        elif ftype == "Q4_K_M":
            if falcon:
                new = "Q6_K" if i < n // 16 else "Q5_K" if _use_more_bits(i, n) else "Q4_K"
            elif _use_more_bits(i, n):
                new = "Q6_K"
        elif ftype == "Q5_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif ftype == "Q4_K_S" and not falcon and i < n // 8:
            new = "Q5_K"
        st.i_ffn_down += 1
    elif cat == "attn_output":
        if not falcon:
            if m.n_expert == 8:
                if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    new = "Q5_K"
            elif ftype == "Q2_K":
                new = "Q3_K"
            elif ftype == "Q3_K_M":
                new = "Q4_K"
            elif ftype == "Q3_K_L":
                new = "Q5_K"
        elif ftype == "Q3_K_L":
            new = "Q4_K"
    # attn_qkv's own branch is unreachable (it is an attn_v category); ffn_gate/ffn_up rules are IQ-only.
    return new


def _fallback(new: str, ncols: int) -> str:
    if ncols % DTYPES[new].block_size == 0:
        return new
    new = _FALLBACK.get(new, new)
    return new if ncols % DTYPES[new].block_size == 0 else "F16"


def choose_types(tensors: dict, ftype: str, model: ModelShape) -> dict[str, str]:
    """The type llama-quantize gives each tensor for `ftype` (a key of FTYPES).

    `tensors` maps GGUF tensor name -> (shape in NumPy order, i.e. row length last; current type name).
    Returns name -> type name, in llama.cpp's processing order. Tensors it does not quantize keep their type.
    """
    ftype = ftype.upper()
    if ftype not in BASE_TYPE:
        raise ValueError(f"unknown file type {ftype}; supported: {', '.join(BASE_TYPE)}")
    base = BASE_TYPE[ftype]
    names = sorted(tensors, key=_sort_key)
    st = _State(model, names)
    out = {}
    for name in names:
        shape, cur = tensors[name]
        if not allows_quantization(name, shape):
            out[name] = cur
            continue
        new = base
        if DTYPES[base].is_quantized:
            ncols = int(shape[-1])
            new = _fallback(_impl(st, new, name, ncols, ftype), ncols)
        out[name] = new
    return out
