"""Pieces of TensorFlow's tensor protos that bundles and GraphDefs share: shapes and sub-byte values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core import dtypes
from ...core import protobuf as pb
from ...core.errors import require


def read_shape(buf, a: int, b: int, path: Path, what: str) -> tuple[int, ...] | None:
    """A `TensorShapeProto` in buf[a:b] as a tuple (-1 for an unknown dimension); None when the rank is unknown."""
    dims = []
    for num, wire, x, y in pb.fields(buf, a, b, path):
        if num == 2 and wire == pb.LEN:
            size = 0
            for n2, w2, v, _ in pb.fields(buf, x, y, path):
                if n2 == 1 and w2 == pb.VARINT:
                    size = pb.signed(v)
            require(size >= -1, f"{what}: bad dimension {size}", path)
            dims.append(size)
            require(len(dims) <= 64, f"{what}: more than 64 dimensions", path)
        elif num == 3 and wire == pb.VARINT and x:
            return None
    return tuple(dims)


def keep_low_bits(arr: np.ndarray, dtype: dtypes.DType) -> np.ndarray:
    """Sub-byte dtypes (DT_INT4 …) are one byte per element with the value in the low bits: drop the rest."""
    if dtype.bits < 8:
        mask = (1 << dtype.bits) - 1
        return (arr.view(np.uint8) & mask).view(dtype.numpy)
    return arr

