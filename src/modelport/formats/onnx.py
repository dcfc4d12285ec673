"""ONNX: every weight of a model, read lazily by scanning the protobuf wire format.

Why not `onnx.load`: it parses the whole `ModelProto` into memory, inline `raw_data` included
(docs/formats.md §5.5), so opening a 2 GB model costs 2 GB before a single tensor is asked for, and its
external-data path checks depend on the installed onnx version. Instead `core.protobuf.fields` walks the
file (memory-mapped) and records, for each TensorProto, its name, dims, type and where its bytes are:
`raw_data` becomes a zero-copy view of the mapped file, typed fields (`float_data`, `int32_data`, ...)
are decoded on `read()`, external data is mapped from its own file after our own path checks
(inside the model folder, no absolute paths, no `..`, no symlinks, no hard links, range inside the file).
The onnx package stays the oracle in the tests (`numpy_helper.to_array`); it is not needed to read.

Tensors come from `graph.initializer`, from Constant nodes (`value`, `value_float(s)`, `value_int(s)`;
named by the node's output), from tensor attributes of other nodes (`<node>/<attr>`), and from the same
places inside subgraphs (If/Loop/Scan bodies), whose names get the prefix `<node>/<attr>/`.
Sparse initializers and string tensors are counted in `details` but not read.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import dtypes
from ..core import protobuf as pb
from ..core.errors import FormatError, UnsupportedError, require
from ..core.packing import unpack_nibbles
from ..core.source import ModelSource, read_json, safe_member
from ..core.tensor import TensorRef
from . import registry
from .registry import FormatSpec

MAX_GRAPH_DEPTH = 32
STRING, UNDEFINED = 8, 0
_NIBBLE = {"I4", "U4", "F4"}
_CRUMB = {"I2", "U2"}
_SIX = {"F6_E2M3", "F6_E3M2"}
# ModelProto field numbers known to the detector, with their wire types.
_MODEL_FIELDS = {1: pb.VARINT, 2: pb.LEN, 3: pb.LEN, 4: pb.LEN, 5: pb.VARINT, 6: pb.LEN, 7: pb.LEN, 8: pb.LEN,
                 14: pb.LEN, 20: pb.LEN, 25: pb.LEN, 26: pb.LEN}


@dataclass
class _Tensor:
    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 1                      # proto default FLOAT
    raw: tuple[int, int] | None = None
    typed: list[tuple[int, int, int, int]] = field(default_factory=list)   # (field, wire, a, b)
    strings: bool = False
    external: dict[str, str] | None = None
    location: int = 0
    values: np.ndarray | None = None        # Constant value_float(s)/value_int(s)


class _Scan:
    """One pass over the ModelProto; collects tensors, graph facts and op counts."""

    def __init__(self, buf, size: int, path: Path):
        self.buf, self.size, self.path = buf, size, path
        self.tensors: list[tuple[str, _Tensor]] = []
        self.names: set[str] = set()
        self.ops: dict[str, int] = {}
        self.nodes = 0
        self.skipped: dict[str, int] = {}
        self.model: dict[str, Any] = {}
        self.opsets: dict[str, int] = {}
        self.metadata: dict[str, str] = {}
        self.inputs: dict[str, str] = {}
        self.outputs: dict[str, str] = {}

    def fields(self, a, b):
        return pb.fields(self.buf, a, b, self.path)

    def text(self, a, b, what):
        return pb.text(self.buf, a, b, what, self.path)

    def add(self, name: str, tensor: _Tensor) -> None:
        require(name not in self.names, f"two tensors are named {name!r}", self.path)
        self.names.add(name)
        self.tensors.append((name, tensor))

    def model_proto(self) -> None:
        graph = None
        for f, w, a, b in self.fields(0, self.size):
            if f == 1 and w == pb.VARINT:
                self.model["ir_version"] = pb.signed(a)
            elif f in (2, 3, 4) and w == pb.LEN:
                self.model[{2: "producer_name", 3: "producer_version", 4: "domain"}[f]] = self.text(a, b, "model string")
            elif f == 5 and w == pb.VARINT:
                self.model["model_version"] = pb.signed(a)
            elif f == 7 and w == pb.LEN:
                graph = (a, b)
            elif f == 8 and w == pb.LEN:
                domain, version = "", 0
                for f2, w2, a2, b2 in self.fields(a, b):
                    if f2 == 1 and w2 == pb.LEN:
                        domain = self.text(a2, b2, "opset domain")
                    elif f2 == 2 and w2 == pb.VARINT:
                        version = pb.signed(a2)
                self.opsets[domain or "ai.onnx"] = version
            elif f == 14 and w == pb.LEN:
                key, value = self.string_pair(a, b)
                self.metadata[key] = value
            elif f in (20, 25):
                self.skipped["training_info" if f == 20 else "functions"] = \
                    self.skipped.get("training_info" if f == 20 else "functions", 0) + 1
        require(graph is not None, "not an ONNX model (no graph)", self.path)
        self.graph(*graph, prefix="", depth=0, main=True)

    def string_pair(self, a, b) -> tuple[str, str]:
        key = value = ""
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1 and w == pb.LEN:
                key = self.text(a2, b2, "key")
            elif f == 2 and w == pb.LEN:
                value = self.text(a2, b2, "value")
        return key, value

    def graph(self, a, b, prefix: str, depth: int, main: bool = False) -> None:
        require(depth <= MAX_GRAPH_DEPTH, f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep", self.path)
        nodes, inputs, outputs = [], [], []
        for f, w, a2, b2 in self.fields(a, b):
            if w != pb.LEN:
                continue
            if f == 1:
                nodes.append((a2, b2))
            elif f == 5:
                t = self.tensor(a2, b2)
                self.add(prefix + (t.name or f"initializer_{len(self.tensors)}"), t)
            elif f == 15:
                self.skipped["sparse_initializer"] = self.skipped.get("sparse_initializer", 0) + 1
            elif main and f == 11:
                inputs.append((a2, b2))
            elif main and f == 12:
                outputs.append((a2, b2))
        for index, (na, nb) in enumerate(nodes):
            self.node(na, nb, index, prefix, depth)
        if main:
            initializers = {n for n, _ in self.tensors}
            for target, entries in ((self.inputs, inputs), (self.outputs, outputs)):
                for va, vb in entries:
                    name, desc = self.value_info(va, vb)
                    if name not in initializers:
                        target[name] = desc

    def node(self, a, b, index: int, prefix: str, depth: int) -> None:
        op, domain, name, outputs, attrs = "", "", "", [], []
        for f, w, a2, b2 in self.fields(a, b):
            if w != pb.LEN:
                continue
            if f == 2:
                outputs.append(self.text(a2, b2, "node output"))
            elif f == 3:
                name = self.text(a2, b2, "node name")
            elif f == 4:
                op = self.text(a2, b2, "op type")
            elif f == 7:
                domain = self.text(a2, b2, "node domain")
            elif f == 5:
                attrs.append((a2, b2))
        key = op if domain in ("", "ai.onnx") else f"{domain}.{op}"
        self.ops[key] = self.ops.get(key, 0) + 1
        self.nodes += 1
        label = name or f"{op}_{index}"
        constant = op == "Constant" and domain in ("", "ai.onnx")
        for aa, ab in attrs:
            self.attribute(aa, ab, label, prefix, depth, constant, outputs[0] if outputs else "")

    def attribute(self, a, b, label: str, prefix: str, depth: int, constant: bool, output: str) -> None:
        name = ""
        f_val: float | None = None
        i_val: int | None = None
        tensors, graphs, floats, ints = [], [], [], []
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1 and w == pb.LEN:
                name = self.text(a2, b2, "attribute name")
            elif f == 2 and w == pb.I32:
                f_val = pb.fixed32_float(self.buf, a2)
            elif f == 3 and w == pb.VARINT:
                i_val = pb.signed(a2)
            elif f in (5, 10) and w == pb.LEN:
                tensors.append((a2, b2))
            elif f in (6, 11) and w == pb.LEN:
                graphs.append((a2, b2))
            elif f == 7:
                floats.append((w, a2, b2))
            elif f == 8:
                ints.append((w, a2, b2))
            elif f in (22, 23):
                self.skipped["sparse_tensor attribute"] = self.skipped.get("sparse_tensor attribute", 0) + 1
        if constant:
            target = prefix + (output or label)
            if name == "value" and tensors:
                self.add(target, self.tensor(*tensors[0]))
            elif name == "value_float" and f_val is not None:
                self.add(target, _Tensor(name=target, dims=[], values=np.array(f_val, np.float32), data_type=1))
            elif name == "value_int" and i_val is not None:
                self.add(target, _Tensor(name=target, dims=[], values=np.array(i_val, np.int64), data_type=7))
            elif name == "value_floats":
                values = self.repeated(floats, np.float32)
                self.add(target, _Tensor(name=target, dims=[values.size], values=values, data_type=1))
            elif name == "value_ints":
                values = self.repeated(ints, np.int64)
                self.add(target, _Tensor(name=target, dims=[values.size], values=values, data_type=7))
        else:
            for i, (ta, tb) in enumerate(tensors):
                suffix = f"/{i}" if len(tensors) > 1 else ""
                self.add(f"{prefix}{label}/{name}{suffix}", self.tensor(ta, tb))
        for i, (ga, gb) in enumerate(graphs):
            suffix = f"/{i}" if len(graphs) > 1 else ""
            self.graph(ga, gb, f"{prefix}{label}/{name}{suffix}/", depth + 1)

    def repeated(self, parts, dtype) -> np.ndarray:
        """A repeated float/int64 attribute, packed or not."""
        out = []
        for w, a, b in parts:
            if w == pb.LEN:
                data = np.frombuffer(self.buf, np.uint8, b - a, a)
                if dtype == np.float32:
                    require((b - a) % 4 == 0, "packed floats of a length not a multiple of 4", self.path)
                    out.append(data.view("<f4").astype(np.float32))
                else:
                    out.append(pb.decode_varints(data, self.path).view(np.int64))
            elif w == pb.I32 and dtype == np.float32:
                out.append(np.array([pb.fixed32_float(self.buf, a)], np.float32))
            elif w == pb.VARINT and dtype == np.int64:
                out.append(np.array([pb.signed(a)], np.int64))
        return np.concatenate(out).astype(dtype) if out else np.zeros(0, dtype)

    def tensor(self, a, b) -> _Tensor:
        t = _Tensor()
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1:
                if w == pb.VARINT:
                    t.dims.append(pb.signed(a2))
                elif w == pb.LEN:
                    t.dims.extend(pb.decode_varints(np.frombuffer(self.buf, np.uint8, b2 - a2, a2), self.path)
                                  .view(np.int64).tolist())
            elif f == 2 and w == pb.VARINT:
                t.data_type = pb.signed(a2)
            elif f == 8 and w == pb.LEN:
                t.name = self.text(a2, b2, "tensor name")
            elif f == 9 and w == pb.LEN:
                t.raw = (a2, b2)
            elif f in (4, 5, 7, 10, 11):
                t.typed.append((f, w, a2, b2))
            elif f == 6:
                t.strings = True
            elif f == 3:
                raise UnsupportedError("segmented ONNX tensors are not supported", self.path)
            elif f == 13 and w == pb.LEN:
                key, value = self.string_pair(a2, b2)
                t.external = t.external or {}
                t.external[key] = value
            elif f == 14 and w == pb.VARINT:
                t.location = pb.signed(a2)
        return t

    def value_info(self, a, b) -> tuple[str, str]:
        name, desc = "", "?"
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1 and w == pb.LEN:
                name = self.text(a2, b2, "value name")
            elif f == 2 and w == pb.LEN:
                desc = self.type_proto(a2, b2)
        return name, desc

    def type_proto(self, a, b) -> str:
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1 and w == pb.LEN:                  # tensor_type
                elem, dims = 0, None
                for f3, w3, a3, b3 in self.fields(a2, b2):
                    if f3 == 1 and w3 == pb.VARINT:
                        elem = pb.signed(a3)
                    elif f3 == 2 and w3 == pb.LEN:
                        dims = []
                        for f4, w4, a4, b4 in self.fields(a3, b3):
                            if f4 == 1 and w4 == pb.LEN:
                                dims.append(self.dimension(a4, b4))
                dtype = dtypes.by_code("onnx", elem)
                type_name = dtype.name if dtype else ("STRING" if elem == STRING else f"type {elem}")
                return type_name + ("" if dims is None else f"[{', '.join(dims)}]")
            if w == pb.LEN and f in (4, 5, 8, 9):
                return {4: "sequence", 5: "map", 8: "sparse tensor", 9: "optional"}[f]
        return "?"

    def dimension(self, a, b) -> str:
        for f, w, a2, b2 in self.fields(a, b):
            if f == 1 and w == pb.VARINT:
                return str(pb.signed(a2))
            if f == 2 and w == pb.LEN:
                return self.text(a2, b2, "dimension name")
        return "?"


# --- reading tensors ----------------------------------------------------------------------

def _unpack_crumbs(packed: np.ndarray, count: int, dtype) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = (packed[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 0x03
    return out.reshape(-1)[:count].view(dtype)


def _unpack_six(packed: np.ndarray, count: int, dtype) -> np.ndarray:
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8).reshape(-1), bitorder="little")[:count * 6]
    values = (bits.reshape(count, 6).astype(np.uint8) << np.arange(6, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
    return values.view(dtype)


def _from_bytes(raw: np.ndarray, dtype: dtypes.DType, shape: tuple) -> np.ndarray:
    """A tensor from its raw_data bytes (little-endian; sub-byte types packed per docs/formats.md §0.3)."""
    count = math.prod(shape)
    if dtype.name in _NIBBLE:
        return unpack_nibbles(raw, count, dtype.numpy).reshape(shape)
    if dtype.name in _CRUMB:
        return _unpack_crumbs(raw, count, dtype.numpy).reshape(shape)
    if dtype.name in _SIX:
        return _unpack_six(raw, count, dtype.numpy).reshape(shape)
    return raw.view(dtype.numpy.newbyteorder("<")).reshape(shape)


# (typed field, wire width) each dtype may use, and how many entries a tensor of n elements needs.
_INT32_FIELD = {"I32", "I16", "I8", "U16", "U8", "BOOL", "F16", "BF16", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2",
                "F8_E5M2FNUZ", "F8_E8M0"} | _NIBBLE | _CRUMB | _SIX


def _typed_field(dtype: dtypes.DType) -> int | None:
    name = dtype.name
    if name in ("F32", "C64"):
        return 4
    if name in _INT32_FIELD:
        return 5
    if name == "I64":
        return 7
    if name in ("F64", "C128"):
        return 10
    if name in ("U32", "U64"):
        return 11
    return None


def _entries(dtype: dtypes.DType, count: int) -> int:
    if dtype.name in ("C64", "C128"):
        return 2 * count
    if dtype.name in _NIBBLE:
        return (count + 1) // 2
    if dtype.name in _CRUMB:
        return (count + 3) // 4
    return count


def _decode_typed(buf: np.ndarray, parts, dtype: dtypes.DType, shape: tuple, name: str, path: Path) -> np.ndarray:
    """Values from a typed field (`float_data`, `int32_data`, ...), packed or not."""
    fnum = _typed_field(dtype)
    count = math.prod(shape)
    chunks = []
    for f, w, a, b in parts:
        if f != fnum:
            raise FormatError(f"tensor {name!r}: a {dtype.name} tensor cannot use typed field {f}", path)
        data = buf[a:b]
        if f in (4, 10):
            width = 4 if f == 4 else 8
            require(w in (pb.LEN, pb.I32 if f == 4 else pb.I64) and data.size % width == 0,
                    f"tensor {name!r}: bad {'float' if f == 4 else 'double'}_data", path)
            chunks.append(data.view("<f4" if f == 4 else "<f8"))
        elif w == pb.LEN:
            chunks.append(pb.decode_varints(data, path))
        elif w == pb.VARINT:
            chunks.append(np.array([a], np.uint64))
        else:
            raise FormatError(f"tensor {name!r}: typed field {f} has wire type {w}", path)
    values = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
    want = _entries(dtype, count)
    require(values.size == want, f"tensor {name!r}: {values.size} values for {dtype.name}{list(shape)}, which needs {want}",
            path)
    n = dtype.name
    if n in ("C64", "C128"):
        real = values.astype(np.float32 if n == "C64" else np.float64)
        return real.view(dtype.numpy).reshape(shape)
    if fnum in (4, 10):
        return values.astype(dtype.numpy).reshape(shape)
    if n in _NIBBLE or n in _CRUMB:
        packed = (values & 0xFF).astype(np.uint8)
        return (unpack_nibbles(packed, count, dtype.numpy) if n in _NIBBLE
                else _unpack_crumbs(packed, count, dtype.numpy)).reshape(shape)
    if dtype.bits <= 16 and dtype.kind == "float":
        width = np.uint16 if dtype.bits == 16 else np.uint8
        return (values & (0xFFFF if dtype.bits == 16 else 0xFF)).astype(width).view(dtype.numpy).reshape(shape)
    if n in _SIX:
        return (values & 0x3F).astype(np.uint8).view(dtype.numpy).reshape(shape)
    if n == "BOOL":
        return (values != 0).reshape(shape)
    return values.view(np.int64).astype(dtype.numpy).reshape(shape) if n != "U64" else values.reshape(shape)


def _external_file(folder: Path, info: dict[str, str], name: str, path: Path) -> tuple[Path, int, int | None]:
    """(file, offset, length or None) of an external tensor, after every path check."""
    location = info.get("location")
    require(bool(location), f"tensor {name!r}: external data without a location", path)
    target = safe_member(folder, location, f"tensor {name!r}: external data")
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise FormatError(f"tensor {name!r}: external data file {location!r} is missing", path) from None
    if not resolved.is_relative_to(folder.resolve()):
        raise FormatError(f"tensor {name!r}: external data {location!r} points outside the model folder", path)
    st = os.lstat(target)
    require(not os.path.islink(target), f"tensor {name!r}: external data {location!r} is a symbolic link; refused", path)
    require(os.path.isfile(target), f"tensor {name!r}: external data {location!r} is not a regular file", path)
    require(st.st_nlink <= 1, f"tensor {name!r}: external data {location!r} has several hard links; refused", path)

    def number(key):
        text = info.get(key)
        if text is None:
            return None
        require(text.isdigit(), f"tensor {name!r}: external data {key} {text!r} is not a non-negative integer", path)
        return int(text)

    offset = number("offset") or 0
    length = number("length")
    size = st.st_size
    require(offset <= size, f"tensor {name!r}: external data offset {offset} is past the end of {location!r}", path)
    if length is not None:
        require(offset + length <= size,
                f"tensor {name!r}: external data [{offset}, {offset + length}) runs past the end of {location!r} "
                f"({size} bytes)", path)
    return target, offset, length


def _scan(path: Path) -> _Scan:
    """Walk the model's protobuf once (bounds-checked, nothing copied but small typed fields)."""
    size = path.stat().st_size
    require(size > 0, "empty file", path)
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        scan = _Scan(mm, size, path)
        scan.model_proto()
    finally:
        try:
            mm.close()
        except BufferError:
            pass  # a NumPy view of it is still referenced (by an exception's traceback); it closes when collected
    return scan


