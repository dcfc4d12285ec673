"""`ModelSource`: any model file, sharded set or folder as one stream of named tensors.

What every reader in `modelport.formats` returns, plus the two helpers readers share for files a
model names from inside (JSON side files, shard and external-data paths). `modelport.opening.open()`
picks the reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import FormatError
from .tensor import TensorRef

CONFIG_CAP = 16 * 1024 * 1024   # config.json larger than this is not a config
JSON_DEPTH = 100                 # nesting a model's JSON may have; Python's parser recurses once per level
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class ModelSource:
    """What `open()` returns: tensors by name, in file order, plus everything that describes them."""

    path: Path
    format: str                                   # "safetensors", "pytorch", "numpy", "gguf", ...
    tensors: dict[str, TensorRef]
    files: list[Path] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None          # config.json (or its equivalent inside the file)
    side_files: dict[str, Path] = field(default_factory=dict)  # tokenizer.json, generation_config.json, ...
    aliases: dict[str, str] = field(default_factory=dict)      # tied names dropped from the file -> kept name
    details: dict[str, Any] = field(default_factory=dict)      # format-specific facts for `inspect`
    closers: list = field(default_factory=list, repr=False)   # called by close(): unmap, release caches

    def __repr__(self) -> str:
        return (f"<ModelSource {self.format} {str(self.path)!r}: {len(self.tensors)} tensors, "
                f"{self.parameter_count:,} parameters>")

    # A mapping from tensor name to TensorRef, as a dict or safetensors' `safe_open` reads:
    # `for name in src: src[name].read()`, `len(src)`, `name in src`, `src.items()`.
    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, name: str) -> TensorRef:
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def keys(self):
        return self.tensors.keys()

    def values(self):
        return self.tensors.values()

    def items(self):
        return self.tensors.items()

    def get(self, name: str, default: TensorRef | None = None) -> TensorRef | None:
        return self.tensors.get(name, default)

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def file_size(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def close(self) -> None:
        for closer in self.closers:
            closer()
        self.closers.clear()

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def json_depth(text: str) -> int:
    """How deeply a JSON text nests its arrays and objects (strings skipped), without parsing it."""
    depth = deepest = 0
    for char in _JSON_STRING.sub("", text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_json(text: str, path: Path, what: str = "JSON", hook=None) -> Any:
    """`json.loads` for text from a model file: nesting past `JSON_DEPTH` is refused before the parser recurses
    into it, and a syntax error is a one-line `FormatError` naming the file."""
    if text.count("[") + text.count("{") > JSON_DEPTH and json_depth(text) > JSON_DEPTH:
        raise FormatError(f"{what} nests deeper than {JSON_DEPTH} levels", path)
    try:
        return json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc.msg} at {exc.pos})", path) from None


def read_json(path: Path, cap: int = CONFIG_CAP) -> Any:
    """A JSON side file, size-capped, parsed as data only; duplicate keys rejected."""
    size = path.stat().st_size
    if size > cap:
        raise FormatError(f"{size} bytes is too large for a JSON file here (cap {cap})", path)

    def no_duplicates(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise FormatError(f"duplicate key {key!r}", path)
            obj[key] = value
        return obj

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not valid JSON ({exc})", path) from None
    return loads_json(text, path, "the file", no_duplicates)


def safe_member(folder: Path, name: str, what: str) -> Path:
    """Resolve a file name taken from inside a model (shard index, external data) within `folder`.

    No absolute paths, no drive letters, no `..`, no symlinks: a model may only point at its own files.
    The one exception is a Hugging Face cache snapshot's link into its own repo's blobs (`cache_link`).
    """
    pure = name.replace("\\", "/")
    parts = pure.split("/")
    if pure.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts or "" in parts:
        raise FormatError(f"{what} {name!r} points outside the model folder", folder)
    path = folder.joinpath(*parts)
    if path.is_symlink() and not cache_link(path):
        raise FormatError(f"{what} {name!r} is a symbolic link; refused", folder)
    return path


def own_file(path: Path) -> bool:
    """A regular file a model folder may use: not a link, or a Hugging Face cache link into its own repo."""
    return path.is_file() and (not path.is_symlink() or cache_link(path))


def cache_link(path: Path) -> bool:
    """Whether `path` is a Hugging Face cache snapshot link that stays inside its own repo folder.

    The cache keeps every file of `models--org--name/snapshots/<rev>/` as a link to
    `models--org--name/blobs/<sha>`. Following such a link reads only what was downloaded with that
    same repo, the model's own files; a link that leaves the repo folder could read anything the
    user can (and a converter would copy it into its output), so it stays refused.
    """
    if not path.is_symlink():
        return False
    parts = path.parent.resolve().parts
    for i in range(len(parts) - 3, -1, -1):   # .../models--org--name/snapshots/<rev>[/sub...]
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            repo = Path(*parts[: i + 1])
            break
    else:
        return False
    try:
        return path.resolve(strict=True).is_relative_to(repo)
    except (OSError, RuntimeError):   # dangling or looping link
        return False


def tensor_list(tensors: ModelSource | Iterable[TensorRef]) -> list[TensorRef]:
    """What a writer takes: an opened source (its TensorRefs, in order) or any iterable of TensorRefs."""
    return list(tensors.values()) if isinstance(tensors, ModelSource) else list(tensors)
