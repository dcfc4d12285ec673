"""The format registry: which reader opens a file, which writer makes one.

Each format module defines `FORMAT = FormatSpec(...)`. Detection looks at the first bytes of a
file (and at zip member names, JSON keys, ... where a magic number is not enough); the extension
only chooses the writer for an output path.
"""

from __future__ import annotations

import contextlib
import importlib
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.errors import FormatError, ModelportError, UnsupportedError
from ..core.source import ModelSource, cache_link, own_file, read_json, safe_member
from ..core.tensor import TensorRef

HEAD_BYTES = 4096

# Module names under modelport.formats, in detection order (specific signatures first).
_MODULES = ("gguf", "safetensors", "torch", "numpy", "hdf5", "tflite", "tf", "onnx", "flax")

Writer = Callable[..., None]


@dataclass(frozen=True)
class FormatSpec:
    name: str                                   # "safetensors", "pytorch", ...
    extensions: tuple[str, ...]                 # for choosing a writer by output name; ".pt", ...
    detect: Callable[[Path, bytes], bool]       # (path, first bytes) -> is it mine?
    open: Callable[[Path], ModelSource]
    write: Writer | None = None                 # write(tensors, dst, metadata=..., aliases=...)
    detect_folder: Callable[[Path], bool] | None = None  # formats that are a folder (TF SavedModel)
    shard_index: str | None = None              # HF index name when the format shards: "model.safetensors.index.json"
    shard_pattern: str | None = None            # "model-{i:05d}-of-{n:05d}.safetensors"
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    errors: tuple[type[Exception], ...] = ()    # what the format's parsing library raises on a damaged file (h5py…)


_specs: list[FormatSpec] | None = None


def formats() -> list[FormatSpec]:
    global _specs
    if _specs is None:
        _specs = [importlib.import_module(f"modelport.formats.{name}").FORMAT for name in _MODULES]
    return _specs


def get(name: str) -> FormatSpec:
    for spec in formats():
        if spec.name == name or name in spec.options.get("aliases", ()):
            return spec
    raise UnsupportedError(f"unknown format {name!r}; known: {', '.join(s.name for s in formats())}")


def for_output(path: Path, to: str | None = None) -> FormatSpec:
    """The writer for an output path: `--to` if given, else the extension."""
    if to:
        spec = get(to)
    else:
        suffix = "".join(path.suffixes[-1:]).lower()
        matches = [s for s in formats() if suffix in s.extensions]
        if not matches:
            known = ", ".join(sorted({e for s in formats() if s.write for e in s.extensions}))
            raise UnsupportedError(f"cannot tell the output format from {path.name!r}; use --to or one of {known}", path)
        spec = matches[0]
    if spec.write is None:
        raise UnsupportedError(f"modelport can read {spec.name} but not write it", path)
    return spec


def detect(path: Path) -> FormatSpec:
    try:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise ModelportError(f"cannot read: {exc.strerror}", path) from None
    if not head:
        raise FormatError("empty file", path)
    for spec in formats():
        if spec.detect(path, head):
            return spec
    if path.name.endswith(".index.json"):
        return _INDEX
    if head.startswith(b"PK\x03\x04") and zip_names(path) is None:
        raise FormatError("a zip archive whose central directory cannot be read (damaged or truncated)", path)
    raise FormatError(f"not a model file modelport knows (starts with {head[:8].hex(' ')})", path)


# --- the error boundary -------------------------------------------------------------------

# What parsing damaged bytes raises in any reader: the standard library's zip, zlib and struct, file reads past a
# damaged offset, NumPy given sizes that disagree (ValueError), text that is not UTF-8 (a ValueError too).
DAMAGED = (OSError, EOFError, ValueError, OverflowError, struct.error, zlib.error, zipfile.BadZipFile,
           zipfile.LargeZipFile)
