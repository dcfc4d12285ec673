"""Per-tensor type choice for llama.cpp file types (Q4_K_M etc.), as llama-quantize makes it.

A transcription of `llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp (docs/gguf.md §8) for every ftype
llama-quantize offers but Q2_K_S, Q1_0/Q2_0 and NVFP4, with or without an imatrix (some rules depend on it), without
`--pure` or manual overrides; and its refusal of the very-low-bit types without importance data. No library exposes
this choice without quantizing the whole file, so it is ours; tests compare it with what
`llama_cpp.llama_model_quantize` picks (importance data passed through its params).

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
    "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25,
    "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32,
    "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38,
}

#: The tensor type each ftype starts from (llama_ftype_get_default_type).
BASE_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S", "IQ3_XXS": "IQ3_XXS",
    "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0", "MXFP4_MOE": "MXFP4",
}

#: Tensor types llama-quantize refuses to write without importance data (tensor_requires_imatrix); the token
#: embedding and output are exempt.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS")

# tensor_type_fallback: a type whose block does not divide the row length falls back to a 32-block type.
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "TQ1_0": "Q4_0",
             "TQ2_0": "Q4_0", **{t: "IQ4_NL" for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS",
                                                       "IQ3_S", "IQ4_XS")}}

# ftypes whose non-embedding tensors follow the very-low-bit branch of llama_tensor_get_type_impl.
_LOW_BIT = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")

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


def processing_order(names) -> list[str]:
    """`names` in the order llama-quantize visits them (the order its counters and its refusals follow)."""
    return sorted(names, key=_sort_key)


def ordered_refs(refs) -> list:
    """Tensors (anything with a `.name`) in llama-quantize's processing order, which is also the order it writes
    them in (its loader's weights map is sorted so)."""
    return sorted(refs, key=lambda r: _sort_key(r.name))


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _State:
    def __init__(self, model: ModelShape, names, has_imatrix: bool):
        self.model = model
        self.has_imatrix = has_imatrix
        cats = [_category(n) for n in names]
        self.n_attention_wv = sum(c in _ATTN_V for c in cats)
        self.tied = "output" not in cats
        self.i_attention_wv = 0
        self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.n_layer = model.n_layer

    def layer(self, i: int, name: str) -> int:
        if max(1, self.model.n_expert) > 1:
            m = _LAYER.match(name)
            if not m or not 0 <= int(m.group(1)) < self.model.n_layer:
                raise ValueError(f"cannot tell the layer of tensor {name}")
            return int(m.group(1))
        return i


_ATTN_V = ("attn_v", "attn_qkv", "attn_kv_b")


def _output(st: _State, new: str, ncols: int, ftype: str) -> str:
    """The output tensor (and a tied token embedding)."""
    if ftype == "MXFP4_MOE" or st.model.arch == "falcon" or ncols % DTYPES[new].block_size:
        return "Q8_0"
    if ftype in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
        return "Q5_K"
    return new if new == "Q8_0" else "Q6_K"


def _token_embd(new: str, ftype: str) -> str:
    if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
        return "Q2_K"
    if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
        return "IQ3_S"
    if ftype in ("TQ1_0", "TQ2_0"):
        return "Q4_K"
    return new


def _low_bit(st: _State, new: str, cat: str, ftype: str) -> str:
    """IQ1_S/M and IQ2_*: attn_v, attn_k (8 experts), the first eighth of ffn_down and attn_output get more bits."""
    m = st.model
    s_or_m = ftype in ("IQ2_S", "IQ2_M")
    if cat in _ATTN_V:
        new = "Q4_K" if m.n_gqa >= 4 or m.n_expert >= 4 else "IQ3_S" if s_or_m else "Q2_K"
        st.i_attention_wv += 1
    elif m.n_expert == 8 and cat == "attn_k":
        new = "Q4_K"
    elif cat == "ffn_down":
        if st.i_ffn_down < st.n_layer // 8:
            new = "IQ3_S" if s_or_m else "Q2_K"
        st.i_ffn_down += 1
    elif cat == "attn_output":
        if m.n_expert == 8:
            new = "Q5_K"
        elif ftype in ("IQ1_S", "IQ1_M"):
            new = "IQ2_XXS"
        elif s_or_m:
            new = "IQ3_S"
    return new


def _attn_v(st: _State, new: str, ftype: str) -> str:
    m = st.model
    gqa4 = m.n_gqa >= 4
    if ftype == "Q2_K":
        new = "Q4_K" if gqa4 else "Q3_K"
    elif ftype == "IQ3_XXS":
        new = "Q4_K" if gqa4 else "IQ3_XXS" if st.has_imatrix else "IQ3_S"
    elif ftype in ("IQ3_XS", "IQ3_S") and gqa4:
        new = "Q4_K"
    elif ftype == "IQ3_M":
        new = "Q4_K"
    elif ftype == "Q3_K_M":
        new = "Q5_K" if st.i_attention_wv < 2 else "Q4_K"
    elif ftype == "Q3_K_L":
        new = "Q5_K"
    elif ftype in ("IQ4_NL", "IQ4_XS") and gqa4:
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
    return new


def _ffn_down(st: _State, new: str, name: str, ftype: str) -> str:
    m = st.model
    falcon = m.arch == "falcon"
    i, n = st.layer(st.i_ffn_down, name), st.n_layer
    if ftype == "Q2_K":
        new = "Q3_K"
    elif ftype == "IQ3_XXS" and not st.has_imatrix:
        new = "Q4_K" if i < n // 8 else "Q3_K"
    elif ftype == "Q3_K_M":
        new = "Q5_K" if i < n // 16 else "Q4_K" if (not falcon or _use_more_bits(i, n)) else "Q3_K"
    elif ftype == "IQ3_M" and (i < n // 8 or (m.n_expert == 8 and _use_more_bits(i, n))):
        new = "Q4_K"
    elif ftype == "Q3_K_L":
        new = "Q4_K" if falcon else "Q5_K"
    elif ftype == "Q4_K_M":
        if falcon:
            new = "Q6_K" if i < n // 16 else "Q5_K" if _use_more_bits(i, n) else "Q4_K"
        elif _use_more_bits(i, n):
            new = "Q6_K"
    elif i < n // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not st.has_imatrix:
        new = "Q5_K"
    elif ftype == "Q5_K_M" and _use_more_bits(i, n):
        new = "Q6_K"
    elif ftype == "Q4_K_S" and not falcon and i < n // 8:
        new = "Q5_K"
    elif ftype in ("Q4_0", "Q5_0") and st.has_imatrix and i < n // 8:
        new = "Q4_1" if ftype == "Q4_0" else "Q5_1"     # llama.cpp's guard for the first ffn_down layers
    st.i_ffn_down += 1
    return new


def _attn_output(st: _State, new: str, ftype: str) -> str:
    m = st.model
    if m.arch == "falcon":
        return "Q4_K" if ftype == "Q3_K_L" else new
    if m.n_expert == 8:
        if ftype in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
                     "IQ4_XS"):
            new = "Q5_K"
        return new
    return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(ftype, new)


def _ffn_gate_up(st: _State, new: str, name: str, ftype: str, counter: str) -> str:
    i = st.layer(getattr(st, counter), name)
    if ftype == "IQ3_XS" and st.n_layer // 8 <= i < 7 * st.n_layer // 8:
        new = "IQ3_XXS"
    setattr(st, counter, getattr(st, counter) + 1)
    return new


def _impl(st: _State, new: str, name: str, shape, ftype: str) -> str:
    """llama_tensor_get_type_impl: the mix's rule for one tensor."""
    cat = _category(name)
    ncols = int(shape[-1])
    if cat == "output" or (st.tied and cat == "token_embd"):
        return _output(st, new, ncols, ftype)
    if ftype == "MXFP4_MOE":                         # expert tensors (3-D) MXFP4, the rest Q8_0
        return "MXFP4" if len(shape) >= 3 and int(shape[-3]) > 1 else "Q8_0"
    if cat == "token_embd":
        return _token_embd(new, ftype)
    if ftype in _LOW_BIT:
        return _low_bit(st, new, cat, ftype)
    if cat in _ATTN_V:
        return _attn_v(st, new, ftype)
    if cat == "attn_k":
        if st.model.n_expert == 8:
            return "Q8_0"
        return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ftype, new)
    if cat == "attn_q":
        return {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}.get(ftype, new)
    if cat == "ffn_down":
        return _ffn_down(st, new, name, ftype)
    if cat == "attn_output":
        return _attn_output(st, new, ftype)
    if cat == "ffn_gate":
        return _ffn_gate_up(st, new, name, ftype, "i_ffn_gate")
    if cat == "ffn_up":
        return _ffn_gate_up(st, new, name, ftype, "i_ffn_up")
    return new


