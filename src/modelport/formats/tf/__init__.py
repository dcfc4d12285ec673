"""TensorFlow without TensorFlow: checkpoint tensor bundles, SavedModel variables, frozen GraphDefs.

Why our own code: only TensorFlow itself reads these (≈1.9 GB, and loading a SavedModel runs graph
functions); no pure-Python reader exists (docs/formats.md §4.7). One module per layer:
- `table`: the `.index` file, a LevelDB-style sorted table, and the CRC32C everything is checked with;
- `bundle`: the tensors a table describes, memory-mapped from `.data-0000i-of-0000n` shards;
- `saved_model`: SavedModel and checkpoint folders, which name a bundle;
- `graphdef`: frozen `GraphDef` `.pb` files and their `Const` nodes;
- `tensor_proto`: the shape and sub-byte rules bundles and GraphDefs share.
Protobufs go through the shared bounds-checked walker in `core.protobuf`.
Sub-byte TF dtypes (DT_INT4 …) are one byte per element, value in the low bits (docs/formats.md §0.3).
"""

from __future__ import annotations

from pathlib import Path

from ...core.source import ModelSource
from ..registry import FormatSpec
from .bundle import SHARD_RE, index_for, open_bundle
from .graphdef import looks_like_graphdef, open_graphdef
from .saved_model import detect_folder, open_folder
from .table import CRC_IMPL, TABLE_MAGIC, crc32c, crc32c_pure, has_table_magic, read_table

__all__ = ["CRC_IMPL", "FORMAT", "TABLE_MAGIC", "crc32c", "crc32c_pure", "detect", "detect_folder", "looks_like_graphdef",
           "open_bundle", "open_folder", "open_graphdef", "open_tf", "read_table"]


def detect(path: Path, head: bytes) -> bool:
    """A bundle (index or data shard), a SavedModel's `saved_model.pb`, or a file that starts like a GraphDef."""
    if SHARD_RE.match(path.name):
        return has_table_magic(index_for(path))
    if has_table_magic(path):
        return True
    if path.name in ("saved_model.pb",) and detect_folder(path.parent):
        return True
    return looks_like_graphdef(head)


def open_tf(path: Path) -> ModelSource:
    if path.is_dir():
        return open_folder(path)
    if path.name == "saved_model.pb" and detect_folder(path.parent):
        return open_folder(path.parent)
    if SHARD_RE.match(path.name) or has_table_magic(path):
        return open_bundle(path)
    return open_graphdef(path)


FORMAT = FormatSpec(
    name="tf",
    extensions=(".index", ".pb"),
    detect=detect,
    open=open_tf,
    detect_folder=detect_folder,
    description="TensorFlow checkpoint bundle, SavedModel variables, frozen GraphDef",
    options={"aliases": ("tensorflow",)},
)
