"""`inspect`: what a model file or folder holds, from headers only.

Everything here comes from shapes, dtypes and config: no tensor data is read, so inspecting a
10 GB file takes as long as reading its header.
"""

from __future__ import annotations

import os
from typing import Any

from .core.dtypes import DTYPES
from .core.source import ModelSource
from .opening import open as open_model

# The guide's "how big at each precision" table. Like llama.cpp, 1-D tensors (norms, biases) stay
# F32 in the quantized columns and a matrix is quantized only when its rows split into whole blocks.
PRECISIONS = ("F32", "F16", "BF16", "Q8_0", "Q4_0")

CONFIG_FIELDS = {
    "architecture": ("architectures", "model_type"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "attention_heads": ("num_attention_heads", "n_head"),
    "kv_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner"),
    "vocab_size": ("vocab_size",),
    "context_length": ("max_position_embeddings", "n_positions", "max_sequence_length"),
    "dtype": ("dtype", "torch_dtype"),
}


def weights_size(source: ModelSource, precision: str) -> int:
    dtype = DTYPES[precision]
    total = 0
    for ref in source.values():
        if dtype.is_quantized and (len(ref.shape) < 2 or ref.shape[-1] % dtype.block_size):
            total += DTYPES["F32"].nbytes(ref.numel) if ref.dtype.is_float or ref.dtype.is_quantized else ref.nbytes
        elif ref.dtype.is_float or ref.dtype.is_quantized:
            total += dtype.nbytes(ref.numel)
        else:
            total += ref.nbytes  # integer and bool tensors keep their type
    return total


def config_summary(config: dict | None) -> dict[str, Any]:
    if not config:
        return {}
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    out = {}
    for key, names in CONFIG_FIELDS.items():
        for name in names:
            value = config.get(name, text.get(name))
            if value is not None:
                out[key] = value[0] if key == "architecture" and isinstance(value, list) and value else value
                break
    if "kv_heads" not in out and "attention_heads" in out:
        out["kv_heads"] = out["attention_heads"]
    return out


def inspect(path: str | os.PathLike, *, tensors: bool = False, trust: bool = False) -> dict[str, Any]:
    """A JSON-able description of a model: format, files, counts, dtypes, config, sizes per precision."""
    with open_model(path, trust=trust) as source:
        by_dtype: dict[str, dict[str, int]] = {}
        for ref in source.values():
            row = by_dtype.setdefault(ref.dtype.name, {"tensors": 0, "parameters": 0, "bytes": 0})
            row["tensors"] += 1
            row["parameters"] += ref.numel
            row["bytes"] += ref.nbytes
        report: dict[str, Any] = {
            "path": str(source.path),
            "format": source.format,
            "files": [{"name": f.name, "bytes": f.stat().st_size} for f in source.files],
            "file_size": source.file_size,
            "tensor_count": len(source),
            "parameter_count": source.parameter_count,
            "dtypes": by_dtype,
            "aliases": source.aliases,
            "metadata": source.metadata,
            "config": config_summary(source.config),
            "side_files": sorted(source.side_files),
            "memory": {p: weights_size(source, p) for p in PRECISIONS},
            "details": source.details,
        }
        if tensors:
            report["tensors"] = [
                {"name": r.name, "dtype": r.dtype.name, "shape": list(r.shape), "parameters": r.numel, "bytes": r.nbytes,
                 **({"offset": r.offset} if r.offset is not None else {})}
                for r in source.values()
            ]
        return report
