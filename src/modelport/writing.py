"""Writing a set of tensors: one file, or Hugging Face-named shards with an index, atomically, verified.

Every output goes through here: `modelport.save()`, the conversion routes and the GGUF → HF export.
The writer pulls one lazy `TensorRef` at a time, so peak memory stays about the largest tensor. A file
is written under a temporary name and renamed; a folder (shards, side files) is built as a temporary
folder and renamed as a whole. Aliases (tied weights, identical torch views) are stored once and
recorded, as transformers does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.atomic import atomic_dir, atomic_file, atomic_files
from .core.dtypes import from_numpy
from .core.errors import CheckFailed, UnsupportedError
from .core.sizes import parse_size
from .core.tensor import TensorRef
from .formats import registry
from .formats.gguf import DEFAULT_ALIGNMENT, split_path, write_gguf
from .formats.registry import FormatSpec
from .opening import open as open_model

FOLDER_DEFAULT_SHARD = 5_000_000_000   # huggingface_hub's default max shard size (decimal units)

Progress = Callable[[TensorRef], None]


def report_phase(progress: Progress | None, name: str, total: int | None = None) -> None:
    """Tell `progress` what comes next ("writing", "quantizing", "verifying") and how many calls it will get
    (None: unknown), when it has a `phase(name, total)` method; a plain callable is only called per tensor."""
    phase = getattr(progress, "phase", None)
    if phase is not None:
        phase(name, total)


#: Extensions that say "binary data", not a format: `--to` may write any format under them.
GENERIC_SUFFIXES = (".bin", ".pb")


@dataclass
class ConvertResult:
    """What a write or conversion produced (the CLI prints it, `--json` dumps it)."""
    source: str
    output: str
    format: str
    files: list[str]
    tensors: int
    bytes_written: int
    aliases: dict[str, str] = field(default_factory=dict)
    verified: bool = False
    errors: dict[str, float] = field(default_factory=dict)   # verified lossy output: worst relative RMS error per type
    details: dict = field(default_factory=dict)              # what a route adds (ONNX: verify numbers, peak memory)


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


def single_file_name(spec: FormatSpec) -> str:
    """The name of an unsharded weights file inside a folder: `model.safetensors`, `model.pt`, ..."""
    if spec.shard_index:
        return Path(spec.shard_index).name[: -len(".index.json")]
    return f"model{spec.extensions[0]}"


def write_set(spec: FormatSpec, refs: list[TensorRef], folder: Path, max_size: int | None, *,
              metadata: dict | None = None, aliases: dict[str, str] | None = None,
              progress: Progress | None = None) -> list[Path]:
    """Write `refs` into an existing `folder` as one file or as HF-named shards with an index."""
    metadata, aliases = metadata or {}, aliases or {}
    shards = split_shards(refs, max_size) if max_size else [refs]
    if len(shards) == 1:
        dst = folder / single_file_name(spec)
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


def check_output_name(dst: Path, format_name: str) -> None:
    """The written format must be the one the output's name says: no GGUF named `.safetensors`, no `.npz`
    zip named `.npy` (a `.npy` file holds one bare array; modelport writes NumPy as `.npz`)."""
    suffix = dst.suffix.lower()
    if suffix in GENERIC_SUFFIXES:
        return
    named = [spec.name for spec in registry.formats() if suffix in spec.extensions]
    if named and format_name not in named:
        raise UnsupportedError(f"the name says {named[0]} but the output would be {format_name}; "
                               f"name it {dst.stem}{registry.get(format_name).extensions[0]}", dst)
    if suffix == ".npy":
        raise UnsupportedError(f"a .npy file holds one bare array; modelport writes NumPy as .npz: name it "
                               f"{dst.stem}.npz", dst)


def write_tensors(refs: list[TensorRef], dst: Path, spec: FormatSpec, *, folder: bool = False,
                  max_size: int | None = None, metadata: dict | None = None, aliases: dict[str, str] | None = None,
                  force: bool = False, progress: Progress | None = None,
                  fill_folder: Callable[[Path], None] | None = None) -> list[str]:
    """Write `refs` atomically to the file `dst`, or to the folder `dst` (shards + index, then `fill_folder`
    adds side files). Returns the written paths, weights first."""
    report_phase(progress, "writing", len(refs))
    if folder:
        with atomic_dir(dst, force) as tmp:
            written = write_set(spec, refs, tmp, max_size or FOLDER_DEFAULT_SHARD, metadata=metadata,
                                aliases=aliases, progress=progress)
            if fill_folder is not None:
                fill_folder(tmp)
            names = [p.name for p in written] + sorted(p.name for p in tmp.iterdir() if p not in written)
        return [str(dst / n) for n in names]
    if max_size is not None:
        raise UnsupportedError("--shard-size needs a folder output (a DST without extension, or --to hf)", dst)
    check_output_name(dst, spec.name)
    with atomic_file(dst, force) as tmp:
        spec.write(refs, tmp, metadata=metadata or {}, aliases=aliases or {}, progress=progress)
    return [str(dst)]


@dataclass(frozen=True)
class GgufSplit:
    """`--split-max-size` / `--split-max-tensors`: how a GGUF output is cut into llama.cpp's split files."""
    max_size: int | None = None       # bytes of (padded) tensor data per file, as gguf-split counts them
    max_tensors: int | None = None

    @classmethod
    def parse(cls, max_size: str | int | None, max_tensors: int | None) -> GgufSplit | None:
        size = parse_size(max_size)
        if max_tensors is not None and max_tensors < 1:
            raise UnsupportedError(f"--split-max-tensors must be at least 1, not {max_tensors}")
        return None if size is None and max_tensors is None else cls(size, max_tensors)


