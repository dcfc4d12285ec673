"""`convert`: any source to any writer, one tensor at a time, atomically, optionally verified.

The path is always open → transforms → write: casts and dequantization are lazy `TensorRef`
wrappers, so the writer pulls one tensor at a time and peak memory stays about the largest tensor.
Aliases (tied weights, identical torch views) are stored once and recorded, as transformers does.
A sharded or folder output is built in a temporary folder and renamed into place as a whole.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .core import dtypes
from .core.atomic import atomic_dir, atomic_file
from .core.errors import CheckFailed, UnsupportedError
from .core.source import ModelSource
from .opening import open as open_model
from .core.tensor import TensorRef, cast
from .formats import registry
from .formats.registry import FormatSpec

HF_TARGETS = ("hf", "huggingface")
FOLDER_DEFAULT_SHARD = 5_000_000_000   # huggingface_hub's default max shard size (decimal units)


@dataclass
class ConvertResult:
    source: str
    output: str
    format: str
    files: list[str]
    tensors: int
    bytes_written: int
    aliases: dict[str, str] = field(default_factory=dict)
    verified: bool = False
    errors: dict[str, float] = field(default_factory=dict)   # verified lossy output: worst relative RMS error per type


def parse_size(text: str | int | None) -> int | None:
    """'5GB', '500MB', '2GiB', or a byte count -> bytes (decimal units like huggingface_hub)."""
    if text is None or isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    digits = s.rstrip("KMGTIB")
    unit = s[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        raise UnsupportedError(f"cannot read size {text!r}; use e.g. 2GB or 500MB") from None
    if unit not in units or value <= 0:
        raise UnsupportedError(f"cannot read size {text!r}; use e.g. 2GB or 500MB")
    return int(value * units[unit])


def dedupe(refs: list[TensorRef], known: dict[str, str]) -> tuple[list[TensorRef], dict[str, str]]:
    """Store each aliased tensor once: the smallest name of a group is kept, the others recorded."""
    groups: dict[object, list[TensorRef]] = {}
    for ref in refs:
        if ref.storage is not None:
            groups.setdefault(ref.storage, []).append(ref)
    aliases = dict(known)
    for group in groups.values():
        if len(group) > 1:
            kept = min(group, key=lambda r: r.name).name
            aliases.update({r.name: kept for r in group if r.name != kept})
    return [r for r in refs if r.name not in aliases], aliases


def plan_refs(source: ModelSource, dtype: dtypes.DType | None, dequantize: bool, spec: FormatSpec) -> list[TensorRef]:
    """The source's tensors after the requested transforms (still lazy)."""
    out = []
    for ref in source:
        if ref.dtype.is_quantized and (dequantize or not spec.options.get("quantized")):
            if not dequantize:
                raise UnsupportedError(f"tensor {ref.name!r} is {ref.dtype.name}-quantized and {spec.name} cannot hold it; "
                                       "add --dequantize to write float32", source.path)
            ref = ref.derive(ref.read, dtype=dtypes.F32, storage=None)
        if dtype is not None:
            ref = cast(ref, dtype)
        out.append(ref)
    return out


def split_shards(refs: list[TensorRef], max_size: int) -> list[list[TensorRef]]:
    """huggingface_hub's policy: in order, start a new shard when the next tensor would overflow it."""
    shards: list[list[TensorRef]] = [[]]
    size = 0
    for ref in refs:
        if shards[-1] and size + ref.nbytes > max_size:
            shards.append([])
            size = 0
        shards[-1].append(ref)
        size += ref.nbytes
    return shards


def _write_set(spec: FormatSpec, refs, folder: Path, single_name: str, max_size: int | None,
               metadata, aliases, progress) -> list[Path]:
    """Write `refs` into `folder` as one file or as HF-named shards with an index."""
    import json

    shards = split_shards(refs, max_size) if max_size else [refs]
    if len(shards) == 1:
        dst = folder / single_name
        spec.write(refs, dst, metadata=metadata, aliases=aliases, progress=progress)
        return [dst]
    if not spec.shard_pattern:
        raise UnsupportedError(f"{spec.name} output cannot be sharded")
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = spec.shard_pattern.format(i=i, n=len(shards))
        spec.write(shard, folder / name, metadata=metadata, aliases={}, progress=progress)
        weight_map.update({r.name: name for r in shard})
        paths.append(folder / name)
    index_meta = {"total_size": sum(r.nbytes for r in refs), "total_parameters": sum(r.numel for r in refs)}
    if aliases:  # a shard can't name a kept tensor that lives in another shard: the index records ties
        index_meta[registry.INDEX_ALIASES] = aliases
    index = {"metadata": index_meta, "weight_map": weight_map}
    index_path = folder / spec.shard_index
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*paths, index_path]


