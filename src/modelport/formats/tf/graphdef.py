"""Frozen `GraphDef` `.pb` files: the `Const` nodes, also those inside library functions.

`tensor_content` is memory-mapped; typed `*_val` lists are decoded with TF's fill rule (fewer values
than elements: the last one repeats; none: zeros), within a cap on how far a constant may expand.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np

from ...core import dtypes
from ...core import protobuf as pb
from ...core.errors import FormatError, require
from ...core.source import ModelSource
from ...core.tensor import TensorRef
from .tensor_proto import keep_low_bits, read_shape

DECODED_CAP = 1 << 30   # typed-value constants may expand (fill rule) to at most this many bytes …
DECODED_RATIO = 64      # … or this many times the file size, whichever is larger

# TensorProto typed-value field for each canonical dtype: (field number, element kind).
_TYPED = {"F32": (5, "f4"), "F64": (6, "f8"), "I32": (7, "varint"), "I16": (7, "varint"), "I8": (7, "varint"),
          "U8": (7, "varint"), "U16": (7, "varint"), "I4": (7, "varint"), "U4": (7, "varint"), "I2": (7, "varint"),
          "U2": (7, "varint"), "F4": (7, "varint"), "C64": (9, "f4"), "I64": (10, "varint"), "BOOL": (11, "varint"),
          "C128": (12, "f8"), "F16": (13, "varint"), "BF16": (13, "varint"), "U32": (16, "varint"),
          "U64": (17, "varint"), "F8_E4M3": (18, "bytes"), "F8_E5M2": (18, "bytes"), "F8_E4M3FNUZ": (18, "bytes"),
          "F8_E5M2FNUZ": (18, "bytes")}


def looks_like_graphdef(head: bytes) -> bool:
    """Whether a file's first bytes look like a GraphDef: a node (field 1) whose first fields are name (1) then
    op (2), both short text. Detection and the scanner both ask; a GraphDef has no magic number."""
    try:
        if head[:1] != b"\x0a":
            return False
        _, p = pb.varint(head, 1, len(head))
        if head[p:p + 1] != b"\x0a":
            return False
        n, p = pb.varint(head, p + 1, len(head))
        name = head[p:p + n]
        if len(name) != n or not name.isascii() or not (name.decode().isprintable() and n):
            return False
        p += n
        if head[p:p + 1] != b"\x12":
            return False
        n, p = pb.varint(head, p + 1, len(head))
        op = head[p:p + n]
        return len(op) == n and 0 < n < 128 and op.isascii() and op.decode().isidentifier()
    except FormatError:
        return False


def _tensor_header(buf, a: int, b: int, path: Path, what: str) -> dict:
    t = {"dtype": 0, "shape": (), "content": None, "fields": {}}
    for num, wire, x, y in pb.fields(buf, a, b, path):
        if num == 1 and wire == pb.VARINT:
            t["dtype"] = x
        elif num == 2 and wire == pb.LEN:
            t["shape"] = read_shape(buf, x, y, path, what)
        elif num == 4 and wire == pb.LEN:
            t["content"] = (x, y)
    t["range"] = (a, b)
    return t


def _typed_values(buf, a: int, b: int, number: int, kind: str, path: Path) -> np.ndarray:
    parts = []
    for num, wire, x, y in pb.fields(buf, a, b, path):
        if num != number:
            continue
        if kind == "bytes":
            require(wire == pb.LEN, f"field {number} is not bytes", path)
            parts.append(np.frombuffer(bytes(buf[x:y]), np.uint8))
        elif kind == "varint":
            if wire == pb.VARINT:
                parts.append(np.array([x], np.uint64))
            else:
                require(wire == pb.LEN, f"field {number} has wire type {wire}", path)
                parts.append(pb.decode_varints(np.frombuffer(bytes(buf[x:y]), np.uint8), path))
        else:
            width = int(kind[1])
            require(wire == pb.LEN or wire == (pb.I32 if width == 4 else pb.I64), f"field {number} has wire type {wire}", path)
            raw = bytes(buf[x:y])
            require(len(raw) % width == 0, f"packed field {number} is not a whole number of values", path)
            parts.append(np.frombuffer(raw, "<" + kind))
    if not parts:
        return np.zeros(0, np.uint64 if kind == "varint" else np.uint8 if kind == "bytes" else "<" + kind)
    return np.concatenate(parts)


def _graph_loader(state: dict, path: Path, name: str, dtype: dtypes.DType, shape, t: dict):
    def load() -> np.ndarray:
        numel = math.prod(shape)
        if t["content"] is not None:
            x, y = t["content"]
            if "map" not in state:
                state["map"] = np.memmap(path, dtype=np.uint8, mode="r")
            return keep_low_bits(state["map"][x:y].view(dtype.numpy).reshape(shape), dtype)
        number, kind = _TYPED[dtype.name]
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            vals = _typed_values(buf, *t["range"], number, kind, path)
        if kind == "varint":
            if dtype.name in ("F16", "BF16"):
                vals = (vals & np.uint64(0xFFFF)).astype(np.uint16).view(dtype.numpy)
            elif dtype.name == "BOOL":
                vals = vals != 0
            elif dtype.kind == "int" or dtype.name == "F4":
                vals = vals.view(np.int64)
                vals = keep_low_bits(vals.astype(np.int8), dtype) if dtype.bits < 8 else vals.astype(dtype.numpy)
            else:
                vals = keep_low_bits(vals.astype(np.uint8), dtype) if dtype.bits < 8 else vals.astype(dtype.numpy)
        elif kind == "bytes":
            vals = vals.view(dtype.numpy)
        else:
            vals = vals.view(dtype.numpy) if dtype.kind == "complex" else vals.astype(dtype.numpy)
        n = vals.size
        require(n <= numel, f"constant {name!r}: {n} values for {numel} elements", path)
        if n == numel:
            return vals.reshape(shape)
        out = np.zeros(numel, dtype.numpy) if n == 0 else np.empty(numel, dtype.numpy)
        if n:
            out[:n] = vals
            out[n:] = vals[-1]
        return out.reshape(shape)
    return load


def open_graphdef(path: Path) -> ModelSource:
    """The `Const` nodes of a frozen GraphDef (also those in its function library) as lazy tensors."""
    size = path.stat().st_size
    require(size > 0, "empty file", path)
    consts: list[tuple[str, dict]] = []
    ops: dict[str, int] = {}
    skipped: list[str] = []
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:

        def node(a: int, b: int, prefix: str) -> None:
            name, op, value = "", "", None
            for num, wire, x, y in pb.fields(buf, a, b, path):
                if num == 1 and wire == pb.LEN:
                    name = pb.text(buf, x, y, "node name", path)
                elif num == 2 and wire == pb.LEN:
                    op = pb.text(buf, x, y, "op name", path)
                elif num == 5 and wire == pb.LEN:
                    key, val = "", None
                    for n2, w2, c, d in pb.fields(buf, x, y, path):
                        if n2 == 1 and w2 == pb.LEN:
                            key = pb.text(buf, c, d, "attr name", path)
                        elif n2 == 2 and w2 == pb.LEN:
                            val = (c, d)
                    if key == "value" and val is not None:
                        value = val
            ops[op] = ops.get(op, 0) + 1
            if op == "Const" and value is not None:
                for num, wire, x, y in pb.fields(buf, *value, path):
                    if num == 8 and wire == pb.LEN:
                        consts.append((prefix + name, _tensor_header(buf, x, y, path, prefix + name)))

        for num, wire, a, b in pb.fields(buf, 0, size, path):
            if num == 1 and wire == pb.LEN:
                node(a, b, "")
            elif num == 2 and wire == pb.LEN:  # FunctionDefLibrary
                for n2, w2, c, d in pb.fields(buf, a, b, path):
                    if n2 != 1 or w2 != pb.LEN:
                        continue
                    fname, nodes = "function", []
                    for n3, w3, e, g in pb.fields(buf, c, d, path):
                        if n3 == 1 and w3 == pb.LEN:  # OpDef signature: name is field 1
                            for n4, w4, h, i in pb.fields(buf, e, g, path):
                                if n4 == 1 and w4 == pb.LEN:
                                    fname = pb.text(buf, h, i, "function name", path)
                        elif n3 == 3 and w3 == pb.LEN:
                            nodes.append((e, g))
                    for e, g in nodes:
                        node(e, g, f"{fname}/")
            elif wire != pb.LEN and num not in (3, 4):
                raise FormatError(f"not a GraphDef (field {num}, wire type {wire} at top level)", path)
    require(ops, "no nodes: not a GraphDef", path)
    state: dict = {}
    tensors: dict[str, TensorRef] = {}
    cap = max(DECODED_CAP, DECODED_RATIO * size)
    for name, t in consts:
        dtype = dtypes.by_code("tf", t["dtype"])
        if dtype is None or dtype.numpy is None or t["shape"] is None or (t["content"] is None and dtype.name not in _TYPED):
            skipped.append(name)
            continue
        shape = t["shape"]
        require(all(d >= 0 for d in shape), f"constant {name!r}: unknown dimension in {list(shape)}", path)
        numel = math.prod(shape)
        nbytes = numel * dtype.numpy.itemsize
        if t["content"] is not None:
            x, y = t["content"]
            require(y - x == nbytes, f"constant {name!r}: tensor_content has {y - x} bytes, {dtype.name}{list(shape)} needs {nbytes}", path)
        else:
            require(nbytes <= cap, f"constant {name!r}: {dtype.name}{list(shape)} would expand to {nbytes} bytes; refused", path)
        require(name not in tensors, f"constant name {name!r} repeats", path)
        tensors[name] = TensorRef(name, dtype, shape, _graph_loader(state, path, name, dtype, shape, t), nbytes=nbytes,
                                  file=str(path), offset=t["content"][0] if t["content"] else None)
    details = {"container": "GraphDef", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:30])}
    if skipped:
        details["skipped_constants"] = skipped[:20]
    source = ModelSource(path=path, format="tf", tensors=tensors, files=[path], details=details)
    source.closers = [state.clear]
    return source

