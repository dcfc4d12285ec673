"""TF checkpoint tensor bundles: the `.index` table and its `.data-0000i-of-0000n` shards.

The table holds a `BundleHeaderProto` (under the empty key) and one `BundleEntryProto` per tensor;
data is a memory-map view of its shard, checked against the entry's CRC32C on read. Partitioned
variables (slices stored under OrderedCode keys, as TF's shard-size policy writes them) are reassembled.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np

from ...core import dtypes
from ...core import protobuf as pb
from ...core.errors import require
from ...core.source import ModelSource
from ...core.tensor import TensorRef
from .table import CRC_IMPL, crc32c, read_table, unmask
from .tensor_proto import keep_low_bits, read_shape

MAX_SHARDS = 100_000
VAR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
DT_STRING, DT_RESOURCE, DT_VARIANT = 7, 20, 21
SHARD_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def _entry(value: bytes, path: Path, what: str) -> dict:
    e = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": None, "slices": []}
    for num, wire, a, b in pb.fields(value, 0, len(value), path):
        if num == 1 and wire == pb.VARINT:
            e["dtype"] = a
        elif num == 2 and wire == pb.LEN:
            e["shape"] = read_shape(value, a, b, path, what)
        elif num == 3 and wire == pb.VARINT:
            e["shard"] = pb.signed(a)
        elif num == 4 and wire == pb.VARINT:
            e["offset"] = pb.signed(a)
        elif num == 5 and wire == pb.VARINT:
            e["size"] = pb.signed(a)
        elif num == 6 and wire == pb.I32:
            e["crc"] = struct.unpack_from("<I", value, a)[0]
        elif num == 7 and wire == pb.LEN:  # TensorSliceProto: extent {start, length (absent = whole dim)}
            extents = []
            for n2, w2, x, y in pb.fields(value, a, b, path):
                if n2 == 1 and w2 == pb.LEN:
                    start, length = 0, -1
                    for n3, w3, v, _ in pb.fields(value, x, y, path):
                        if n3 == 1 and w3 == pb.VARINT:
                            start = pb.signed(v)
                        elif n3 == 2 and w3 == pb.VARINT:
                            length = pb.signed(v)
                    extents.append((start, length))
            e["slices"].append(tuple(extents))
    return e


def _bundle_loader(state: dict, shard: Path, name: str, dtype: dtypes.DType, shape, start: int, size: int,
                   crc: int | None, big: bool):
    def load() -> np.ndarray:
        maps = state.setdefault("maps", {})
        if shard not in maps:
            maps[shard] = np.memmap(shard, dtype=np.uint8, mode="r")
        raw = maps[shard][start:start + size]
        if crc is not None and state.get("verify", True):
            require(crc32c(raw) == unmask(crc), f"tensor {name!r}: CRC32C of its data does not match the index", shard)
        arr = raw.view(dtype.numpy.newbyteorder(">") if big and dtype.numpy.itemsize > 1 else dtype.numpy).reshape(shape)
        if big and dtype.numpy.itemsize > 1:
            arr = arr.astype(dtype.numpy)
        return keep_low_bits(arr, dtype)
    return load


def _slice_key_name(key: bytes) -> str | None:
    """The tensor name inside a slice key (TF OrderedCode: 0, escaped name ending 00 01, dims, extents)."""
    if not key.startswith(b"\x00"):
        return None
    out, i = bytearray(), 1
    while i + 1 < len(key):
        b = key[i]
        if b == 0x00:
            if key[i + 1] == 0x01:
                return out.decode("utf-8", "replace")
            if key[i + 1] != 0xFF:
                return None
            out.append(0x00)
            i += 2
        elif b == 0xFF:
            if key[i + 1] != 0x00:
                return None
            out.append(0xFF)
            i += 2
        else:
            out.append(b)
            i += 1
    return None


def _sliced_loader(parts: list, dtype: dtypes.DType, shape):
    """A partitioned variable: each slice is read (CRC-checked) and copied into place."""
    def load() -> np.ndarray:
        out = np.zeros(shape, dtype.numpy)
        for index, part in parts:
            out[index] = part()
        return out
    return load


def index_for(path: Path) -> Path:
    """The `.index` file of a bundle, given its index or one of its data shards."""
    m = SHARD_RE.match(path.name)
    if m:
        return path.with_name(m["prefix"] + ".index")
    return path


def open_bundle(path: Path) -> ModelSource:
    """A bundle, from its `.index` file or any of its data shards; tensors are read (CRC-checked) on demand."""
    index = index_for(path)
    require(index.is_file(), f"no {index.name} beside this data shard", path)
    table = read_table(index)
    require(table and table[0][0] == b"", "the table has no bundle header (empty key) first", index)
    num_shards, endian = 1, 0
    for num, wire, a, _ in pb.fields(table[0][1], 0, len(table[0][1]), index):
        if num == 1 and wire == pb.VARINT:
            num_shards = pb.signed(a)
        elif num == 2 and wire == pb.VARINT:
            endian = a
    require(1 <= num_shards <= MAX_SHARDS, f"bundle header claims {num_shards} shards", index)
    require(endian in (0, 1), f"bundle header has unknown endianness {endian}", index)
    prefix = index.name[: -len(".index")] if index.name.endswith(".index") else index.name
    shard_paths = [index.with_name(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    shard_sizes: dict[int, int] = {}
    state: dict = {}
    tensors: dict[str, TensorRef] = {}
    skipped: dict[str, list] = {}
    slice_entries: dict[str, list] = {}
    for key, value in table[1:]:
        base = _slice_key_name(key)
        if base is not None:  # sorted keys: a tensor's slices come in increasing (start, length) order
            slice_entries.setdefault(base, []).append(_entry(value, index, base))

    def locate(key_s: str, e: dict, dtype: dtypes.DType, shape) -> tuple[Path, int, int]:
        sid, off, size = e["shard"], e["offset"], e["size"]
        require(0 <= sid < num_shards, f"tensor {key_s!r}: shard {sid} of {num_shards}", index)
        need = math.prod(shape) * dtype.numpy.itemsize
        require(size == need, f"tensor {key_s!r}: {size} bytes for {dtype.name}{list(shape)}, which needs {need}", index)
        if sid not in shard_sizes:
            shard = shard_paths[sid]
            require(shard.is_file() and not shard.is_symlink(), f"data shard {shard.name} is missing", index)
            shard_sizes[sid] = shard.stat().st_size
        require(0 <= off and off + size <= shard_sizes[sid],
                f"tensor {key_s!r}: data at [{off}, {off + size}) lies outside {shard_paths[sid].name} ({shard_sizes[sid]} bytes)", index)
        return shard_paths[sid], off, size

    for key, value in table[1:]:
        if key.startswith(b"\x00"):
            continue
        try:
            key_s = key.decode("utf-8")
        except UnicodeDecodeError:
            skipped.setdefault("undecodable_keys", []).append(key.hex()[:40])
            continue
        e = _entry(value, index, key_s)
        dtype = dtypes.by_code("tf", e["dtype"])
        if e["dtype"] in (DT_STRING, DT_RESOURCE, DT_VARIANT) or dtype is None or dtype.numpy is None:
            skipped.setdefault("non_numeric" if e["dtype"] in (DT_STRING, DT_RESOURCE, DT_VARIANT) else "unknown_dtype", []).append(key_s)
            continue
        shape = e["shape"]
        require(shape is not None and all(d >= 0 for d in shape), f"tensor {key_s!r}: unknown shape", index)
        name = key_s[: -len(VAR_SUFFIX)] if key_s.endswith(VAR_SUFFIX) else key_s
        require(name not in tensors, f"tensor name {name!r} repeats", index)
        if e["slices"]:
            stored = slice_entries.get(key_s, [])
            require(len(stored) == len(e["slices"]),
                    f"tensor {key_s!r}: {len(e['slices'])} slices declared, {len(stored)} stored", index)
            parts, covered = [], 0
            for extents, part in zip(sorted(e["slices"]), stored):
                require(len(extents) == len(shape), f"tensor {key_s!r}: slice rank differs from the shape", index)
                sl, sub = [], []
                for (start, length), dim in zip(extents, shape):
                    length = dim - start if length < 0 else length
                    require(0 <= start and 0 <= length and start + length <= dim, f"tensor {key_s!r}: slice outside the shape", index)
                    sl.append(slice(start, start + length))
                    sub.append(length)
                shard, off, size = locate(key_s, part, dtype, sub)
                covered += math.prod(sub)
                parts.append((tuple(sl), _bundle_loader(state, shard, name, dtype, tuple(sub), off, size, part["crc"], endian == 1)))
            require(covered == math.prod(shape), f"tensor {key_s!r}: slices do not cover the tensor exactly", index)
            tensors[name] = TensorRef(name, dtype, shape, _sliced_loader(parts, dtype, shape),
                                      file=str(index), extra={"key": key_s, "slices": len(parts)})
            continue
        shard, off, size = locate(key_s, e, dtype, shape)
        tensors[name] = TensorRef(name, dtype, shape,
                                  _bundle_loader(state, shard, name, dtype, shape, off, size, e["crc"], endian == 1),
                                  nbytes=size, file=str(shard), offset=off, extra={"key": key_s})
    details = {"container": "tensor bundle", "shards": num_shards, "endianness": "big" if endian else "little",
               "crc32c": CRC_IMPL}
    if any(k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") for k in skipped.get("non_numeric", [])):
        details["object_graph"] = True
    details.update({k: v[:20] for k, v in skipped.items()})
    if slice_entries:
        details["partitioned"] = sum(1 for t in tensors.values() if "slices" in t.extra)
    source = ModelSource(path=path, format="tf", tensors=tensors,
                         files=[index, *(shard_paths[i] for i in sorted(shard_sizes))], details=details)
    source.closers = [state.clear]
    return source

