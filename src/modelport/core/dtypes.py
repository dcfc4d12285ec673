"""One dtype table for every format.

Each row is a canonical dtype (named like safetensors: F32, BF16, F8_E4M3, ...) with its NumPy
type (ml_dtypes for bf16 and fp8) and the code each container format stores for it. Format modules
look dtypes up here by their own code instead of keeping tables of their own.

Block-quantized types (GGUF Q4_K, ...) are rows too: they have no NumPy element type, a block of
`block_size` elements takes `type_size` bytes, and `TensorRef.read()` dequantizes them to F32.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str                      # canonical name: "F32", "BF16", "Q4_K", ...
    numpy: np.dtype | None         # element type in memory; None for block-quantized types
    kind: str                      # "float", "int", "uint", "bool", "complex", "quant"
    bits: int                      # bits per element in storage (for quant: per block / block_size)
    safetensors: str | None = None
    torch: str | None = None       # attribute name in the torch module: "float32", ...
    onnx: int | None = None
    tf: int | None = None
    tflite: int | None = None
    gguf: int | None = None
    block_size: int = 1            # elements per block (quant types)
    type_size: int = 0             # bytes per block (quant types)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_quantized(self) -> bool:
        return self.kind == "quant"

    def nbytes(self, numel: int) -> int:
        """Bytes that `numel` elements of this type take on disk."""
        if self.is_quantized:
            if numel % self.block_size:
                raise ValueError(f"{numel} elements is not a multiple of the {self.name} block size {self.block_size}")
            return numel // self.block_size * self.type_size
        return (numel * self.bits + 7) // 8

    def __str__(self) -> str:
        return self.name


def _d(name, np_type, kind, bits, st=None, torch=None, onnx=None, tf=None, tflite=None, gguf=None):
    return DType(name, np.dtype(np_type) if np_type is not None else None, kind, bits,
                 st, torch, onnx, tf, tflite, gguf)


_ROWS = [
    _d("BOOL", np.bool_, "bool", 8, "BOOL", "bool", 9, 10, 6),
    _d("U8", np.uint8, "uint", 8, "U8", "uint8", 2, 4, 3),
    _d("I8", np.int8, "int", 8, "I8", "int8", 3, 6, 9, 24),
    _d("U16", np.uint16, "uint", 16, "U16", "uint16", 4, 17, 16),
    _d("I16", np.int16, "int", 16, "I16", "int16", 5, 5, 7, 25),
    _d("U32", np.uint32, "uint", 32, "U32", "uint32", 12, 22, 15),
    _d("I32", np.int32, "int", 32, "I32", "int32", 6, 3, 2, 26),
    _d("U64", np.uint64, "uint", 64, "U64", "uint64", 13, 23, 12),
    _d("I64", np.int64, "int", 64, "I64", "int64", 7, 9, 4, 27),
    _d("F16", np.float16, "float", 16, "F16", "float16", 10, 19, 1, 1),
    _d("BF16", ml_dtypes.bfloat16, "float", 16, "BF16", "bfloat16", 16, 14, 18, 30),
    _d("F32", np.float32, "float", 32, "F32", "float32", 1, 1, 0, 0),
    _d("F64", np.float64, "float", 64, "F64", "float64", 11, 2, 10, 28),
    _d("C64", np.complex64, "complex", 64, "C64", "complex64", 14, 8, 8),
    _d("C128", np.complex128, "complex", 128, None, "complex128", 15, 18, 11),
    _d("F8_E4M3", ml_dtypes.float8_e4m3fn, "float", 8, "F8_E4M3", "float8_e4m3fn", 17, 25),
    _d("F8_E4M3FNUZ", ml_dtypes.float8_e4m3fnuz, "float", 8, "F8_E4M3FNUZ", "float8_e4m3fnuz", 18, 26),
    _d("F8_E5M2", ml_dtypes.float8_e5m2, "float", 8, "F8_E5M2", "float8_e5m2", 19, 24),
    _d("F8_E5M2FNUZ", ml_dtypes.float8_e5m2fnuz, "float", 8, "F8_E5M2FNUZ", "float8_e5m2fnuz", 20, 28),
    _d("F8_E8M0", ml_dtypes.float8_e8m0fnu, "float", 8, "F8_E8M0", "float8_e8m0fnu", 24),
    # Sub-byte types: one element per byte in memory (ml_dtypes); packing is the format's business.
    _d("I4", ml_dtypes.int4, "int", 4, None, None, 22, 29, 17),
    _d("U4", ml_dtypes.uint4, "uint", 4, None, None, 21, 30, 20),
    _d("I2", ml_dtypes.int2, "int", 2, None, None, 26, 31, 19),
    _d("U2", ml_dtypes.uint2, "uint", 2, None, None, 25, 32),
    _d("F4", ml_dtypes.float4_e2m1fn, "float", 4, "F4", None, 23, 33),
    _d("F6_E2M3", ml_dtypes.float6_e2m3fn, "float", 6, "F6_E2M3", None, 27),
    _d("F6_E3M2", ml_dtypes.float6_e3m2fn, "float", 6, "F6_E3M2", None, 28),
]


def _quant_rows() -> list[DType]:
    """GGML block-quantized types, with block geometry from gguf-py (the format's own constants)."""
    from gguf.constants import GGML_QUANT_SIZES

    rows = []
    for qtype, (block_size, type_size) in GGML_QUANT_SIZES.items():
        if block_size == 1:
            continue  # F32, F16, BF16, I8, ... are plain element types above
        rows.append(DType(qtype.name, None, "quant", type_size * 8 // block_size if type_size * 8 % block_size == 0 else 0,
                          gguf=int(qtype), block_size=block_size, type_size=type_size))
    return rows


DTYPES: dict[str, DType] = {row.name: row for row in _ROWS + _quant_rows()}

_BY_NUMPY = {row.numpy: row for row in _ROWS}
_INDEXES: dict[str, dict] = {
    field: {getattr(row, field): row for row in DTYPES.values() if getattr(row, field) is not None}
    for field in ("safetensors", "torch", "onnx", "tf", "tflite", "gguf")
}

F32, F16, BF16 = DTYPES["F32"], DTYPES["F16"], DTYPES["BF16"]

#: The float dtypes a Hugging Face config.json names (its "dtype", formerly "torch_dtype"): canonical -> HF name.
HF_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def by_code(fmt: str, code) -> DType | None:
    """The dtype a format stores under `code` (fmt: safetensors, torch, onnx, tf, tflite, gguf), or None."""
    return _INDEXES[fmt].get(code)


def from_numpy(dtype: np.dtype) -> DType | None:
    """The canonical dtype of a NumPy (or ml_dtypes) element type, byte order ignored."""
    dtype = np.dtype(dtype)
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    return _BY_NUMPY.get(dtype)


def parse(name: str) -> DType:
    """A dtype from what a person types: f16, fp16, float16, bf16, F8_E4M3, q4_k, ..."""
    key = name.strip().upper().replace("FLOAT", "F").replace("FP", "F")
    key = {"HALF": "F16", "DOUBLE": "F64", "F": "F32", "BFLOAT16": "BF16", "BF": "BF16"}.get(key, key)
    if key in DTYPES:
        return DTYPES[key]
    raise ValueError(f"unknown dtype {name!r}")