def external_entries(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(tensor name, external_data key/values) of every tensor stored outside the file, unchecked:
    for the scanner, which grades each location itself."""
    return [(name, dict(t.external)) for name, t in _scan(path).tensors if t.external is not None]


def open_onnx(path: Path) -> ModelSource:
    scan = _scan(path)

    maps: dict[Path, np.ndarray] = {}

    def mapped(file: Path) -> np.ndarray:
        if file not in maps:
            maps[file] = np.memmap(file, dtype=np.uint8, mode="r") if file.stat().st_size else np.zeros(0, np.uint8)
        return maps[file]

    folder = path.parent
    tensors: dict[str, TensorRef] = {}
    skipped_strings = 0
    for name, t in scan.tensors:
        require(t.data_type != UNDEFINED, f"tensor {name!r} has data type UNDEFINED", path)
        if t.data_type == STRING or t.strings:
            skipped_strings += 1
            continue
        dtype = dtypes.by_code("onnx", t.data_type)
        require(dtype is not None, f"tensor {name!r} has unknown data type {t.data_type}", path)
        require(all(d >= 0 for d in t.dims), f"tensor {name!r} has negative dims {t.dims}", path)
        shape = tuple(t.dims)
        count = math.prod(shape)
        require(count * max(dtype.bits, 8) < 1 << 63, f"tensor {name!r}: shape {list(shape)} overflows", path)
        nbytes = dtype.nbytes(count)
        extra = {"onnx_name": t.name}
        if t.values is not None:
            tensors[name] = TensorRef(name, dtype, shape, _constant(t.values.reshape(shape)), nbytes=nbytes, extra=extra)
        elif t.location == 1 or t.external is not None:
            require(t.location == 1 and t.external is not None and t.raw is None and not t.typed,
                    f"tensor {name!r}: inconsistent external data fields", path)
            file, offset, length = _external_file(folder, t.external, name, path)
            if length is None:
                length = file.stat().st_size - offset
            require(length == nbytes, f"tensor {name!r}: external data holds {length} bytes; "
                    f"{dtype.name}{list(shape)} needs {nbytes}", path)
            tensors[name] = TensorRef(name, dtype, shape, _raw_loader(mapped, file, offset, nbytes, dtype, shape),
                                      nbytes=nbytes, file=str(file), offset=offset, storage=(str(file), offset, nbytes),
                                      extra=extra)
        elif t.raw is not None:
            require(not t.typed, f"tensor {name!r} has both raw_data and typed values", path)
            a, b = t.raw
            require(b - a == nbytes, f"tensor {name!r}: raw_data holds {b - a} bytes; {dtype.name}{list(shape)} "
                    f"needs {nbytes}", path)
            tensors[name] = TensorRef(name, dtype, shape, _raw_loader(mapped, path, a, nbytes, dtype, shape),
                                      nbytes=nbytes, file=str(path), offset=a, storage=(str(path), a, nbytes), extra=extra)
        elif t.typed:
            require(_typed_field(dtype) is not None, f"tensor {name!r}: {dtype.name} cannot be stored in typed fields",
                    path)
            tensors[name] = TensorRef(name, dtype, shape, _typed_loader(mapped, path, t.typed, dtype, shape, name),
                                      nbytes=nbytes, file=str(path), extra=extra)
        else:
            require(count == 0, f"tensor {name!r} has no data", path)
            tensors[name] = TensorRef(name, dtype, shape, _constant(np.zeros(shape, dtype.numpy)), nbytes=0, extra=extra)

    skipped = dict(scan.skipped)
    if skipped_strings:
        skipped["string tensors"] = skipped_strings
    details: dict[str, Any] = {**scan.model, "opset_import": scan.opsets, "inputs": scan.inputs,
                               "outputs": scan.outputs, "nodes": scan.nodes,
                               "op_types": dict(sorted(scan.ops.items(), key=lambda kv: (-kv[1], kv[0])))}
    external = sorted({ref.file for ref in tensors.values() if ref.file and ref.file != str(path)})
    axes = dynamic_axes({**scan.inputs, **scan.outputs})
    if axes:
        details["dynamic_axes"] = axes
    if external:
        details["external_data_files"] = [Path(f).name for f in external]
    if skipped:
        details["not_read"] = skipped
    files = [path] + [Path(f) for f in external]
    return ModelSource(path=path, format="onnx", tensors=tensors, files=files, metadata=scan.metadata,
                       details=details, closers=[maps.clear])


def _constant(values: np.ndarray) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return values
    return load


def _raw_loader(mapped, file: Path, offset: int, nbytes: int, dtype: dtypes.DType, shape: tuple):
    def load() -> np.ndarray:
        return _from_bytes(mapped(file)[offset:offset + nbytes], dtype, shape)
    return load


def _typed_loader(mapped, path: Path, parts, dtype, shape, name):
    def load() -> np.ndarray:
        return _decode_typed(mapped(path), parts, dtype, shape, name, path)
    return load


def detect(path: Path, head: bytes) -> bool:
    """Weak: a protobuf that starts with a small `ir_version` followed by another ModelProto field."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    try:
        version, pos = pb.varint(head, 1, len(head))
        if not 1 <= version <= 64 or pos >= len(head):
            return False
        key, pos = pb.varint(head, pos, len(head))
        number, wire = key >> 3, key & 7
        if number == 1 or _MODEL_FIELDS.get(number) != wire:
            return False
        if version == 1 and number == 2:
            # ir_version 1 looks like TF SavedModel's schema version 1: ask for a readable producer name.
            n, pos = pb.varint(head, pos, len(head))
            return all(32 <= c < 127 for c in head[pos:pos + min(n, 16)])
    except FormatError:
        return False
    return True


FOLDER_MODEL = "model.onnx"


def detect_folder(folder: Path) -> bool:
    """An exported ONNX folder (modelport's, optimum's): `model.onnx` and no weights but other `.onnx` graphs."""
    return (folder / FOLDER_MODEL).is_file() and all(p.suffix.lower() == ".onnx" for p in registry.weight_files(folder))


def dynamic_axes(values: dict[str, str]) -> list[str]:
    """The named (dynamic) dimensions of graph inputs/outputs described as `F32[batch, 2, past_sequence, 8]`."""
    names: list[str] = []
    for desc in values.values():
        inside = desc[desc.find("[") + 1: desc.rfind("]")] if "[" in desc else ""
        for dim in (d.strip() for d in inside.split(",")):
            if dim and not dim.isdigit() and dim not in names:
                names.append(dim)
    return names


def open_folder(folder: Path) -> ModelSource:
    """`model.onnx` of an exported folder, with the folder's side files (config, tokenizer, modelport_onnx.json);
    other graphs beside it (model_int8.onnx) are listed as variants, with their external data kept out of the side
    files."""
    source = open_onnx(folder / FOLDER_MODEL)
    source.path = folder
    used = {f.resolve() for f in source.files}
    variants = [p for p in registry.weight_files(folder) if p.name != FOLDER_MODEL]
    for variant in variants:
        used.add(variant.resolve())
        for _, info in external_entries(variant):
            location = info.get("location", "")
            if location and (folder / location).is_file():
                used.add((folder / location).resolve())
    source.side_files = registry.side_files(folder, used)
    if "config.json" in source.side_files:
        source.config = read_json(source.side_files["config.json"])
    if variants:
        source.details["variants"] = [v.name for v in variants]
    return source


def open_path(path: Path) -> ModelSource:
    return open_folder(path) if path.is_dir() else open_onnx(path)


FORMAT = FormatSpec(
    name="onnx",
    extensions=(".onnx",),
    detect=detect,
    open=open_path,
    detect_folder=detect_folder,
    write=None,
    description="ONNX (weights of the graph; read only)",
)
