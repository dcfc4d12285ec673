"""TFLite flatbuffers (`.tflite`): tensors and their constant buffers, read lazily with bounds checks.

Why our own table walker instead of the `flatbuffers` runtime or the `tflite` package: neither
verifies anything (a bad offset gives IndexError, struct.error or silently wrong data, docs/formats.md
§7.3), and we need only six tables of the schema (Model, SubGraph, Tensor, Buffer,
QuantizationParameters, Metadata). Every offset, vtable and vector length is checked against the
file size before use. Constant data is a memory-map view: the inline `Buffer.data` vector, or the
`offset`/`size` pair that models over 2 GB use to keep data after the flatbuffer. INT4/INT2
buffers are packed (element 0 in the low bits) and unpacked on read.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from pathlib import Path

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, require
from ..core.packing import unpack_nibbles
from ..core.source import ModelSource
from ..core.tensor import TensorRef
from .registry import FormatSpec

IDENT = b"TFL3"
MAX_VECTOR = 1 << 31
# Schema field slots (schema.fbs; a union takes two slots: type then value).
MODEL_VERSION, MODEL_OPCODES, MODEL_SUBGRAPHS, MODEL_DESCRIPTION, MODEL_BUFFERS, MODEL_METADATA = 0, 1, 2, 3, 4, 6
SG_TENSORS, SG_INPUTS, SG_OUTPUTS, SG_OPERATORS, SG_NAME = 0, 1, 2, 3, 4
T_SHAPE, T_TYPE, T_BUFFER, T_NAME, T_QUANT, T_IS_VARIABLE, T_SPARSITY = 0, 1, 2, 3, 4, 5, 6
B_DATA, B_OFFSET, B_SIZE = 0, 1, 2
Q_SCALE, Q_ZERO_POINT, Q_DIM = 2, 3, 6
OP_CODE_INDEX = 0
OC_DEPRECATED_BUILTIN, OC_CUSTOM, OC_BUILTIN = 0, 1, 3
NON_NUMERIC = {5: "STRING", 13: "RESOURCE", 14: "VARIANT"}   # constants with their own layouts: listed, not read


def detect(path: Path, head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == IDENT


class _Flat:
    """Bounds-checked flatbuffer access over a byte buffer (little-endian)."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.size = buf, path, len(buf)

    def check(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise FormatError(f"{what}: {n} bytes at offset {pos} lie outside the file ({self.size} bytes)", self.path)

    def u(self, fmt: str, pos: int, what: str):
        self.check(pos, struct.calcsize(fmt), what)
        return struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def table(self, pos: int, what: str) -> _Table:
        self.check(pos, 4, what)
        vt = pos - self.u("i", pos, what)
        vt_size = self.u("H", vt, f"{what} vtable")
        require(vt_size >= 4 and vt_size % 2 == 0, f"{what}: bad vtable size {vt_size}", self.path)
        self.check(vt, vt_size, f"{what} vtable")
        tbl_size = self.u("H", vt + 2, f"{what} vtable")
        self.check(pos, tbl_size, what)
        return _Table(self, pos, vt, vt_size, tbl_size, what)

    def deref(self, pos: int, what: str) -> int:
        return pos + self.u("I", pos, what)

    def vector(self, pos: int, elem: int, what: str) -> tuple[int, int]:
        """(start of elements, count) of the vector at `pos`."""
        n = self.u("I", pos, what)
        require(n <= MAX_VECTOR, f"{what}: vector of {n} elements is absurd", self.path)
        self.check(pos + 4, n * elem, what)
        return pos + 4, n


class _Table:
    def __init__(self, fb: _Flat, pos, vt, vt_size, tbl_size, what):
        self.fb, self.pos, self.vt, self.vt_size, self.tbl_size, self.what = fb, pos, vt, vt_size, tbl_size, what

    def _field(self, slot: int) -> int:
        at = 4 + 2 * slot
        if at + 2 > self.vt_size:
            return 0
        off = self.fb.u("H", self.vt + at, self.what)
        require(off == 0 or off < self.tbl_size, f"{self.what}: field {slot} lies outside its table", self.fb.path)
        return off

    def scalar(self, slot: int, fmt: str, default=0):
        off = self._field(slot)
        return default if off == 0 else self.fb.u(fmt, self.pos + off, self.what)

    def ref(self, slot: int) -> int | None:
        off = self._field(slot)
        return None if off == 0 else self.fb.deref(self.pos + off, self.what)

    def string(self, slot: int, cap: int = 1 << 20) -> str | None:
        at = self.ref(slot)
        if at is None:
            return None
        start, n = self.fb.vector(at, 1, f"{self.what} string")
        require(n <= cap, f"{self.what}: string of {n} bytes is too long", self.fb.path)
        return bytes(self.fb.buf[start:start + n]).decode("utf-8", "replace")

    def vector(self, slot: int, fmt: str) -> np.ndarray | None:
        at = self.ref(slot)
        if at is None:
            return None
        start, n = self.fb.vector(at, struct.calcsize(fmt), f"{self.what} vector")
        return np.frombuffer(self.fb.buf, dtype=np.dtype("<" + fmt), count=n, offset=start)

    def tables(self, slot: int, what: str) -> list[_Table]:
        at = self.ref(slot)
        if at is None:
            return []
        start, n = self.fb.vector(at, 4, f"{self.what} {what}s")
        return [self.fb.table(self.fb.deref(start + 4 * i, what), f"{what} {i}") for i in range(n)]


def _buffer_range(buf: _Table, fb: _Flat) -> tuple[int, int]:
    """(absolute offset, length) of a buffer's bytes; (0, 0) when it has none."""
    offset, size = buf.scalar(B_OFFSET, "Q"), buf.scalar(B_SIZE, "Q")
    if offset > 1:
        fb.check(offset, size, f"{buf.what} data (offset/size)")
        return offset, size
    at = buf.ref(B_DATA)
    if at is None:
        return 0, 0
    start, n = fb.vector(at, 1, f"{buf.what} data")
    return start, n


def _storage_bytes(dtype: dtypes.DType, numel: int) -> int:
    return dtype.nbytes(numel) if dtype.bits < 8 else numel * dtype.numpy.itemsize


def _loader(mapped, dtype: dtypes.DType, shape, start: int, length: int):
    def load() -> np.ndarray:
        raw = mapped()[start:start + length]
        numel = math.prod(shape)
        if dtype.bits == 4:
            return unpack_nibbles(raw, numel, dtype.numpy).reshape(shape)
        if dtype.bits == 2:
            out = np.empty(raw.size * 4, np.uint8)
            for k in range(4):
                out[k::4] = (raw >> (2 * k)) & 0x03
            return out[:numel].view(dtype.numpy).reshape(shape)
        return raw.view(dtype.numpy).reshape(shape)
    return load


def open_tflite(path: Path) -> ModelSource:
    size = path.stat().st_size
    require(size >= 8, "too short for a TFLite flatbuffer", path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    fb = _Flat(data, path)
    with path.open("rb") as f:
        ident = f.read(8)[4:8]
    require(ident == IDENT, f"file identifier is {ident!r}, not {IDENT!r}", path)
    model = fb.table(fb.deref(0, "root offset"), "Model")
    version = model.scalar(MODEL_VERSION, "I")
    buffers = model.tables(MODEL_BUFFERS, "buffer")
    ranges: list[tuple[int, int] | None] = [None] * len(buffers)

    def buffer_range(i: int) -> tuple[int, int]:
        if ranges[i] is None:
            ranges[i] = _buffer_range(buffers[i], fb)
        return ranges[i]

    op_codes = []
    for oc in model.tables(MODEL_OPCODES, "operator code"):
        code = max(oc.scalar(OC_DEPRECATED_BUILTIN, "b"), oc.scalar(OC_BUILTIN, "i"))
        op_codes.append(oc.string(OC_CUSTOM) or f"builtin {code}")
    metadata = {}
    for md in model.tables(MODEL_METADATA, "metadata"):
        name, index = md.string(0), md.scalar(1, "I")
        if name and index < len(buffers):
            start, n = buffer_range(index)
            raw = bytes(data[start:start + min(n, 256)])
            text = raw.rstrip(b"\0")
            printable = n <= 256 and text.isascii() and text.decode("ascii").isprintable()
            metadata[name] = raw.decode("ascii").rstrip("\0") if printable else f"<{n} bytes>"

    cache: list = [data]

    def mapped() -> np.ndarray:
        return cache[0]

    tensors: dict[str, TensorRef] = {}
    types: Counter = Counter()
    ops: Counter = Counter()
    activations = 0
    subgraphs = model.tables(MODEL_SUBGRAPHS, "subgraph")
    require(subgraphs, "the model has no subgraphs", path)
    sg_info = []
    for si, sg in enumerate(subgraphs):
        sg_name = sg.string(SG_NAME) or ""
        prefix = "" if si == 0 else f"{sg_name or f'subgraph{si}'}/"
        tlist = sg.tables(SG_TENSORS, f"subgraph {si} tensor")
        for op in sg.tables(SG_OPERATORS, f"subgraph {si} operator"):
            idx = op.scalar(OP_CODE_INDEX, "I")
            ops[op_codes[idx] if idx < len(op_codes) else f"opcode {idx}"] += 1
        sg_info.append({"name": sg_name, "tensors": len(tlist)})
        for ti, t in enumerate(tlist):
            name = prefix + (t.string(T_NAME) or f"tensor{ti}")
            code = t.scalar(T_TYPE, "b")
            shape_v = t.vector(T_SHAPE, "i")
            shape = tuple(int(d) for d in shape_v) if shape_v is not None else ()
            bidx = t.scalar(T_BUFFER, "I")
            require(bidx < max(len(buffers), 1), f"tensor {name!r}: buffer index {bidx} but the model has {len(buffers)} buffers", path)
            start, n = buffer_range(bidx) if bidx < len(buffers) else (0, 0)
            if n == 0:
                activations += 1
                continue
            if code in NON_NUMERIC:
                types[NON_NUMERIC[code] + " (skipped)"] += 1
                continue
            dtype = dtypes.by_code("tflite", code)
            require(dtype is not None and dtype.numpy is not None, f"tensor {name!r}: TensorType {code} has no numeric dtype", path)
            require(all(d >= 0 for d in shape), f"tensor {name!r}: constant with unknown dimension {list(shape)}", path)
            if t.ref(T_SPARSITY) is not None:
                types["sparse (skipped)"] += 1
                continue
            need = _storage_bytes(dtype, math.prod(shape))
            require(need == n, f"tensor {name!r}: buffer {bidx} holds {n} bytes but {dtype.name}{list(shape)} needs {need}", path)
            extra = {"buffer": bidx}
            if t.ref(T_QUANT) is not None:
                q = fb.table(t.ref(T_QUANT), f"tensor {name!r} quantization")
                scale, zp = q.vector(Q_SCALE, "f"), q.vector(Q_ZERO_POINT, "q")
                if scale is not None and scale.size:
                    extra.update(scale=scale.tolist(), zero_point=zp.tolist() if zp is not None else [],
                                 quantized_dimension=q.scalar(Q_DIM, "i"))
            if name in tensors:
                name = f"{name}#{ti}"
            require(name not in tensors, f"tensor name {name!r} repeats", path)
            tensors[name] = TensorRef(name, dtype, shape, _loader(mapped, dtype, shape, start, n), nbytes=n,
                                      file=str(path), offset=start, storage=("tflite", bidx), extra=extra)
            types[dtype.name + (" quantized" if "scale" in extra else "")] += 1
    details = {"schema_version": version, "subgraphs": sg_info, "buffers": len(buffers),
               "constant_tensors": dict(types), "activation_tensors": activations, "operators": dict(ops.most_common())}
    source = ModelSource(path=path, format="tflite", tensors=tensors, files=[path], metadata=metadata, details=details)
    source.closers = [cache.clear]
    return source


FORMAT = FormatSpec(
    name="tflite",
    extensions=(".tflite",),
    detect=detect,
    open=open_tflite,
    description="TensorFlow Lite flatbuffer",
)
