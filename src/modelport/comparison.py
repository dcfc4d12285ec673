"""`diff`: two models, any formats, tensor by tensor.

Values are compared in float64 in chunks, so memory stays about one tensor whatever the model.
A GGUF compared with a model in Hugging Face naming (an HF folder, safetensors, a .bin) is first read
back the way `convert --to hf` would write it (names, Q/K order, norm offsets undone by its family),
so an HF folder and the GGUF made from it compare tensor by tensor.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .core import dtypes
from .core.source import ModelSource
from .core.tensor import TensorRef
from .gguf import to_hf
from .opening import open as open_model

CHUNK = 1 << 22   # elements compared at a time


@dataclass
class TensorDiff:
    name: str
    status: str   # equal (bit-identical), close (within tolerance), different, shape, dtype (differs without tolerance)
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mismatched: int = 0


@dataclass
class DiffReport:
    a: str
    b: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    tensors: list[TensorDiff] = field(default_factory=list)
    renamed: str | None = None     # "b" when B (a GGUF) was read in A's Hugging Face naming, "a" the other way

    @property
    def equal(self) -> bool:
        return not self.only_in_a and not self.only_in_b and all(t.status in ("equal", "close") for t in self.tensors)

    def to_dict(self) -> dict:
        return {**asdict(self), "equal": self.equal}


def _values(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr).reshape(-1)
    if np.iscomplexobj(arr):
        return arr.astype(np.complex128)
    return arr.astype(np.float64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays of one dtype hold the same bytes, compared as whole words (several times faster than floats)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(a.dtype.itemsize, np.uint8)
    return bool(np.array_equal(a.view(word), b.view(word)))


def compare_arrays(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> tuple[bool, float, float, int]:
    """(bit-identical, max |a-b|, max |a-b|/|b|, elements outside atol + rtol*|b|)."""
    flat_a, flat_b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    identical = flat_a.dtype == flat_b.dtype
    max_abs = max_rel = 0.0
    bad = 0
    for start in range(0, flat_a.size, CHUNK):
        ca, cb = flat_a[start:start + CHUNK], flat_b[start:start + CHUNK]
        if identical:
            identical = same_bits(ca, cb)
            if identical:      # nothing to measure in a chunk that is bit for bit the same (the common case)
                continue
        va, vb = _values(ca), _values(cb)
        with np.errstate(invalid="ignore", divide="ignore"):
            same = (va == vb) | (np.isnan(va) & np.isnan(vb))      # equal infinities and two NaNs differ by nothing
            delta = np.where(same, 0.0, np.abs(va - vb))
            delta = np.where(np.isnan(delta), np.inf, delta)
            scale = np.abs(vb)
            if delta.size:
                max_abs = max(max_abs, float(delta.max()))
                rel = np.where(delta == 0, 0.0, delta / scale)
                max_rel = max(max_rel, float(np.nan_to_num(rel, nan=np.inf).max()))
                bad += int(np.count_nonzero(delta > atol + rtol * scale))
    return identical, max_abs, max_rel, bad


class Named:
    """What `diff` compares: tensors by name, plus the names a file dropped as aliases of others."""

    def __init__(self, tensors: dict[str, TensorRef], aliases: dict[str, str]):
        self.tensors, self.aliases = tensors, aliases

    @classmethod
    def of(cls, source: ModelSource) -> Named:
        return cls(source.tensors, source.aliases)

    def names(self) -> list[str]:
        return list(self.tensors) + [n for n in self.aliases if n not in self.tensors]

    def get(self, name: str) -> TensorRef:
        return self.tensors[name] if name in self.tensors else self.tensors[self.aliases[name]]


def in_hf_naming(gguf: ModelSource, other: ModelSource) -> Named:
    """The GGUF's tensors as `convert --to hf` writes them, in the float type the other model mostly uses."""
    kinds = [r.dtype for r in other.tensors.values() if r.dtype.is_float and len(r.shape) >= 2]
    dtype = max(set(kinds), key=kinds.count) if kinds else None
    if dtype is not None and dtype.name not in dtypes.HF_DTYPE_NAMES:
        dtype = None
    _, refs, _ = to_hf.plan(gguf, dtype)
    return Named({r.name: r for r in refs}, {})


def naming_bridge(sa: ModelSource, sb: ModelSource) -> tuple[Named, Named, str | None]:
    """A GGUF against a model in HF naming that shares few names with it: read the GGUF in HF naming."""
    na, nb = Named.of(sa), Named.of(sb)
    if (sa.format == "gguf") == (sb.format == "gguf"):
        return na, nb, None
    common = len(set(na.names()) & set(nb.names()))
    if common * 2 >= min(len(na.names()), len(nb.names())):
        return na, nb, None
    if sb.format == "gguf":
        return na, in_hf_naming(sb, sa), "b"
    return in_hf_naming(sa, sb), nb, "a"


def diff(a: str | os.PathLike, b: str | os.PathLike, *, atol: float = 0.0, rtol: float = 0.0,
         trust: bool = False) -> DiffReport:
    """Compare every tensor of `a` with the same-named tensor of `b` (exact unless atol/rtol given)."""
    with open_model(a, trust=trust) as sa, open_model(b, trust=trust) as sb:
        na, nb, renamed = naming_bridge(sa, sb)
        report = DiffReport(str(a), str(b), renamed=renamed)
        names_a = na.names()
        names_b = set(nb.names())
        report.only_in_a = [n for n in names_a if n not in names_b]
        report.only_in_b = sorted(n for n in names_b if n not in set(names_a))
        for name in names_a:
            if name not in names_b:
                continue
            ra, rb = na.get(name), nb.get(name)
            row = TensorDiff(name, "equal", list(ra.shape), list(rb.shape), ra.dtype.name, rb.dtype.name)
            if ra.shape != rb.shape:
                row.status = "shape"
            else:
                identical, row.max_abs, row.max_rel, row.mismatched = compare_arrays(ra.read(), rb.read(), atol, rtol)
                if not identical:
                    tolerant = bool(atol or rtol)
                    if ra.dtype != rb.dtype and not tolerant:
                        row.status = "dtype"
                    else:
                        row.status = "close" if row.mismatched == 0 else "different"
            report.tensors.append(row)
        return report
