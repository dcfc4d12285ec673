"""Importance matrices (llama.cpp's imatrix files): read, write, combine, per-tensor statistics.

An importance matrix holds, per weight matrix llama.cpp would quantize (GGUF names), the sum over the tokens it saw
of the squared input activation of every input column (`sums`, one row per expert for 3-D expert tensors) and how
many tokens that was (`counts`, one per expert). The quantizers weigh each column's rounding error by
`sums / counts` (`importance`), so columns that carry large activations are kept more precisely.

Two file formats, as llama.cpp's tools/imatrix and common/imatrix-loader read them:
- GGUF (current): `general.type = "imatrix"`, `imatrix.datasets` (string array), `imatrix.chunk_count`,
  `imatrix.chunk_size` (u32), and per entry two F32 tensors `<name>.in_sum2` (ne = [ncols, n_mat]) and
  `<name>.counts` (ne = [1, n_mat]), entries sorted by name; no `general.architecture`.
- legacy `.dat`: i32 entry count; per entry i32 name length, name, i32 ncall, i32 nval, nval f32 values
  (sum/count * ncall); then optionally i32 chunk count, i32 length and the dataset name.
Both are written here byte for byte as llama-imatrix writes them, so that llama-quantize `--imatrix` reads ours.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_file
from ..core.errors import FormatError

GGUF_MAGIC = b"GGUF"
ALIGNMENT = 32
IN_SUM2 = ".in_sum2"
COUNTS = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
#: The chunk size llama-imatrix assumes for legacy files when it combines them (its default context).
DEFAULT_CHUNK_SIZE = 512

_GGUF_U32, _GGUF_STRING, _GGUF_ARRAY = 4, 8, 9
_GGML_F32 = 0
_BLK = re.compile(r"blk\.(\d+)\.")


@dataclass
class Entry:
    """One weight matrix: `sums` float32 (n_mat, ncols), `counts` int64 (n_mat,)."""
    sums: np.ndarray
    counts: np.ndarray

    @property
    def ncols(self) -> int:
        return int(self.sums.shape[-1])


@dataclass
class ImportanceMatrix:
    """An imatrix as a file holds it. `legacy` entries keep the .dat form (sums already divided by the count and
    multiplied by `ncall`, counts = [ncall]) so that `importance()` is exactly what llama-quantize computes."""
    entries: dict[str, Entry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def importance(self, name: str) -> np.ndarray | None:
        """The float32 weights llama-quantize hands to the quantizer for tensor `name` (shape (n_mat, ncols), or
        (ncols,) for one matrix), or None when the file has no entry: GGUF sums / count per matrix (1 where a matrix
        saw no token), legacy sums / ncall."""
        e = self.entries.get(name)
        if e is None:
            return None
        sums = np.asarray(e.sums, np.float32)
        if self.legacy:
            ncall = int(e.counts[0]) if e.counts.size else 0
            out = sums / np.float32(ncall) if ncall > 0 else sums.copy()
        else:
            counts = np.asarray(e.counts, np.float32).reshape(-1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(counts > 0, sums / np.where(counts > 0, counts, np.float32(1)), np.float32(1))
        out = out.astype(np.float32, copy=False)
        return out.reshape(-1) if out.shape[0] == 1 else out

    def raw(self, chunk_size: int) -> ImportanceMatrix:
        """The GGUF form (raw sums and token counts); a legacy file is scaled by `chunk_size` as llama-imatrix does
        when it loads one."""
        if not self.legacy:
            return self
        entries = {}
        for name, e in self.entries.items():
            ncall = int(e.counts[0]) if e.counts.size else 0
            entries[name] = Entry((np.asarray(e.sums, np.float32) * np.float32(chunk_size)).reshape(1, -1),
                                  np.array([ncall * chunk_size], np.int64))
        return ImportanceMatrix(entries, list(self.datasets), self.chunk_count, chunk_size)


def combine(matrices: list[ImportanceMatrix], chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImportanceMatrix:
    """Several imatrices as one (llama-imatrix `--in-file A --in-file B`): sums and counts added per entry, datasets
    concatenated, the chunk count recomputed from the largest count. Legacy files are scaled by `chunk_size` first."""
    out = ImportanceMatrix(chunk_size=chunk_size)
    for m in matrices:
        m = m.raw(chunk_size)
        for name, e in m.entries.items():
            have = out.entries.get(name)
            sums = np.asarray(e.sums, np.float32).reshape(len(e.counts), -1)
            if have is None:
                out.entries[name] = Entry(sums.copy(), np.asarray(e.counts, np.int64).copy())
                continue
            if have.sums.size != sums.size:
                raise FormatError(f"imatrix entry {name!r} has {sums.size} values here and {have.sums.size} in "
                                  "another file: the files are for different models")
            if have.counts.size == 1 and e.counts.size > 1:
                have.counts = np.repeat(have.counts, e.counts.size)
                have.sums = have.sums.reshape(e.counts.size, -1)
            elif have.counts.size != e.counts.size:
                raise FormatError(f"imatrix entry {name!r}: {e.counts.size} counts against {have.counts.size}")
            have.sums = (have.sums.reshape(sums.shape) + sums).astype(np.float32)
            have.counts = have.counts + np.asarray(e.counts, np.int64)
        out.datasets += m.datasets
    most = max((int(c) for e in out.entries.values() for c in e.counts), default=0)
    out.chunk_count = most // chunk_size if chunk_size else 0
    return out


def select(m: ImportanceMatrix, include: list[str] | tuple[str, ...] = (),
           exclude: list[str] | tuple[str, ...] = ()) -> ImportanceMatrix | None:
    """llama-quantize's `--include-weights` / `--exclude-weights`: keep only the entries whose name contains one of
    `include`, or drop those that contain one of `exclude` (substrings; not both at once). None when nothing is
    left: the quantizer then works as without an imatrix, mix rules included."""
    if include and exclude:
        raise ValueError("--include-weights and --exclude-weights cannot be used together")
    if not include and not exclude:
        return m
    names = [n for n in m.entries if (any(p in n for p in include) if include else not any(p in n for p in exclude))]
    if not names:
        return None
    return ImportanceMatrix({n: m.entries[n] for n in names}, list(m.datasets), m.chunk_count, m.chunk_size, m.legacy)


# ------------------------------------------------------------------------------------------------- reading

def read(path: str | os.PathLike) -> ImportanceMatrix:
    """An imatrix file, GGUF or legacy .dat (told apart by the GGUF magic, as llama.cpp's loader does)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read the imatrix ({exc.strerror})", path) from None
    try:
        m = _read_gguf(path) if data[:4] == GGUF_MAGIC else _read_legacy(data)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise FormatError(f"not a valid imatrix file ({exc})", path) from None
    except FormatError as exc:
        exc.path = exc.path or os.fspath(path)
        raise
    if not m.entries:
        raise FormatError("the imatrix has no entries", path)
    for name, e in m.entries.items():
        if not np.all(np.isfinite(e.sums)):
            raise FormatError(f"imatrix entry {name!r} has non-finite values", path)
    return m


def _read_gguf(path: Path) -> ImportanceMatrix:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields
    m = ImportanceMatrix()
    if KEY_DATASETS in fields:
        f = fields[KEY_DATASETS]
        m.datasets = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    has_meta = all(k in fields for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
    if not has_meta:
        raise FormatError("missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size)")
    m.chunk_count = int(fields[KEY_CHUNK_COUNT].parts[-1][0])
    m.chunk_size = int(fields[KEY_CHUNK_SIZE].parts[-1][0])
    pairs: dict[str, list] = {}
    for t in reader.tensors:
        for suffix, slot in ((IN_SUM2, 0), (COUNTS, 1)):
            if t.name.endswith(suffix):
                if t.tensor_type.name != "F32":
                    raise FormatError(f"imatrix tensor {t.name!r} is {t.tensor_type.name}, not F32")
                pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
    for name, (sums, counts) in sorted(pairs.items()):
        if sums is None or counts is None:
            raise FormatError(f"imatrix entry {name!r} lacks its {'sums' if sums is None else 'counts'}")
        c = np.rint(np.asarray(counts.data, np.float32).reshape(-1)).astype(np.int64)
        s = np.asarray(sums.data, np.float32).reshape(len(c), -1).copy()
        m.entries[name] = Entry(s, c)
    return m


def _read_legacy(data: bytes) -> ImportanceMatrix:
    pos = 0

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<i", data, pos)
        pos += 4
        return v

    n = i32()
    if n < 1:
        raise FormatError("no data in the imatrix")
    m = ImportanceMatrix(legacy=True)
    for i in range(n):
        length = i32()
        if length < 0 or pos + length > len(data):
            raise ValueError(f"bad name length for entry {i + 1}")
        name = data[pos:pos + length].decode("utf-8")
        pos += length
        ncall, nval = i32(), i32()
        if nval < 1 or pos + 4 * nval > len(data):
            raise ValueError(f"bad value count for entry {name!r}")
        sums = np.frombuffer(data, "<f4", nval, pos).astype(np.float32).reshape(1, -1)
        pos += 4 * nval
        m.entries[name] = Entry(sums, np.array([ncall], np.int64))
    if pos + 4 <= len(data):                       # the trailing chunk count and dataset name are optional
        m.chunk_count = i32()
        if pos + 4 <= len(data):
            length = i32()
            if length > 0 and pos + length <= len(data):
                m.datasets.append(data[pos:pos + length].decode("utf-8"))
    return m


# ------------------------------------------------------------------------------------------------- writing

def write(m: ImportanceMatrix, dst: str | os.PathLike, *, force: bool = False, legacy: bool | None = None) -> Path:
    """Write `m` atomically: GGUF, or the legacy .dat format when `legacy` (default: when `dst` ends in .dat)."""
    dst = Path(dst)
    if legacy is None:
        legacy = dst.suffix.lower() == ".dat"
    body = _legacy_bytes(m) if legacy else _gguf_bytes(m)
    with atomic_file(dst, force) as tmp:
        Path(tmp).write_bytes(body)
    return dst


def _s(text: str) -> bytes:
    b = text.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_bytes(m: ImportanceMatrix) -> bytes:
    m = m.raw(m.chunk_size or DEFAULT_CHUNK_SIZE)
    kv = [
        _s("general.type") + struct.pack("<I", _GGUF_STRING) + _s("imatrix"),
        _s(KEY_DATASETS) + struct.pack("<IIQ", _GGUF_ARRAY, _GGUF_STRING, len(m.datasets))
        + b"".join(_s(d) for d in m.datasets),
        _s(KEY_CHUNK_COUNT) + struct.pack("<II", _GGUF_U32, m.chunk_count),
        _s(KEY_CHUNK_SIZE) + struct.pack("<II", _GGUF_U32, m.chunk_size),
    ]
    infos, blobs, offset = [], [], 0
    for name in sorted(m.entries, key=lambda n: n.encode()):
        e = m.entries[name]
        nmat = len(e.counts)
        for suffix, values, ne in ((IN_SUM2, e.sums, [e.ncols, nmat]), (COUNTS, e.counts, [1, nmat])):
            while len(ne) > 1 and ne[-1] == 1:      # ggml_n_dims: trailing ones are not written
                ne.pop()
            blob = np.ascontiguousarray(values, dtype="<f4").tobytes()
            infos.append(_s(name + suffix) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                         + struct.pack("<IQ", _GGML_F32, offset))
            blob += b"\0" * (-len(blob) % ALIGNMENT)
            blobs.append(blob)
            offset += len(blob)
    head = GGUF_MAGIC + struct.pack("<IQQ", 3, len(infos), len(kv)) + b"".join(kv) + b"".join(infos)
    head += b"\0" * (-len(head) % ALIGNMENT)
    return head + b"".join(blobs)


def _legacy_bytes(m: ImportanceMatrix) -> bytes:
    chunk = m.chunk_size or DEFAULT_CHUNK_SIZE
    raw = m.raw(chunk)
    names = sorted((n for n, e in raw.entries.items() if np.any(e.counts > 0)), key=lambda n: n.encode())
    out = [struct.pack("<i", len(names))]
    for name in names:
        e = raw.entries[name]
        ncall = (int(e.counts.max()) + chunk - 1) // chunk
        nmat = len(e.counts)
        counts = np.repeat(e.counts.astype(np.float32), e.sums.size // nmat)
        sums = e.sums.reshape(-1).astype(np.float32)
        zero = counts == 0
        values = np.where(zero, np.float32(1), sums) / np.where(zero, np.float32(1), counts) * np.float32(ncall)
        b = name.encode("utf-8")
        out.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, sums.size)
                   + values.astype("<f4").tobytes())
    dataset = (m.datasets[-1] if m.datasets else "").encode("utf-8")
    out.append(struct.pack("<ii", m.chunk_count, len(dataset)) + dataset)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------- statistics

@dataclass
class TensorStats:
    """llama-imatrix --show-statistics for one entry, over its mean squared activations (sums / counts)."""
    name: str
    layer: int | None
    tensor: str
    sum: float
    min: float
    max: float
    mean: float
    std: float
    active: float          # share of columns with mean squared activation above 1e-5
    elements: int
    entropy: float         # bits, of the columns' share of the total
    entropy_norm: float    # percent of log2(elements)
    zd: float              # share of columns more than one σ above the mean
    cos_sim: float | None  # raw sums against the same tensor one layer earlier


def _short(name: str) -> tuple[int | None, str]:
    parts = name.split(".")
    layer = int(parts[1]) if len(parts) > 1 and parts[0] == "blk" and parts[1].isdigit() else None
    tensor = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), name)
    return layer, tensor


