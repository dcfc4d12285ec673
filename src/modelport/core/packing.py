"""Sub-byte packing: formats store 4-bit values two to a byte, ml_dtypes keeps one per byte.

Element 0 sits in the low nibble (ONNX, TFLite, torch's float4_e2m1fn_x2, OCP MX); an odd count
is padded with a zero nibble.
"""

from __future__ import annotations

import numpy as np


def unpack_nibbles(packed: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """`count` 4-bit elements of `dtype` (an ml_dtypes 4-bit type) from packed bytes."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:count].view(dtype)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack a 4-bit ml_dtypes array (one element per byte) two to a byte."""
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8) & 0x0F
    if raw.size % 2:
        raw = np.append(raw, np.uint8(0))
    return (raw[0::2] | (raw[1::2] << 4)).astype(np.uint8)
