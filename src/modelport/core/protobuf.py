"""A bounds-checked protobuf wire-format walker (no schema, no objects, no copies).

Why our own: the protobuf runtime (and `onnx.load`, TensorFlow's parsers) materialise the whole
message, inline tensor bytes included, and trust lengths up to the 2 GiB message limit. To read
weights lazily we only need to walk the fields of a message, skip what we do not use and remember
where each bytes field lies in the file; then the tensor data is memory-mapped later. Every length
and varint is checked against the end of the enclosing message before it is used.

Shared by the ONNX and TensorFlow readers. Usage:

    for field, wire, a, b in fields(buf, start, end, path):
        # wire VARINT: a is the value (unsigned 64-bit), b == a's end position
        # wire LEN / I32 / I64: the payload is buf[a:b]
"""

from __future__ import annotations

import struct
from typing import Iterator

import numpy as np

from ..core.errors import FormatError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
MAX_VARINT_BYTES = 10
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


def varint(buf, pos: int, end: int, path=None) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; it must end before `end` and take at most 10 bytes."""
    result = 0
    shift = 0
    limit = min(end, pos + MAX_VARINT_BYTES)
    while pos < limit:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    if pos >= end:
        raise FormatError(f"protobuf varint truncated at byte {pos}", path)
    raise FormatError(f"protobuf varint longer than 10 bytes at byte {pos - MAX_VARINT_BYTES}", path)


def signed(value: int) -> int:
    """A varint as the int64/int32 protobuf stores (two's complement over 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(buf, start: int, end: int, path=None) -> Iterator[tuple[int, int, int, int]]:
    """The fields of the message in buf[start:end]: (field number, wire type, a, b) as described above."""
    pos = start
    while pos < end:
        key, pos = varint(buf, pos, end, path)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise FormatError(f"protobuf field number 0 at byte {pos}", path)
        if wire == VARINT:
            value, pos = varint(buf, pos, end, path)
            yield number, wire, value, pos
        elif wire == LEN:
            n, pos = varint(buf, pos, end, path)
            if n > end - pos:
                raise FormatError(f"protobuf field {number} at byte {pos} claims {n} bytes; only {end - pos} remain "
                                  "in its message", path)
            yield number, wire, pos, pos + n
            pos += n
        elif wire == I32 or wire == I64:
            n = 4 if wire == I32 else 8
            if n > end - pos:
                raise FormatError(f"protobuf field {number} truncated at byte {pos}", path)
            yield number, wire, pos, pos + n
            pos += n
        else:
            raise FormatError(f"protobuf wire type {wire} (field {number}) at byte {pos} is not supported", path)


def text(buf, a: int, b: int, what: str, path=None) -> str:
    """A string field, strictly UTF-8."""
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not UTF-8", path) from None


def fixed32_float(buf, a: int) -> float:
    return _F32.unpack_from(buf, a)[0]


def fixed64_float(buf, a: int) -> float:
    return _F64.unpack_from(buf, a)[0]


def decode_varints(data: np.ndarray, path=None) -> np.ndarray:
    """All varints of a packed repeated field, vectorised: uint64 values (view as int64 for signed types)."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size == 0:
        return np.zeros(0, np.uint64)
    ends = np.flatnonzero(data < 0x80)
    if ends.size == 0 or ends[-1] != data.size - 1:
        raise FormatError("packed varints truncated", path)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise FormatError("packed varint longer than 10 bytes", path)
    position = np.arange(data.size) - np.repeat(starts, lengths)
    parts = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts)