def plan_gguf_split(refs: list[TensorRef], split: GgufSplit) -> list[list[TensorRef]]:
    """gguf-split's cut, in tensor order: a new file when the next tensor would take the file past `max_size`
    (data padded to 32 bytes) or past `max_tensors`. A tensor larger than `max_size` gets a file of its own
    (gguf-split stops there with an error)."""
    parts: list[list[TensorRef]] = [[]]
    size = 0
    for ref in refs:
        padded = -(-ref.nbytes // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
        full = (split.max_size is not None and size + padded > split.max_size) or \
               (split.max_tensors is not None and len(parts[-1]) >= split.max_tensors)
        if parts[-1] and full:
            parts.append([])
            size = 0
        parts[-1].append(ref)
        size += padded
    return parts


def gguf_split_paths(dst: Path, count: int) -> list[Path]:
    """`out.gguf` cut in 3: out-00001-of-00003.gguf, ... (llama.cpp's names, beside `dst`)."""
    prefix = dst.with_suffix("") if dst.suffix.lower() == ".gguf" else dst
    return [split_path(prefix, i, count) for i in range(count)]


def write_gguf_output(refs: list[TensorRef], dst: Path, metadata: dict, *, force: bool = False,
                      progress: Progress | None = None, split: GgufSplit | None = None,
                      check: Callable[[Path], object] | None = None) -> list[Path]:
    """Write a GGUF atomically: one file, or with `split` a llama.cpp split set (`dst`'s stem + `-00001-of-0000N`;
    one part is written as the single file `dst`). `check(path)` runs on the finished output before it
    takes its final name (the first part for a set: opening it opens the set). Returns the files written."""
    check_output_name(dst, "gguf")
    parts = plan_gguf_split(refs, split) if split is not None else [refs]
    if len(parts) == 1:
        with atomic_file(dst, force) as tmp:
            write_gguf(refs, tmp, metadata=metadata, progress=progress)
            if check is not None:
                check(tmp)
        return [dst]
    paths = gguf_split_paths(dst, len(parts))
    with atomic_files(paths, force) as folder:
        for i, (part, path) in enumerate(zip(parts, paths)):
            write_gguf(part, folder / path.name, metadata=metadata, progress=progress,
                       split=(i, len(parts), len(refs)))
        if check is not None:
            check(folder / paths[0].name)
    return paths


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (NaN payloads and signed zeros included)."""
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def verify_written(dst: Path, expected: list[TensorRef], progress: Progress | None = None) -> None:
    """Re-open the output and check every tensor against what it was written from, bit for bit
    (`progress` is called after each)."""
    report_phase(progress, "verifying", len(expected))
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
            if progress is not None:
                progress(ref)


def as_refs(tensors: Mapping[str, object] | Iterable[TensorRef]) -> list[TensorRef]:
    """Arrays (NumPy, or anything `np.asarray` takes) or TensorRefs, by name, as lazy refs."""
    if not isinstance(tensors, Mapping):
        return list(tensors)
    refs = []
    for name, value in tensors.items():
        if isinstance(value, TensorRef):
            refs.append(value if value.name == name else value.derive(value.read, name=name))
            continue
        array = np.asarray(value)
        if from_numpy(array.dtype) is None:
            raise UnsupportedError(f"tensor {name!r}: NumPy dtype {array.dtype} is not a tensor type modelport writes")
        refs.append(TensorRef(name, from_numpy(array.dtype), tuple(array.shape), loader=lambda a=array: a))
    return refs


def save(tensors: Mapping[str, object] | Iterable[TensorRef], path: str | os.PathLike, *, format: str | None = None,  # noqa: A002
         shard_size: str | int | None = None, metadata: dict | None = None, force: bool = False,
         verify: bool = False) -> ConvertResult:
    """Write named tensors to `path`: the format from `format` or the extension; a path without one is a
    folder of safetensors (sharded at `shard_size`, with an index), as `save_pretrained` writes."""
    path = Path(path)
    max_size = parse_size(shard_size)
    folder = not path.suffix and format is None
    spec = registry.get("safetensors") if folder else registry.for_output(path, format)
    refs, aliases = dedupe(as_refs(tensors), {})
    meta = dict(metadata or {})
    if spec.name == "safetensors":
        meta = {k: str(v) for k, v in meta.items()}
    files = write_tensors(refs, path, spec, folder=folder, max_size=max_size, metadata=meta, aliases=aliases,
                          force=force)
    result = ConvertResult("<tensors>", str(path), spec.name, files, len(refs), sum(r.nbytes for r in refs), aliases)
    if verify:
        verify_written(path, refs)
        result.verified = True
    return result