MESSAGE_CAP = 200
# What Python's zipfile raises on a damaged archive while reading its central directory: besides BadZipFile, a
# version field past 6.3 is NotImplementedError("zip file version 10.9"), and damaged counts and offsets surface
# as struct, index, key and overflow errors.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
              NotImplementedError, KeyError, IndexError, OverflowError)


def zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive that Python's zipfile reads, or None: what detection looks at. A damaged
    archive matches no zip-based format (and gets the registry's "not a model file" error, never a traceback)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except ZIP_ERRORS:
        return None


@contextlib.contextmanager
def boundary(spec: FormatSpec, path: Path, what: str = "") -> Iterator[None]:
    """The one place a reader's library errors become a one-line `FormatError` naming the file.

    Readers raise `ModelportError`s for what they check; what they do not anticipate in a damaged file surfaces
    as the exceptions in `DAMAGED` plus the format's own `FormatSpec.errors`, here, whether while opening or
    later while a tensor is read. Anything else (a TypeError, a MemoryError) stays a bug to fix at its cause."""
    try:
        yield
    except ModelportError:
        raise
    except (*DAMAGED, *spec.errors) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if len(text) > MESSAGE_CAP:
            text = text[:MESSAGE_CAP] + "…"
        raise FormatError(f"damaged or truncated {spec.name} file: {what}{text} ({type(exc).__name__})", path) from None


def _bounded_loader(spec: FormatSpec, path: Path, ref: TensorRef, load: Callable) -> Callable:
    def read():
        with boundary(spec, Path(ref.file) if ref.file else path, f"tensor {ref.name!r}: "):
            return load()
    return read


def open_with(spec: FormatSpec, path: Path) -> ModelSource:
    """`spec.open(path)` inside the format's error boundary, and every tensor's read inside it too."""
    with boundary(spec, path):
        source = spec.open(path)
    for ref in source.tensors.values():
        ref.loader = _bounded_loader(spec, path, ref, ref.loader)
        if ref.raw_loader is not None:
            ref.raw_loader = _bounded_loader(spec, path, ref, ref.raw_loader)
    return source


def open_file(path: Path, format: str | None = None) -> ModelSource:
    spec = get(format) if format else detect(path)
    return open_with(spec, path)


# --- sharded sets -------------------------------------------------------------------------

INDEX_CAP = 10 * 1024 * 1024
INDEX_ALIASES = "modelport_aliases"   # index metadata key: tied names dropped from the shards -> kept name


def open_index(index_path: Path) -> ModelSource:
    """A sharded checkpoint from its HF index (`*.index.json`), checked like huggingface_hub does."""
    index = read_json(index_path, INDEX_CAP)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError("not a shard index: no 'weight_map' of tensor name -> file name", index_path)
    ext = index_path.name[: -len(".index.json")].rsplit(".", 1)[-1]
    shard_names = list(dict.fromkeys(weight_map.values()))
    shards = []
    for name in shard_names:
        shard = safe_member(index_path.parent, name, "shard")
        if not name.endswith("." + ext):
            raise FormatError(f"shard {name!r} does not have the index's extension .{ext}", index_path)
        if not shard.is_file():
            raise FormatError(f"shard {name!r} named in the index is missing", index_path)
        shards.append(open_file(shard))
    source = merge(index_path, shards)
    index_meta = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
    ties = index_meta.pop(INDEX_ALIASES, {})
    if isinstance(ties, dict):
        source.aliases.update({str(k): str(v) for k, v in ties.items() if v in source.tensors})
    missing = [n for n, f in weight_map.items() if n not in source.tensors and n not in source.aliases]
    if missing:
        raise FormatError(f"the index lists {len(missing)} tensor(s) its shards lack, e.g. {missing[0]!r}", index_path)
    source.details["shards"] = len(shards)
    source.details["index"] = index_meta
    return source


def merge(path: Path, sources: list[ModelSource]) -> ModelSource:
    """Several files of one model as one source; a tensor name may appear only once."""
    if len(sources) == 1:
        return sources[0]
    tensors: dict[str, TensorRef] = {}
    for src in sources:
        for name, ref in src.tensors.items():
            if name in tensors:
                raise FormatError(f"tensor {name!r} appears in more than one file ({ref.file})", path)
            tensors[name] = ref
    first = sources[0]
    merged = ModelSource(path=path, format=first.format, tensors=tensors,
                         files=[f for s in sources for f in s.files],
                         metadata=dict(first.metadata),
                         aliases={k: v for s in sources for k, v in s.aliases.items()},
                         details=dict(first.details))
    merged.closers = [s.close for s in sources]
    return merged


_INDEX = FormatSpec("index", (".json",), lambda p, h: False, open_index, description="HF shard index")


# --- folders ------------------------------------------------------------------------------

# Weight files of a HF folder, in the order transformers prefers them.
_PREFERRED = ("model.safetensors.index.json", "model.safetensors",
              "pytorch_model.bin.index.json", "pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".gguf", ".onnx",
                    ".h5", ".hdf5", ".keras", ".msgpack", ".tflite", ".pb")


def weight_files(folder: Path) -> list[Path]:
    """The files in `folder` that hold the model's weights (an index counts as the whole set)."""
    for name in _PREFERRED:
        if (folder / name).is_file():
            return [folder / name]
    indexes = sorted(folder.glob("*.index.json"))
    if indexes:
        return indexes[:1]
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _WEIGHT_SUFFIXES)