def statistics(m: ImportanceMatrix) -> list[TensorStats]:
    """Per-entry statistics as llama-imatrix computes them, sorted as it prints them (tensor kind, then Σ down)."""
    m = m.raw(m.chunk_size or DEFAULT_CHUNK_SIZE)
    rows = []
    for name, e in m.entries.items():
        keep = e.counts > 0
        if not keep.any():
            continue
        sums = np.asarray(e.sums, np.float64).reshape(len(e.counts), -1)
        act = (sums[keep] / e.counts[keep, None]).reshape(-1)
        total = float(act.sum())
        mean = total / act.size
        std = math.sqrt(max(0.0, float((act * act).sum()) / act.size - mean * mean))
        p = act / total if total > 0 else np.zeros_like(act)
        p = p[p > 0]
        entropy = float(-(p * np.log2(p)).sum()) if total > 0 else 0.0
        zd = float(((act - mean) / std > 1).sum()) / act.size if std > 0 else 0.0
        layer, tensor = _short(name)
        rows.append(TensorStats(name, layer, tensor, total, float(act.min()), float(act.max()), mean, std,
                                float((np.abs(act) > 1e-5).mean()), int(act.size), entropy,
                                100.0 * entropy / math.log2(act.size) if act.size > 1 else 0.0, zd, None))
    by_name = {r.name: r for r in rows}
    for r in rows:
        match = _BLK.search(r.name)
        if not match:
            continue
        prev = r.name[:match.start(1)] + str(int(match.group(1)) - 1) + r.name[match.end(1):]
        if prev in by_name and m.entries[prev].sums.size == m.entries[r.name].sums.size:
            a = np.asarray(m.entries[r.name].sums, np.float64).reshape(-1)
            b = np.asarray(m.entries[prev].sums, np.float64).reshape(-1)
            r.cos_sim = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rows.sort(key=lambda r: (r.tensor, -r.sum))
    return rows


def layer_summary(rows: list[TensorStats]) -> list[dict]:
    """llama-imatrix's per-layer weighted averages (by element count) of Σ(act²), ZD and cos sim."""
    layers: dict[int, list[TensorStats]] = {}
    for r in rows:
        if r.layer is not None:
            layers.setdefault(r.layer, []).append(r)
    out = []
    for layer in sorted(layers):
        rs = layers[layer]
        n = sum(r.elements for r in rs)
        out.append({"layer": layer, "sum": sum(r.elements * r.sum for r in rs) / n,
                    "zd": sum(r.elements * r.zd for r in rs) / n,
                    "cos_sim": sum(r.elements * (r.cos_sim or 0.0) for r in rs) / n})
    return out
