"""`TensorRef`: a named tensor that reads nothing until asked.

Readers build one per tensor from the file's header: name, dtype, shape, byte size and a loader.
`read()` returns a NumPy array, a zero-copy view of the memory-mapped file where the layout allows
(contiguous, aligned, little-endian). Transforms (cast, rename, permute, quantize) wrap a ref in a
new ref with a new loader, so a conversion stays a lazy stream until a writer pulls each tensor.

Block-quantized refs (GGUF Q4_K, ...) also carry `raw_loader`: their stored blocks, untouched, which is
what a writer copies so that a quantized tensor stays byte-identical, and what `read_raw()` returns.
"""

from __future__ import annotations

import builtins
import math
import mmap
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable

import numpy as np

from .dtypes import DType
from .errors import UnsupportedError


def map_bytes(path, start: int, nbytes: int) -> np.ndarray:
    """A read-only uint8 view of `nbytes` at `start`, mapped on demand.

    One mapping per read, released with the array: touched pages leave the process with the tensor,
    so streaming a whole model keeps resident memory at about one tensor.
    """
    if nbytes == 0:
        return np.empty(0, np.uint8)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with builtins.open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), start - base + nbytes, access=mmap.ACCESS_READ, offset=base)
    return np.frombuffer(mapped, np.uint8, count=nbytes, offset=start - base)


@dataclass
class TensorRef:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    loader: Callable[[], np.ndarray] = field(repr=False)
    nbytes: int = -1                        # bytes on disk; computed from dtype and shape when -1
    file: str | None = None                 # the file the bytes live in
    offset: int | None = None               # absolute byte offset in `file`, where the layout has one
    storage: Hashable | None = field(default=None, repr=False)
    """Identity of the underlying storage and view (file, key, offset, shape, strides) for formats where
    tensors can alias (torch views, tied weights). Two refs with equal `storage` are the same tensor."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    raw_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    """Returns the tensor's stored bytes as uint8 (rows along the last axis, or flat), untouched. Every ref of a
    block-quantized type must have it (a writer copies the blocks from it); readers may set it for others too."""

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        if self.nbytes < 0:
            self.nbytes = self.dtype.nbytes(self.numel)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def read(self) -> np.ndarray:
        """The tensor's values (block-quantized types come back dequantized as float32)."""
        return self.loader()

    def read_raw(self) -> np.ndarray:
        """The stored blocks of a block-quantized tensor as uint8, not dequantized (see `raw_loader`)."""
        if self.raw_loader is None:
            raise UnsupportedError(f"tensor {self.name!r}: {self.dtype.name} tensor without its raw blocks", self.file)
        return self.raw_loader()

    def derive(self, loader: Callable[[], np.ndarray], **changes) -> TensorRef:
        """A new lazy ref computed from this one (new loader; dtype/shape/name as changed).

        The raw blocks stay only while the dtype does: a ref cast or dequantized to another type has none."""
        if changes.get("dtype", self.dtype) != self.dtype:
            changes.setdefault("raw_loader", None)
        changes.setdefault("nbytes", -1)
        changes.setdefault("file", None)
        changes.setdefault("offset", None)
        return replace(self, loader=loader, **changes)


def cast(ref: TensorRef, dtype: DType) -> TensorRef:
    """Cast a floating tensor to another float dtype lazily; others pass through unchanged."""
    if not ref.dtype.is_float or ref.dtype == dtype or ref.dtype.is_quantized:
        return ref
    target = dtype.numpy

    def load() -> np.ndarray:
        return np.asarray(ref.read()).astype(target)

    return ref.derive(load, dtype=dtype, storage=None)
