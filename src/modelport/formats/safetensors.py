"""safetensors: a strict header parser over a memory map, and a streaming writer.

Why our own code beside the `safetensors` library: its NumPy path cannot return F8/F4/F6 tensors
and it accepts duplicate keys; we need every dtype without a framework, and stricter checks (rules
of docs/formats.md §1.3 plus duplicates, caps). The library stays the oracle in the tests.

Writer: header first (it is computed from shapes and dtypes alone), then each tensor's bytes as it is
read, so memory holds one tensor at a time. Layout follows the official writer (dtype descending,
then name; compact JSON padded with spaces to a multiple of 8), so files are byte-for-byte what
`safetensors.save_file` writes for the same tensors.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, UnsupportedError, require
from ..core.packing import pack_nibbles, unpack_nibbles
from ..core.source import ModelSource, loads_json, tensor_list
from ..core.tensor import VERBATIM, TensorRef, copy_range, map_bytes, open_for_writing, write_all
from .registry import FormatSpec

MAX_HEADER = 100_000_000
JSON_START = b"{ \t\r\n"

# The official enum order; the writer sorts tensors by it (descending) so each is aligned to its size.
_ENUM_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
               "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
               "F64", "I64", "U64"]


def detect(path: Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER and head[8:9] in (b"{", b" ", b"\t", b"\r", b"\n") and head[8:9 + 64].lstrip()[:1] == b"{"


def _pairs_no_duplicates(path):
    def hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise FormatError(f"duplicate key {key!r} in the header", path)
            obj[key] = value
        return obj
    return hook


def read_header(path: Path) -> tuple[int, dict]:
    """(data start, header dict) after every check that needs only the header and the file size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        require(len(prefix) == 8, "too short for safetensors (header length missing)", path)
        (n,) = struct.unpack("<Q", prefix)
        require(n <= MAX_HEADER, f"header length {n} exceeds the 100 MB limit", path)
        require(8 + n <= size, f"header length {n} runs past the end of the file ({size} bytes)", path)
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("header is not UTF-8", path) from None
    header = loads_json(text, path, "header", _pairs_no_duplicates(path))
    require(isinstance(header, dict), "header is not a JSON object", path)
    return 8 + n, header


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_entries(path: Path, data_start: int, header: dict) -> tuple[dict, list[tuple[str, dtypes.DType, tuple, int, int]]]:
    """Validate the tensor entries; returns (metadata, [(name, dtype, shape, begin, end)]) in offset order."""
    metadata = header.get("__metadata__", {})
    require(isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()),
            "__metadata__ must map strings to strings", path)
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        require(isinstance(info, dict), f"tensor {name!r}: entry is not an object", path)
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        dtype = dtypes.by_code("safetensors", code)
        require(dtype is not None, f"tensor {name!r}: unknown dtype {code!r}", path)
        require(isinstance(shape, list) and all(_is_uint(d) for d in shape), f"tensor {name!r}: bad shape {shape!r}", path)
        require(isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets),
                f"tensor {name!r}: data_offsets must be two non-negative integers", path)
        entries.append((name, dtype, tuple(shape), offsets[0], offsets[1]))
    entries.sort(key=lambda e: (e[3], e[4]))
    expected = 0
    for name, dtype, shape, begin, end in entries:
        require(begin == expected and end >= begin,
                f"tensor {name!r}: data at [{begin}, {end}) leaves a hole or overlaps (expected to start at {expected})", path)
        bits = math.prod(shape) * dtype.bits
        require(bits < 2**64, f"tensor {name!r}: shape {list(shape)} overflows", path)
        require(bits % 8 == 0, f"tensor {name!r}: {dtype.name} shape {list(shape)} is not a whole number of bytes", path)
        require(end - begin == bits // 8,
                f"tensor {name!r}: {end - begin} bytes for {dtype.name}{list(shape)}, which needs {bits // 8}", path)
        expected = end
    size = path.stat().st_size
    require(data_start + expected == size,
            f"file is {size} bytes but the header accounts for {data_start + expected}"
            + (" (trailing bytes)" if size > data_start + expected else " (truncated)"), path)
    return metadata, entries


