"""Inference memory: the GGUF file at each quantization (llama-quantize's own per-tensor rules), KV cache, compute.

A GGUF file is not a multiple of a parameter count: llama-quantize gives each tensor its own type (Q4_K_M keeps half
the attn_v/ffn_down at Q6_K, the output at Q6_K, norms at F32), a type may fall back when a row does not split into
blocks, and every tensor is padded to the file's alignment. So the sizes walk the tensors one by one with the
quantizer's rules (`modelport.gguf.mixes`) and the ggml block geometry (`DTYPES[...]`).

- KV cache (llama.cpp's): per layer and token, one K and one V row of n_head_kv * head_dim elements of the
  KV type; times ctx * batch (batch = independent sequences, each with the full context). GQA-aware by construction.
- Compute buffer (llama.cpp's CPU graph at n_ubatch = 512, no flash attention), as the process really holds it while
  generating: llama.cpp reserves 4 * ubatch * (max(n_vocab, n_head * ctx) + 3 * n_embd) bytes (99.38 MiB for SmolLM2
  at ctx 2048, its own log to the byte), but the logits part is written for the last token only (`run` asks for no
  other), so the pages touched are one micro-batch's F32 attention scores and hidden states plus one row of logits:
  4 * ubatch * (n_head * ctx + 3 * n_embd) + 4 * n_vocab. Counting the reserved logits made the SmolLM2 estimate 50 %
  high against `run`'s measured peak RSS (bench/run_memory.py).
- Runtime: what the process holds before any model (Python, modelport and the engine's libraries), measured.
- transformers (`running_memory(..., engine="hf")`): the runtime with torch, every weight in F32 (modelport's HF engine
  loads float32), a F32 KV cache for the context and one prompt chunk's F32 activations.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ..core.dtypes import DTYPES
from ..core.errors import UnsupportedError
from ..gguf.convert import KEPT_AS_IS
from ..gguf.mixes import BASE_TYPE, ModelShape, choose_types
from .model import Hyper, ModelView, kv_bytes, tensor_infos_bytes

#: The rows of the size table: (label, llama.cpp ftype). F16 stands for BF16 too (same size).
ROWS = ("F32", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
#: The importance-matrix types in the size table (made with `modelport imatrix` + `--imatrix`).
IQ_ROWS = ("IQ4_XS", "IQ3_M", "IQ3_XXS", "IQ2_M", "IQ2_XXS", "IQ1_M")
#: Best first: what "the best quantization that fits" walks down (F32 is never better than F16 for inference).
LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
#: LADDER with the IQ types, best first, each IQ type made with an imatrix: llama.cpp's published bits per weight
#: order (tools/quantize's list), IQ4_XS above Q4_0 and IQ3_M above Q3_K_M as llama.cpp's measurements have them
#: (fewer bits, lower perplexity with an imatrix). bench/imatrix.py on SmolLM2-135M (imatrix from the shipped
#: calibration text, held-out ppl, ctx 256) agrees from F16 down to Q4_0 and from IQ2_M down (Q8_0 23.83, Q4_K_M
#: 23.87, Q4_0 24.32 ... IQ2_M 29.64, IQ2_XXS 34.90, IQ1_M 48.19), but not in between: its 576-wide rows are no
#: multiple of 256, so the IQ mixes fall back to 32-blocks (there Q3_K_M, 93.5 MB, is larger than IQ4_XS, 90.9 MB).
#: The published order, from models whose rows fit, is the one kept.
QUALITY_ORDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q4_0", "IQ3_M", "Q3_K_M", "IQ3_XXS", "Q2_K",
                 "IQ2_M", "IQ2_XXS", "IQ1_M")
KV_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
UBATCH = 512
#: Peak RSS of the process before a model loads: Python, modelport and the engine's libraries (measured on Linux
#: x86-64, CPU builds: `import llama_cpp, modelport.cli.main` 65 MB; with torch + transformers instead, 455 MB).
RUNTIME_BYTES = {"llama": 65 * 10**6, "hf": 455 * 10**6}


def _model_shape(view: ModelView) -> ModelShape:
    hp = view.hyper
    if hp is None:
        layers = {m.group(1) for n in view.tensors for m in [re.match(r"blk\.(\d+)\.", n)] if m}
        return ModelShape(max(1, len(layers)), 1, 1)
    return ModelShape(hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert, hp.arch)


def header_bytes(view: ModelView, quantized: bool = False) -> int:
    """Bytes before the tensor data: known for a GGUF input and for what the converter would write; otherwise tensor
    infos (exact) plus metadata (estimated: 4 KiB of hyperparameters, about 24 bytes per vocabulary token).
    A quantized file also gets `general.quantization_version`."""
    if view.header is not None:
        raw = int(view.header)
    else:
        raw = 24 + 4096 + 24 * (view.hyper.n_vocab if view.hyper else 0) + tensor_infos_bytes(view.tensors)
    if quantized and not view.quant_version:
        raw += kv_bytes("general.quantization_version", np.uint32(2))
    return -(-raw // view.alignment) * view.alignment


def gguf_types(view: ModelView, ftype: str) -> dict[str, str]:
    """The type each tensor gets in a `ftype` GGUF (llama-quantize's rules, `modelport.gguf.mixes`); the IQ types
    as made with an imatrix (some of their rules depend on it, and the IQ1/IQ2 ones cannot be made without)."""
    # For F32/F16/BF16 this is also what the converter writes: 1-D tensors and norms F32, other matrices the outtype.
    chosen = choose_types(view.tensors, ftype, _model_shape(view), has_imatrix=ftype.startswith("IQ"))
    if view.kind != "gguf":     # the converter copies these as they are (gpt-oss's MXFP4 experts)
        chosen.update({name: qtype for name, (_, qtype) in view.tensors.items() if qtype in KEPT_AS_IS})
    return chosen


def weight_sizes(view: ModelView, rows=ROWS + IQ_ROWS) -> dict[str, dict[str, Any]]:
    """For each file type: the GGUF file's bytes (header + aligned tensor data) and its tensor types."""
    out = {}
    for ftype in rows:
        head = header_bytes(view, DTYPES[BASE_TYPE[ftype]].is_quantized)
        types = gguf_types(view, ftype)
        data, counts, experts = 0, {}, 0
        stacked = set(view.expert_tensors())
        for name, qtype in types.items():
            shape = view.tensors[name][0]
            n = DTYPES[qtype].nbytes(math.prod(shape))
            data += -(-n // view.alignment) * view.alignment
            counts[qtype] = counts.get(qtype, 0) + 1
            experts += n if name in stacked else 0
        numel = sum(math.prod(shape) for shape, _ in view.tensors.values())
        out[ftype] = {"bytes": head + data, "tensor_bytes": data,
                      "bits_per_weight": round(data * 8 / numel, 3) if numel else None,
                      "tensor_types": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}
        if stacked:
            out[ftype]["expert_bytes"] = experts
    return out


def experts(view: ModelView, sizes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A mixture of experts' parameters and memory: all of them, those one token uses (the shared ones plus
    `expert_used_count` experts' slices), and per file type the bytes of one expert and of what a token reads
    (the file's weights less the unused experts). None for a dense model."""
    hp, stacked = view.hyper, view.expert_tensors()
    if hp is None or not stacked:
        return None
    per_expert = sum(math.prod(view.tensors[name][0][1:]) for name in stacked)
    total = view.parameter_count
    used = hp.n_expert_used or hp.n_expert
    idle = hp.n_expert - used
    return {"count": hp.n_expert, "used": used, "total_parameters": total,
            "active_parameters": total - idle * per_expert, "per_expert_parameters": per_expert,
            "per_expert_bytes": {f: row["expert_bytes"] // hp.n_expert for f, row in sizes.items()},
            "active_bytes": {f: row["tensor_bytes"] - idle * (row["expert_bytes"] // hp.n_expert)
                             for f, row in sizes.items()}}


def kv_cache_bytes(hp: Hyper, ctx: int, batch: int = 1, kv_type: str = "F16") -> int:
    """llama.cpp's KV cache: n_layer * (K row + V row) per token, rows of n_head_kv * head_dim elements."""
    dt = DTYPES[kv_type.upper()]
    row = hp.n_head_kv * hp.head_dim
    if row % dt.block_size:
        raise UnsupportedError(f"a KV row of {row} values does not split into {dt.name} blocks of {dt.block_size}")
    return 2 * hp.n_layer * dt.nbytes(row) * ctx * batch


def compute_buffer_bytes(hp: Hyper, ctx: int, batch: int = 1) -> int:
    """llama.cpp's compute memory while generating (see the module docstring): one micro-batch's attention scores and
    hidden states, and the last token's logits per sequence."""
    ub = min(UBATCH, ctx * batch)
    return 4 * ub * (hp.n_head * ctx + 3 * hp.n_embd) + 4 * hp.n_vocab * batch


def hf_activation_bytes(hp: Hyper, ctx: int, batch: int = 1) -> int:
    """transformers' F32 working set for one prompt chunk: hidden states, MLP intermediates, attention scores."""
    ub = min(UBATCH, ctx)
    return 4 * batch * ub * (2 * hp.n_embd + 2 * hp.n_ff + hp.n_head * ub) + 4 * hp.n_vocab * batch


def default_ctx(hp: Hyper) -> int:
    """The context `run` opens when none is given: the trained length (4096 when unknown)."""
    return int(hp.n_ctx or 4096)


def running_memory_of_view(view: ModelView, engine: str = "llama", ctx: int | None = None, batch: int = 1,
                           kv_type: str = "F16", ftype: str | None = None) -> dict[str, Any] | None:
    """Peak resident memory of `modelport run` on this model: {engine, ctx, parts, total}; None without a config.
    `engine`: "llama" (llama.cpp on the GGUF: the file itself, or the `ftype` one) or "hf" (transformers, F32).
    Calibrated against measured peak RSS (bench/run_memory.py)."""
    hp = view.hyper
    if hp is None:
        return None
    ctx = ctx or default_ctx(hp)
    if engine == "hf":
        parts = {"runtime": RUNTIME_BYTES["hf"], "weights": 4 * view.parameter_count,
                 "kv_cache": kv_cache_bytes(hp, ctx, batch, "F32"), "activations": hf_activation_bytes(hp, ctx, batch)}
    else:
        if ftype is not None:
            weights = weight_sizes(view, (ftype,))[ftype]["bytes"]
        else:
            weights = view.file_size if view.kind == "gguf" else weight_sizes(view, ("F16",))["F16"]["bytes"]
        parts = {"runtime": RUNTIME_BYTES["llama"], "weights": weights, "kv_cache": kv_cache_bytes(hp, ctx, batch, kv_type),
                 "compute_buffer": compute_buffer_bytes(hp, ctx, batch)}
    return {"engine": "transformers" if engine == "hf" else "llama.cpp", "ctx": ctx, "parts": parts,
            "total": sum(parts.values())}
