"""ggml's own quantizer as the tests' oracle: `ggml_quantize_chunk` from the libggml-base llama-cpp-python ships,
called through ctypes, with or without importance weights."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from gguf import GGMLQuantizationType
from modelport.core.dtypes import DTYPES


def ggml_quantizer() -> Callable[..., np.ndarray]:
    """`run(x, type_name, imatrix=None)` → ggml's bytes for the (rows, n) float32 array `x` (skips without llama_cpp)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    libdir = Path(llama_cpp.__file__).parent / "lib"
    path = next(iter(sorted(libdir.glob("libggml-base.*"))), None)
    assert path is not None, f"no libggml-base in {libdir}"
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]

    def run(x: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, n = x.shape
        dt = DTYPES[name] if name in DTYPES and DTYPES[name].is_quantized else None
        out = np.zeros((rows, n // dt.block_size * dt.type_size if dt else n * 2), np.uint8)   # F16/BF16: 2 bytes each
        im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        size = lib.ggml_quantize_chunk(int(GGMLQuantizationType[name]), x.ctypes.data, out.ctypes.data, 0, rows, n,
                                       None if im is None else im.ctypes.data)
        assert size == out.nbytes
        return out

    return run
