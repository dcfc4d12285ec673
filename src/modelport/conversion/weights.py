"""Weights → weights: any readable format to any writer, tensor by tensor (the route every other one falls to).

Casts and dequantization are lazy `TensorRef` wrappers, so the writer pulls one tensor at a time. An HF
folder source keeps its config, tokenizer and other side files in a folder output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..core import dtypes
from ..core.errors import UnsupportedError
from ..core.sizes import parse_size
from ..core.source import ModelSource
from ..core.tensor import TensorRef, cast
from ..formats import registry
from ..formats.registry import FormatSpec
from ..writing import ConvertResult, dedupe, report_phase, verify_written, write_gguf_output, write_tensors
from .route import HF_TARGETS, Request


def plan_refs(source: ModelSource, dtype: dtypes.DType | None, dequantize: bool, spec: FormatSpec) -> list[TensorRef]:
    """The source's tensors after the requested transforms (still lazy)."""
    out = []
    for ref in source.values():
        if ref.dtype.is_quantized and (dequantize or not spec.options.get("quantized")):
            if not dequantize:
                raise UnsupportedError(f"tensor {ref.name!r} is {ref.dtype.name}-quantized and {spec.name} cannot hold it; "
                                       "add --dequantize to write float32", source.path)
            ref = ref.derive(ref.read, dtype=dtypes.F32, storage=None)
        if dtype is not None:
            ref = cast(ref, dtype)
        out.append(ref)
    return out


def is_folder_target(dst: Path, source: ModelSource, to: str | None, shard_size: int | None) -> bool:
    if to in HF_TARGETS:
        return True
    if dst.suffix and not dst.is_dir():
        return False
    return source.path.is_dir() or shard_size is not None or dst.is_dir() or not dst.suffix


def copy_side_files(source: ModelSource, folder: Path, target_dtype: dtypes.DType | None) -> None:
    """config, tokenizer and the other non-weight files of a HF folder go along; config records a new dtype."""
    for name, path in source.side_files.items():
        if name == "config.json" and target_dtype is not None and source.config is not None:
            config = dict(source.config)
            config["dtype"] = dtypes.HF_DTYPE_NAMES.get(target_dtype.name, config.get("dtype"))
            config.pop("torch_dtype", None)
            (folder / name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)    # side folders: 1_Pooling/config.json
            shutil.copyfile(path, folder / name)


class WeightsRoute:
    name = "weights"

    def matches(self, source: ModelSource, request: Request) -> bool:
        return True

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        dst = request.dst
        if not request.wants_gguf and (request.quant is not None or request.config is not None):
            raise UnsupportedError("--quant and --config apply to GGUF output (give DST a .gguf extension or --to gguf)", dst)
        target_dtype = dtypes.parse(request.dtype) if request.dtype else None
        if target_dtype is not None and not target_dtype.is_float:
            raise UnsupportedError(f"--dtype must be a float type (f32, f16, bf16), not {request.dtype}")
        max_size = parse_size(request.shard_size)
        folder = is_folder_target(dst, source, request.to, max_size)
        to = request.to
        spec = registry.get("safetensors") if folder and (to is None or to in HF_TARGETS) else registry.for_output(dst, to)
        refs = plan_refs(source, target_dtype, request.dequantize, spec)
        refs, aliases = dedupe(refs, source.aliases)
        metadata = dict(source.metadata) if source.format == spec.name else {}
        if spec.name == "safetensors":
            metadata = {k: str(v) for k, v in metadata.items()}
            metadata.setdefault("format", "pt")
        if request.split is not None and spec.name == "gguf" and not folder:   # a GGUF cut into llama.cpp's split files
            report_phase(request.progress, "writing", len(refs))
            files = [str(p) for p in write_gguf_output(refs, dst, metadata, force=request.force,
                                                       progress=request.progress, split=request.split)]
        else:
            files = write_tensors(refs, dst, spec, folder=folder, max_size=max_size, metadata=metadata,
                                  aliases=aliases, force=request.force, progress=request.progress,
                                  fill_folder=lambda tmp: copy_side_files(source, tmp, target_dtype))
        output = files[0] if request.split else str(dst)      # a split set is named by its first part
        result = ConvertResult(str(source.path), output, spec.name, files, len(refs), sum(r.nbytes for r in refs),
                               aliases)
        if request.verify:
            written = Path(files[0]) if request.split else dst
            verify_written(written, plan_refs(source, target_dtype, request.dequantize, spec), request.progress)
            result.verified = True
        return result