SIDE_FILES_CAP = 1000   # files kept beside the weights; a folder with more is not one model's folder
SIDE_DEPTH = 2          # sentence-transformers' 1_Pooling/config.json, 2_Dense/… sit one level down


def side_files(folder: Path, used: set[Path]) -> dict[str, Path]:
    """Everything in a model folder that is not its weights, by path relative to the folder ('1_Pooling/config.json'):
    config, tokenizer, and the side folders a sentence-transformers model lists in modules.json. Hidden files and
    links are left out, except a Hugging Face cache snapshot's links into its own repo (`cache_link`)."""
    found: dict[str, Path] = {}

    def walk(directory: Path, prefix: str, depth: int) -> None:
        for p in sorted(directory.iterdir()):
            if p.name.startswith(".") or (p.is_symlink() and not cache_link(p)):
                continue
            if p.is_dir() and depth < SIDE_DEPTH:
                walk(p, f"{prefix}{p.name}/", depth + 1)
            elif own_file(p) and p.resolve() not in used:
                if len(found) >= SIDE_FILES_CAP:
                    raise FormatError(f"more than {SIDE_FILES_CAP} files beside the weights; open the weights file itself",
                                      folder)
                found[prefix + p.name] = p

    walk(folder, "", 1)
    return found


def open_folder(folder: Path) -> ModelSource:
    for spec in formats():
        if spec.detect_folder and spec.detect_folder(folder):
            return open_with(spec, folder)
    files = weight_files(folder)
    if not files:
        raise FormatError("no model weights in this folder (looked for *.safetensors, *.bin, *.gguf, ...)", folder)
    if files[0].name.endswith(".index.json"):
        source = open_index(files[0])
    else:
        if len(files) > 1 and all(f.suffix.lower() == ".gguf" for f in files):
            raise FormatError(f"{len(files)} GGUF files ({', '.join(f.name for f in files[:4])}"
                              f"{', …' if len(files) > 4 else ''}): each is a whole model; open one of them", folder)
        sources = [open_file(f) for f in files]
        kinds = {s.format for s in sources}
        if len(kinds) > 1:
            for s in sources:
                s.close()
            raise FormatError(f"weights in several formats ({', '.join(sorted(kinds))}); open one file directly", folder)
        source = merge(folder, sources)
    source.path = folder
    used = {f.resolve() for f in source.files} | {f.resolve() for f in files}
    source.side_files = side_files(folder, used)
    if "config.json" in source.side_files and source.config is None:
        source.config = read_json(source.side_files["config.json"])
    return source