def _is_folder_target(dst: Path, source: ModelSource, to: str | None, shard_size: int | None) -> bool:
    if to in HF_TARGETS:
        return True
    if dst.suffix and not dst.is_dir():
        return False
    return source.path.is_dir() or shard_size is not None or dst.is_dir() or not dst.suffix


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, dtype: str | None = None,
            shard_size: str | int | None = None, force: bool = False, verify: bool = False,
            dequantize: bool = False, progress: Callable[[TensorRef], None] | None = None,
            quant: str | None = None, config: str | os.PathLike | None = None, trust: bool = False) -> ConvertResult:
    """Convert a model file or folder; the output format comes from `to` or the extension of `dst`.

    `quant` (a llama.cpp file type such as Q4_K_M) and `config` (an HF config.json for a bare weights file)
    apply to GGUF output, which `modelport.gguf.convert` handles for Hugging Face sources. `trust` lets a
    file the scanner finds suspicious (not dangerous) be opened."""
    src, dst = Path(src), Path(dst)
    # --- GGUF output from a Hugging Face model, or GGUF re-quantization (modelport.gguf.convert) ---
    from .gguf.convert import dispatch as _gguf_dispatch
    gguf_result = _gguf_dispatch(src, dst, to=to, quant=quant, config=config, dtype=dtype, force=force, progress=progress,
                                 verify=verify, trust=trust, shard_size=shard_size)
    if gguf_result is not None:
        return gguf_result
    # --- end of the GGUF hook ---
    target_dtype = dtypes.parse(dtype) if dtype else None
    if target_dtype is not None and not target_dtype.is_float:
        raise UnsupportedError(f"--dtype must be a float type (f32, f16, bf16), not {dtype}")
    max_size = parse_size(shard_size)
    with open_model(src, trust=trust) as source:
        if dst.resolve() == src.resolve() or dst.resolve() in {f.resolve() for f in source.files}:
            raise UnsupportedError("the output would overwrite the input", dst)
        folder = _is_folder_target(dst, source, to, max_size)
        spec = registry.get("safetensors") if folder and (to is None or to in HF_TARGETS) else registry.for_output(dst, to)
        if spec.write is None:
            raise UnsupportedError(f"modelport can read {spec.name} but not write it", dst)
        refs = plan_refs(source, target_dtype, dequantize, spec)
        refs, aliases = dedupe(refs, source.aliases)
        metadata = dict(source.metadata) if source.format == spec.name else {}
        if spec.name == "safetensors":
            metadata = {k: str(v) for k, v in metadata.items()}
            metadata.setdefault("format", "pt")
        if folder:
            with atomic_dir(dst, force) as tmp:
                single = Path(spec.shard_index).name[: -len(".index.json")] if spec.shard_index else f"model{spec.extensions[0]}"
                written = _write_set(spec, refs, tmp, single, max_size or FOLDER_DEFAULT_SHARD, metadata, aliases, progress)
                _copy_side_files(source, tmp, target_dtype)
                names = [p.name for p in written] + sorted(p.name for p in tmp.iterdir() if p not in written)
            files = [str(dst / n) for n in names]
        else:
            with atomic_file(dst, force) as tmp:
                spec.write(refs, tmp, metadata=metadata, aliases=aliases, progress=progress)
            files = [str(dst)]
        result = ConvertResult(str(src), str(dst), spec.name, files, len(refs), sum(r.nbytes for r in refs), aliases)
        if verify:
            verify_conversion(source, dst, plan_refs(source, target_dtype, dequantize, spec))
            result.verified = True
        return result


def _copy_side_files(source: ModelSource, folder: Path, target_dtype: dtypes.DType | None) -> None:
    """config, tokenizer and the other non-weight files of a HF folder go along; config records a new dtype."""
    import json

    for name, path in source.side_files.items():
        if name == "config.json" and target_dtype is not None and source.config is not None:
            config = dict(source.config)
            config["dtype"] = dtypes.HF_DTYPE_NAMES.get(target_dtype.name, config.get("dtype"))
            config.pop("torch_dtype", None)
            (folder / name).write_text(json.dumps(config, indent=2) + "\n")
        else:
            shutil.copyfile(path, folder / name)


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN payloads and signed zeros included)."""
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def verify_conversion(source: ModelSource, dst: Path, expected: list[TensorRef]) -> None:
    """Re-open the output and check every tensor against what the source gives, bit for bit."""
    with open_model(dst) as out:
        for ref in expected:
            name = ref.name if ref.name in out.tensors else out.aliases.get(ref.name)
            if name is None or name not in out.tensors:
                raise CheckFailed(f"verify: tensor {ref.name!r} is missing from the output", dst)
            got = out.tensors[name]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise CheckFailed(f"verify: tensor {ref.name!r} is {got.dtype}{list(got.shape)}, "
                                  f"expected {ref.dtype}{list(ref.shape)}", dst)
            if not same_bytes(ref.read(), got.read()):
                raise CheckFailed(f"verify: tensor {ref.name!r} differs after conversion", dst)