def _loader(path, name, dtype, shape, start, nbytes):
    def load() -> np.ndarray:
        raw = map_bytes(path, start, nbytes)
        if dtype.name == "F4":
            return unpack_nibbles(raw, math.prod(shape), dtype.numpy).reshape(shape)
        if dtype.bits % 8:
            raise UnsupportedError(f"tensor {name!r}: {dtype.name} bit order is not defined by safetensors; cannot decode", path)
        return raw.view(dtype.numpy).reshape(shape)
    return load


def open_safetensors(path: Path) -> ModelSource:
    data_start, header = read_header(path)
    metadata, entries = parse_entries(path, data_start, header)
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        start = data_start + begin
        tensors[name] = TensorRef(name, dtype, shape, _loader(path, name, dtype, shape, start, end - begin),
                                  nbytes=end - begin, file=str(path), offset=start, extra={VERBATIM: True})
    aliases = {k: v for k, v in metadata.items() if k not in tensors and v in tensors}
    meta = {k: v for k, v in metadata.items() if k not in aliases}
    return ModelSource(path=path, format="safetensors", tensors=tensors, files=[path], metadata=meta,
                       aliases=aliases, details={"header_bytes": data_start})


def _sort_key(ref: TensorRef):
    return (-_ENUM_ORDER.index(ref.dtype.safetensors), ref.name)


def _tensor_bytes(ref: TensorRef, arr: np.ndarray) -> np.ndarray:
    """The bytes of one tensor as safetensors stores them (little-endian, C order, F4 packed)."""
    arr = np.asarray(arr)
    if tuple(arr.shape) != ref.shape:
        raise FormatError(f"tensor {ref.name!r}: reader gave shape {arr.shape}, header said {ref.shape}")
    if ref.dtype.name == "F4":
        return pack_nibbles(arr.astype(ref.dtype.numpy))
    arr = np.ascontiguousarray(arr, dtype=ref.dtype.numpy)
    return arr.reshape(-1).view(np.uint8)


def write_safetensors(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
                      aliases: dict | None = None, progress=None) -> None:
    refs = tensor_list(tensors)
    for ref in refs:
        if ref.dtype.safetensors is None:
            raise UnsupportedError(f"tensor {ref.name!r}: safetensors has no dtype {ref.dtype.name}"
                                   + ("; use --dequantize" if ref.dtype.is_quantized else ""), dst)
        if ref.dtype.bits % 4:
            raise UnsupportedError(f"tensor {ref.name!r}: writing {ref.dtype.name} is not supported", dst)
    refs.sort(key=_sort_key)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({k: v for k, v in (aliases or {}).items()})
    header: dict = {"__metadata__": meta} if meta else {}
    offset = 0
    for ref in refs:
        size = ref.dtype.nbytes(ref.numel)
        header[ref.name] = {"dtype": ref.dtype.safetensors, "shape": list(ref.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)
    if len(blob) > MAX_HEADER:
        raise UnsupportedError("header would exceed the 100 MB safetensors limit; shard the output", dst)
    with open_for_writing(dst) as f:
        write_all(f.fileno(), struct.pack("<Q", len(blob)) + blob)
        for ref in refs:
            stored = ref.stored_range()
            if stored is not None:      # the source file holds these very bytes: copied file to file
                copy_range(stored[0], stored[1], ref.nbytes, f.fileno())
                if progress:
                    progress(ref)
                continue
            data = _tensor_bytes(ref, ref.read())
            if data.nbytes != header[ref.name]["data_offsets"][1] - header[ref.name]["data_offsets"][0]:
                raise FormatError(f"tensor {ref.name!r}: got {data.nbytes} bytes, expected {ref.dtype.nbytes(ref.numel)}", dst)
            write_all(f.fileno(), data)
            if progress:
                progress(ref)


FORMAT = FormatSpec(
    name="safetensors",
    extensions=(".safetensors",),
    detect=detect,
    open=open_safetensors,
    write=write_safetensors,
    shard_index="model.safetensors.index.json",
    shard_pattern="model-{i:05d}-of-{n:05d}.safetensors",
    description="safetensors (Hugging Face)",
)
