"""`estimate`: the memory a model needs to run or to fine-tune, from its real tensor shapes or a bare config.json.

Why our own: the tools people use give dtype multiples of a parameter count (accelerate's `estimate-memory`) or
a rule of thumb ("7B is 14 GB at F16"). Here the model is seen as the GGUF it is or would be (`model`), its file
sized tensor by tensor with llama-quantize's rules (`inference`), which makes it match the files modelport writes
to the byte, and training is costed by HF Trainer's conventions (`training`). Nothing here names a model family:
layouts, defaults and LoRA targets come from `modelport.families`. Each module's docstring states its choices.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from ..core.errors import UnsupportedError
from .devices import DEVICES, Device, cpu_has_fast_bf16, device_for, fits, parse_memory
from .inference import (
    IQ_ROWS,
    KV_TYPES,
    LADDER,
    QUALITY_ORDER,
    ROWS,
    RUNTIME_BYTES,
    UBATCH,
    compute_buffer_bytes,
    default_ctx,
    experts,
    gguf_types,
    header_bytes,
    hf_activation_bytes,
    kv_cache_bytes,
    running_memory_of_view,
    weight_sizes,
)
from .model import Hyper, ModelView, hyper_from_config, load_view, tensors_from_config, view_of_source
from .training import (
    ACTIVATION_PEAK,
    LORA_TARGETS,
    METHODS,
    NF4_BYTES,
    OPTIMIZERS,
    TRAINING_RUNTIME_BYTES,
    activation_bytes,
    default_lora_targets,
    lora_parameter_count,
    training_memory,
)


def estimate(model: str | os.PathLike, *, ctx: int | None = None, batch: int = 1, kv_type: str = "f16",
             method: str | None = None, lora_r: int = 8, lora_targets=None, seq_len: int = 512,
             train_batch: int | None = None, optimizer: str = "adamw", grad_checkpointing: bool = False,
             device: str | None = None, memory: str | int | None = None, bf16: bool | None = None) -> dict[str, Any]:
    """Memory for inference (every GGUF mix, KV cache, compute) and, with `method`, for training. JSON-able.
    `lora_targets`: module names, or None for the model family's. `bf16`: training precision, None for what
    `train` would choose (bf16 on a GPU device, else by this CPU's flags)."""
    view = load_view(model)
    return estimate_view(view, model=str(model), ctx=ctx, batch=batch, kv_type=kv_type, method=method,
                         lora_r=lora_r, lora_targets=lora_targets, seq_len=seq_len, train_batch=train_batch,
                         optimizer=optimizer, grad_checkpointing=grad_checkpointing, device=device, memory=memory,
                         bf16=bf16)


def running_memory(model: str | os.PathLike, engine: str = "llama", ctx: int | None = None, batch: int = 1,
                   kv_type: str = "F16", ftype: str | None = None) -> dict[str, Any] | None:
    """Peak resident memory of `modelport run` on `model` with `engine` ("llama" or "hf"); see `inference`."""
    return running_memory_of_view(load_view(model), engine=engine, ctx=ctx, batch=batch, kv_type=kv_type, ftype=ftype)


def estimate_view(view: ModelView, *, model: str = "", ctx: int | None = None, batch: int = 1, kv_type: str = "f16",
                  method: str | None = None, lora_r: int = 8, lora_targets=None, seq_len: int = 512,
                  train_batch: int | None = None, optimizer: str = "adamw", grad_checkpointing: bool = False,
                  device: str | None = None, memory: str | int | None = None,
                  bf16: bool | None = None) -> dict[str, Any]:
    kv_type = kv_type.upper()
    if kv_type not in KV_TYPES:
        raise UnsupportedError(f"unknown KV cache type {kv_type.lower()!r}; use one of {', '.join(t.lower() for t in KV_TYPES)}")
    if batch < 1 or (ctx is not None and ctx < 1) or seq_len < 1 or lora_r < 1:
        raise UnsupportedError("--ctx, --batch, --seq-len and --lora-r must be positive")
    dev = device_for(device, memory)
    hp = view.hyper
    sizes = weight_sizes(view)
    report: dict[str, Any] = {
        "model": model, "source": view.kind, "format": view.source_format, "file_size": view.file_size,
        "file_type": view.file_type, "parameters": view.parameter_count, "tensors": len(view.tensors),
        "hyperparameters": asdict(hp) if hp else None, "weights": sizes, "experts": experts(view, sizes),
    }
    if hp is not None:
        ctx = ctx or min(hp.n_ctx or 4096, 4096)
        kv = kv_cache_bytes(hp, ctx, batch, kv_type)
        compute = compute_buffer_bytes(hp, ctx, batch)
        runtime = RUNTIME_BYTES["llama"]
        report["inference"] = {
            "ctx": ctx, "batch": batch, "kv_type": kv_type, "kv_cache": kv, "compute_buffer": compute, "runtime": runtime,
            "total": {f: row["bytes"] + kv + compute + runtime for f, row in sizes.items()},
        }
    else:
        report["inference"] = None
    if method:
        if bf16 is None:
            bf16 = dev.kind == "gpu" if dev is not None else cpu_has_fast_bf16()
        report["training"] = training_memory(view, method, lora_r=lora_r, targets=lora_targets, seq_len=seq_len,
                                             batch=train_batch or batch, optimizer=optimizer,
                                             grad_checkpointing=grad_checkpointing, bf16=bf16)
    if dev is not None:
        need = report["inference"]["total"] if report["inference"] else {f: r["bytes"] for f, r in sizes.items()}
        fit = {f: fits(n, dev) for f, n in need.items()}
        best = next((f for f in LADDER if fit.get(f)), None)
        report["device"] = {**asdict(dev), "fits": fit, "best": best}
        if method:
            report["device"]["training_fits"] = fits(report["training"]["total"], dev)
    return report


__all__ = ["ACTIVATION_PEAK", "TRAINING_RUNTIME_BYTES", "cpu_has_fast_bf16",
           "DEVICES", "IQ_ROWS", "KV_TYPES", "LADDER",
           "QUALITY_ORDER", "LORA_TARGETS", "METHODS", "NF4_BYTES", "OPTIMIZERS", "ROWS", "RUNTIME_BYTES",
           "UBATCH", "default_ctx", "hf_activation_bytes", "running_memory", "running_memory_of_view",
           "Device", "Hyper", "ModelView", "activation_bytes", "compute_buffer_bytes", "default_lora_targets",
           "device_for", "estimate", "estimate_view", "experts", "fits", "gguf_types", "header_bytes", "hyper_from_config",
           "kv_cache_bytes", "load_view", "lora_parameter_count", "parse_memory", "tensors_from_config",
           "training_memory", "view_of_source", "weight_sizes"]