def _fallback(new: str, ncols: int) -> str:
    if ncols % DTYPES[new].block_size == 0:
        return new
    new = _FALLBACK.get(new, new)
    return new if ncols % DTYPES[new].block_size == 0 else "F16"


def choose_types(tensors: dict, ftype: str, model: ModelShape, has_imatrix: bool = False) -> dict[str, str]:
    """The type llama-quantize gives each tensor for `ftype` (a key of FTYPES), with or without an imatrix.

    `tensors` maps GGUF tensor name -> (shape in NumPy order, i.e. row length last; current type name).
    Returns name -> type name, in llama.cpp's processing order. Tensors it does not quantize keep their type.
    """
    ftype = ftype.upper()
    if ftype not in BASE_TYPE:
        raise ValueError(f"unknown file type {ftype}; supported: {', '.join(BASE_TYPE)}")
    base = BASE_TYPE[ftype]
    names = processing_order(tensors)
    st = _State(model, names, has_imatrix)
    out = {}
    for name in names:
        shape, cur = tensors[name]
        if not allows_quantization(name, shape):
            out[name] = cur
            continue
        new = base
        if DTYPES[base].is_quantized:
            new = _fallback(_impl(st, new, name, shape, ftype), int(shape[-1]))
        out[name] = new
    return out


def requires_imatrix(name: str, qtype: str) -> bool:
    """Whether llama-quantize refuses to write tensor `name` as `qtype` without importance data."""
    return qtype in NEEDS_IMATRIX and name not in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")


def missing_imatrix(types: dict[str, str], has_entry) -> str | None:
    """The first tensor (in processing order) that needs importance data and has none (`has_entry(name)` false),
    with its type, as llama-quantize's refusal names it; None when nothing is missing."""
    for name, qtype in types.items():
        if requires_imatrix(name, qtype) and not has_entry(name):
            return f"{name} ({qtype})"
    return None
