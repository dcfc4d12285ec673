"""Flax / JAX msgpack checkpoints (`flax.serialization.to_bytes`), read lazily, written streaming.

Why our own msgpack walker: the `msgpack` library materialises every `bin` payload and has no offset
API, so reading one array would copy the whole checkpoint. The walker follows headers only and
records, for each ndarray ext (code 1: `[shape, dtype name, data]`; code 3: a NumPy scalar packed
the same way), the absolute offset of its data, so `read()` is a memory-map view. Chunked arrays
(`__msgpack_chunked_array__`, flax's answer to msgpack's 2 GiB object limit) are joined on read.
Nested map keys become dotted names; plain scalar leaves go to `metadata`. docs/formats.md §6.1.

The writer emits the same encoding (maps of string keys, ext 1 arrays, chunking above 2^30 bytes)
one tensor at a time, so `flax.serialization.from_bytes` reads it back.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from pathlib import Path
from typing import Iterable

import ml_dtypes
import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, UnsupportedError, require
from ..core.source import ModelSource, tensor_list
from ..core.tensor import TensorRef
from .registry import FormatSpec

MAX_DEPTH = 128
MAX_CHUNK_SIZE = 2**30       # flax.serialization.MAX_CHUNK_SIZE
MAX_NAME = 1 << 16
CHUNKED = "__msgpack_chunked_array__"


def _np_dtype(name: str) -> np.dtype | None:
    try:
        dt = np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    except TypeError:
        return None
    return dt


@functools.lru_cache(maxsize=256)
def _allowed(name: str) -> dtypes.DType | None:
    dt = _np_dtype(name) if isinstance(name, str) and name.isidentifier() else None
    if dt is None or dt.byteorder == ">":
        return None
    found = dtypes.from_numpy(dt)
    return found if found is not None and found.numpy is not None else None


def detect(path: Path, head: bytes) -> bool:
    if not head:
        return False
    b = head[0]
    if 0x81 <= b <= 0x8F:
        key = head[1:2]
    elif b == 0xDE and len(head) >= 3:
        key = head[3:4]
    elif b == 0xDF and len(head) >= 5:
        key = head[5:6]
    else:
        return head == b"\x80"
    return bool(key) and (0xA0 <= key[0] <= 0xBF or key[0] in (0xD9, 0xDA, 0xDB))


class _Array:
    __slots__ = ("shape", "dtype", "offset", "length")

    def __init__(self, shape, dtype, offset, length):
        self.shape, self.dtype, self.offset, self.length = shape, dtype, offset, length


class _Walker:
    """Headers-only msgpack reader over a byte buffer; every length is checked against the end."""

    def __init__(self, buf, path: Path, end: int | None = None):
        self.buf, self.path, self.end = buf, path, len(buf) if end is None else end

    def need(self, pos: int, n: int, what: str) -> None:
        if n < 0 or pos + n > self.end:
            raise FormatError(f"msgpack {what} at byte {pos} needs {n} bytes but the file ends at {self.end}", self.path)

    def uint(self, pos: int, size: int, what: str) -> int:
        self.need(pos, size, what)
        return int.from_bytes(self.buf[pos:pos + size], "big")

    def value(self, pos: int, depth: int = 0, ext_ok: bool = True):
        """(python value or _Array or dict, next position)."""
        if not (depth <= MAX_DEPTH):
            raise FormatError(f"msgpack nested deeper than {MAX_DEPTH}", self.path)
        self.need(pos, 1, "value")
        b = self.buf[pos]
        p = pos + 1
        if b <= 0x7F:
            return b, p
        if b >= 0xE0:
            return b - 0x100, p
        if 0x80 <= b <= 0x8F:
            return self.map(p, b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self.array(p, b & 0x0F, depth)
        if 0xA0 <= b <= 0xBF:
            return self.str(p, b & 0x1F)
        if b == 0xC0:
            return None, p
        if b in (0xC2, 0xC3):
            return b == 0xC3, p
        if b in (0xC4, 0xC5, 0xC6):
            size = 1 << (b - 0xC4)
            n = self.uint(p, size, "bin length")
            self.need(p + size, n, "bin")
            return ("bin", p + size, n), p + size + n
        if b in (0xC7, 0xC8, 0xC9):
            size = 1 << (b - 0xC7)
            n = self.uint(p, size, "ext length")
            return self.ext(p + size, n, depth)
        if b in (0xCA, 0xCB):
            size = 4 if b == 0xCA else 8
            self.need(p, size, "float")
            return struct.unpack(">f" if size == 4 else ">d", bytes(self.buf[p:p + size]))[0], p + size
        if 0xCC <= b <= 0xD3:
            size = 1 << ((b - 0xCC) % 4)
            self.need(p, size, "int")
            return int.from_bytes(self.buf[p:p + size], "big", signed=b >= 0xD0), p + size
        if 0xD4 <= b <= 0xD8:
            return self.ext(p, 1 << (b - 0xD4), depth)
        if b in (0xD9, 0xDA, 0xDB):
            size = 1 << (b - 0xD9)
            return self.str(p + size, self.uint(p, size, "str length"))
        if b in (0xDC, 0xDD):
            size = 2 if b == 0xDC else 4
            return self.array(p + size, self.uint(p, size, "array length"), depth)
        if b in (0xDE, 0xDF):
            size = 2 if b == 0xDE else 4
            return self.map(p + size, self.uint(p, size, "map length"), depth)
        raise FormatError(f"byte 0x{b:02x} at {pos} is not valid msgpack", self.path)

    def str(self, p: int, n: int):
        self.need(p, n, "str")
        if not (n <= MAX_NAME):
            raise FormatError(f"string of {n} bytes at {p} is too long for a key", self.path)
        try:
            return bytes(self.buf[p:p + n]).decode("utf-8"), p + n
        except UnicodeDecodeError:
            raise FormatError(f"string at byte {p} is not UTF-8", self.path) from None

    def array(self, p: int, n: int, depth: int):
        self.need(p, n, "array")  # every element takes at least one byte
        out = []
        for _ in range(n):
            v, p = self.value(p, depth + 1)
            out.append(v)
        return out, p

    def map(self, p: int, n: int, depth: int):
        self.need(p, 2 * n, "map")
        out: dict = {}
        for _ in range(n):
            k, p = self.value(p, depth + 1)
            if not (isinstance(k, (str, int)) and not isinstance(k, bool)):
                raise FormatError(f"map key {k!r} before byte {p} is not a string", self.path)
            k = str(k)
            if not (k not in out):
                raise FormatError(f"duplicate map key {k!r} before byte {p}", self.path)
            out[k], p = self.value(p, depth + 1)
        return out, p

    def ext(self, p: int, n: int, depth: int):
        self.need(p, 1 + n, "ext")
        code = int.from_bytes(self.buf[p:p + 1], "big", signed=True)
        body, end = p + 1, p + 1 + n
        if code in (1, 3):
            sub = _Walker(self.buf, self.path, end)
            payload, q = sub.value(body, depth + 1)
            if not (q == end and isinstance(payload, list) and len(payload) == 3):
                raise FormatError(f"ndarray ext at byte {p} is not [shape, dtype, data]", self.path)
            shape, dname, data = payload
            if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
                raise FormatError(f"ndarray ext at byte {p}: bad shape {shape!r}", self.path)
            dtype = _allowed(dname) if isinstance(dname, str) else None
            if not (dtype is not None):
                raise FormatError(f"ndarray ext at byte {p}: dtype {dname!r} is not an allowed numeric type", self.path)
            if not (isinstance(data, tuple) and data[0] == "bin"):
                raise FormatError(f"ndarray ext at byte {p}: data is not bin", self.path)
            need = math.prod(shape) * dtype.numpy.itemsize
            if not (need == data[2]):
                raise FormatError(f"ndarray ext at byte {p}: {data[2]} bytes for {dname}{shape}, which needs {need}", self.path)
            return _Array(tuple(shape), dtype, data[1], data[2]), end
        if code == 2:
            sub = _Walker(self.buf, self.path, end)
            payload, q = sub.value(body, depth + 1)
            if not (q == end and isinstance(payload, list) and len(payload) == 2):
                raise FormatError(f"complex ext at byte {p} is not [re, im]", self.path)
            return complex(*payload), end
        return ("ext", code, n), end


def _flatten(tree: dict, prefix: str, out: list, path: Path) -> None:
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value.get(CHUNKED) is True:
            shape, chunks = value.get("shape"), value.get("chunks")
            require(isinstance(shape, dict) and isinstance(chunks, dict), f"chunked array {name!r}: bad layout", path)
            dims = [shape.get(str(i)) for i in range(len(shape))]
            parts = [chunks.get(str(i)) for i in range(len(chunks))]
            require(all(isinstance(d, int) and d >= 0 for d in dims) and parts and all(isinstance(c, _Array) for c in parts),
                    f"chunked array {name!r}: bad shape or chunks", path)
            require(len({c.dtype for c in parts}) == 1 and sum(c.length for c in parts) == math.prod(dims) * parts[0].dtype.numpy.itemsize,
                    f"chunked array {name!r}: chunks do not add up to shape {dims}", path)
            out.append((name, tuple(dims), parts[0].dtype, parts))
        elif isinstance(value, dict):
            _flatten(value, name, out, path)
        elif isinstance(value, _Array):
            out.append((name, value.shape, value.dtype, [value]))
        else:
            out.append((name, None, value, None))


def open_flax(path: Path) -> ModelSource:
    size = path.stat().st_size
    require(size > 0, "empty file", path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        tree, end = _Walker(mm, path).value(0)  # slices of an mmap are bytes copies: no exported views
    require(isinstance(tree, dict), "top level is not a msgpack map (not a flax state dict)", path)
    require(end == size, f"{size - end} trailing bytes after the msgpack map", path)
    leaves: list = []
    _flatten(tree, "", leaves, path)
    cache: list = []

    def mapped() -> np.ndarray:
        if not cache:
            cache.append(np.memmap(path, dtype=np.uint8, mode="r"))
        return cache[0]

    tensors, metadata = {}, {}
    for name, shape, dtype, parts in leaves:
        if parts is None:
            if not isinstance(dtype, tuple):
                metadata[name] = dtype if isinstance(dtype, (int, float, str, bool)) or dtype is None else str(dtype)
            continue
        tensors[name] = TensorRef(name, dtype, shape, _loader(mapped, dtype, shape, parts),
                                  nbytes=sum(p.length for p in parts), file=str(path), offset=parts[0].offset,
                                  extra={"chunks": len(parts)} if len(parts) > 1 else {})
    return ModelSource(path=path, format="flax", tensors=tensors, files=[path], metadata=metadata,
                       details={"encoding": "flax.serialization msgpack",
                                "chunked_arrays": sum(1 for t in tensors.values() if t.extra.get("chunks"))})


def _loader(mapped, dtype, shape, parts):
    def load() -> np.ndarray:
        mm = mapped()
        if len(parts) == 1:
            p = parts[0]
            return mm[p.offset:p.offset + p.length].view(dtype.numpy).reshape(shape)
        return np.concatenate([mm[p.offset:p.offset + p.length].view(dtype.numpy) for p in parts]).reshape(shape)
    return load


# --- writer -------------------------------------------------------------------------------

def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def _int(v: int) -> bytes:
    if 0 <= v < 128:
        return bytes([v])
    if -32 <= v < 0:
        return struct.pack(">b", v)
    if v >= 0:
        for code, fmt, lim in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32), (0xCF, ">Q", 1 << 64)):
            if v < lim:
                return bytes([code]) + struct.pack(fmt, v)
    for code, fmt, lim in ((0xD0, ">b", 1 << 7), (0xD1, ">h", 1 << 15), (0xD2, ">i", 1 << 31), (0xD3, ">q", 1 << 63)):
        if -lim <= v:
            return bytes([code]) + struct.pack(fmt, v)
    raise OverflowError(v)


def _container(n: int, fix: int, c16: int, c32: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 65536:
        return bytes([c16]) + struct.pack(">H", n)
    return bytes([c32]) + struct.pack(">I", n)


def _map(n: int) -> bytes:
    return _container(n, 0x80, 0xDE, 0xDF)


def _sized(n: int, c8: int, c16: int, c32: int) -> bytes:
    if n < 256:
        return bytes([c8, n])
    if n < 65536:
        return bytes([c16]) + struct.pack(">H", n)
    return bytes([c32]) + struct.pack(">I", n)


def _write_ndarray(f, arr: np.ndarray) -> None:
    """ext 1: [shape, dtype name, bin data]."""
    shape = b"".join(_int(d) for d in arr.shape)
    head = b"\x93" + _container(arr.ndim, 0x90, 0xDC, 0xDD) + shape + _str(arr.dtype.name) + _sized(arr.nbytes, 0xC4, 0xC5, 0xC6)
    length = len(head) + arr.nbytes
    fixed = (1, 2, 4, 8, 16)
    ext = bytes([0xD4 + fixed.index(length)]) if length in fixed else _sized(length, 0xC7, 0xC8, 0xC9)
    f.write(ext + b"\x01")
    f.write(head)
    f.write(memoryview(np.ascontiguousarray(arr.reshape(-1)).view(np.uint8)))


def _write_leaf(f, arr: np.ndarray) -> None:
    if arr.nbytes <= MAX_CHUNK_SIZE:
        _write_ndarray(f, arr)
        return
    flat = arr.reshape(-1)
    step = max(1, MAX_CHUNK_SIZE // arr.dtype.itemsize)
    starts = list(range(0, flat.size, step))
    f.write(_map(3) + _str(CHUNKED) + b"\xc3")
    f.write(_str("shape") + _map(arr.ndim) + b"".join(_str(str(i)) + _int(d) for i, d in enumerate(arr.shape)))
    f.write(_str("chunks") + _map(len(starts)))
    for i, s in enumerate(starts):
        f.write(_str(str(i)))
        _write_ndarray(f, flat[s:s + step])


def write_flax(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
               aliases: dict | None = None, progress=None) -> None:
    refs = tensor_list(tensors)
    tree: dict = {}
    for ref in refs:
        if ref.dtype.is_quantized or ref.dtype.numpy is None:
            raise UnsupportedError(f"tensor {ref.name!r}: flax msgpack has no {ref.dtype.name}; use --dequantize", dst)
        node = tree
        parts = ref.name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UnsupportedError(f"tensor {ref.name!r}: {part!r} is both a tensor and a group of tensors", dst)
        if parts[-1] in node:
            raise UnsupportedError(f"tensor {ref.name!r}: the name is already a group of tensors (or repeated)", dst)
        node[parts[-1]] = ref

    def emit(f, node: dict) -> None:
        f.write(_map(len(node)))
        for key, value in node.items():
            f.write(_str(key))
            if isinstance(value, dict):
                emit(f, value)
                continue
            arr = np.asarray(value.read())
            if tuple(arr.shape) != value.shape:
                raise FormatError(f"tensor {value.name!r}: reader gave shape {arr.shape}, expected {value.shape}", dst)
            _write_leaf(f, arr.astype(value.dtype.numpy, order="C", copy=False))
            del arr
            if progress:
                progress(value)

    with dst.open("wb") as f:
        emit(f, tree)


FORMAT = FormatSpec(
    name="flax",
    extensions=(".msgpack",),
    detect=detect,
    open=open_flax,
    write=write_flax,
    description="Flax / JAX msgpack (flax.serialization)",
    options={"aliases": ("msgpack",)},
)
