"""NumPy `.npy` and `.npz`: read lazily and never with pickles, write one array at a time.

`np.load` would read `.npz` members whole (its `mmap_mode` is ignored for archives) and object
arrays need `allow_pickle`. We parse the small `.npy` header ourselves (a literal, capped at 10 kB
like NumPy), memory-map stored members at their data offset, and refuse object dtypes outright.

bf16 and fp8 arrays have no `.npy` type code (NumPy writes them as raw void `V2`/`V1`), so the
writer records the real dtypes in a small `modelport.json` member and the reader restores them.
"""

from __future__ import annotations

import ast
import json
import struct
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, UnsafeFileError, UnsupportedError, require
from ..core.source import ModelSource, loads_json, tensor_list
from ..core.tensor import TensorRef, map_bytes
from ..core.zipmember import check_member
from .registry import ZIP_ERRORS, FormatSpec, zip_names

NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000
SIDECAR = "modelport.json"
SIDECAR_CAP = 64 * 1024 * 1024


def _parse_npy_header(buf: bytes, where: str, path: Path) -> tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran_order, header length) from the first bytes of a `.npy` stream."""
    require(len(buf) >= 10 and buf[:6] == NPY_MAGIC, f"{where}: not a .npy array", path)
    major = buf[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", buf[8:10]), 10
    elif major in (2, 3):
        require(len(buf) >= 12, f"{where}: truncated .npy header", path)
        (hlen,), start = struct.unpack("<I", buf[8:12]), 12
    else:
        raise FormatError(f"{where}: unknown .npy version {major}", path)
    require(hlen <= MAX_HEADER, f"{where}: .npy header of {hlen} bytes is over the {MAX_HEADER} limit", path)
    require(len(buf) >= start + hlen, f"{where}: truncated .npy header", path)
    text = buf[start:start + hlen].decode("utf-8" if major == 3 else "latin1")
    try:
        header = ast.literal_eval(text)  # literals only: no names, no calls
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise FormatError(f"{where}: .npy header is not a literal dict", path) from None
    require(isinstance(header, dict) and set(header) == {"descr", "fortran_order", "shape"},
            f"{where}: .npy header must have exactly descr, fortran_order and shape", path)
    shape, fortran = header["shape"], header["fortran_order"]
    require(isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape),
            f"{where}: bad shape {shape!r}", path)
    require(isinstance(fortran, bool), f"{where}: bad fortran_order", path)
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError):
        raise FormatError(f"{where}: unknown dtype {header['descr']!r}", path) from None
    if dtype.hasobject:
        raise UnsafeFileError(f"{where}: object array: its data is a pickle, which could run code; refused", path)
    require(dtype.names is None and dtype.subdtype is None, f"{where}: structured dtypes are not weights", path)
    return dtype, shape, fortran, start + hlen


def _canonical(dtype: np.dtype, real: str | None, where: str, path: Path) -> dtypes.DType:
    if real is not None:
        found = dtypes.DTYPES.get(real)
        require(found is not None and found.numpy is not None and found.numpy.itemsize == dtype.itemsize,
                f"{where}: modelport.json names dtype {real!r} that does not fit {dtype}", path)
        return found
    found = dtypes.from_numpy(dtype)
    if found is None:
        raise UnsupportedError(f"{where}: dtype {dtype} is not a tensor dtype modelport knows", path)
    return found


def _array_ref(name, path, data_offset, np_dtype, shape, fortran, dtype, read_raw=None) -> TensorRef:
    """A lazy ref for one array stored at `data_offset` (or produced by `read_raw()` for compressed members)."""
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * np_dtype.itemsize

    def load() -> np.ndarray:
        if read_raw is not None:
            raw = np.frombuffer(read_raw(), dtype=np.uint8)
        else:
            raw = map_bytes(path, data_offset, nbytes)
        arr = raw.view(np_dtype)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
        if np_dtype.byteorder == ">":
            arr = arr.astype(np_dtype.newbyteorder("<"))
        return arr.view(dtype.numpy) if np_dtype.kind == "V" else arr

    return TensorRef(name, dtype, shape, load, nbytes=nbytes, file=str(path), offset=data_offset if read_raw is None else None)


def detect(path: Path, head: bytes) -> bool:
    if head.startswith(NPY_MAGIC):
        return True
    if not head.startswith(b"PK\x03\x04"):
        return False
    names = zip_names(path)
    return bool(names) and all(n.endswith(".npy") or n == SIDECAR for n in names)


def open_npy(path: Path) -> ModelSource:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12 + MAX_HEADER)
    np_dtype, shape, fortran, data_offset = _parse_npy_header(head, path.name, path)
    dtype = _canonical(np_dtype, None, path.name, path) if np_dtype.kind != "V" else dtypes.DTYPES["U8"]
    if np_dtype.kind == "V":  # bf16/fp8 saved without their type: expose raw bytes
        shape = (*shape, np_dtype.itemsize)
        np_dtype = np.dtype(np.uint8)
    need = data_offset + int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    require(need == size, f"file is {size} bytes, the header needs {need}", path)
    ref = _array_ref(path.stem, path, data_offset, np_dtype, shape, fortran, dtype)
    return ModelSource(path=path, format="numpy", tensors={ref.name: ref}, files=[path], details={"container": "npy"})


def _member_data_offset(f, info: zipfile.ZipInfo, path: Path) -> int:
    f.seek(info.header_offset)
    local = f.read(30)
    require(len(local) == 30 and local[:4] == b"PK\x03\x04", f"member {info.filename!r}: bad local header", path)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    name = f.read(name_len)
    require(name.decode("utf-8", "replace") == info.filename or name.decode("cp437", "replace") == info.filename,
            f"member {info.filename!r}: local header names {name!r}", path)
    return info.header_offset + 30 + name_len + extra_len


def open_npz(path: Path) -> ModelSource:
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise FormatError(f"corrupt zip archive ({exc})", path) from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        require(len(set(names)) == len(names), "duplicate member names in the archive", path)
        real_dtypes, metadata = {}, {}
        if SIDECAR in names:
            info = zf.getinfo(SIDECAR)
            require(info.file_size <= SIDECAR_CAP, f"{SIDECAR} is too large", path)
            check_member(info, size, path)
            side = loads_json(zf.read(SIDECAR).decode("utf-8"), path, SIDECAR)
            require(isinstance(side, dict) and all(isinstance(side.get(k, {}), dict) for k in ("dtypes", "metadata", "aliases")),
                    f"{SIDECAR} is not an object of dtypes, metadata and aliases", path)
            real_dtypes, metadata = side.get("dtypes", {}), side.get("metadata", {})
        tensors = {}
        with path.open("rb") as f:
            for info in infos:
                if info.filename == SIDECAR:
                    continue
                name = info.filename[:-4]
                stored = info.compress_type == zipfile.ZIP_STORED
                check_member(info, size, path)
                if stored:
                    offset = _member_data_offset(f, info, path)
                    require(offset + info.file_size <= size, f"member {info.filename!r} runs past the end of the file", path)
                    f.seek(offset)
                    head = f.read(min(info.file_size, 12 + MAX_HEADER))
                else:
                    with zf.open(info) as m:
                        head = m.read(12 + MAX_HEADER)
                np_dtype, shape, fortran, hlen = _parse_npy_header(head, info.filename, path)
                dtype = _canonical(np_dtype, real_dtypes.get(name), info.filename, path)
                need = hlen + int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
                require(need == info.file_size, f"member {info.filename!r} is {info.file_size} bytes, its header needs {need}", path)
                if stored:
                    tensors[name] = _array_ref(name, path, offset + hlen, np_dtype, shape, fortran, dtype)
                else:
                    tensors[name] = _array_ref(name, path, None, np_dtype, shape, fortran, dtype,
                                               read_raw=_compressed_reader(path, info.filename, hlen))
    return ModelSource(path=path, format="numpy", tensors=tensors, files=[path],
                       metadata={str(k): str(v) for k, v in metadata.items()},
                       aliases={str(k): str(v) for k, v in side.get("aliases", {}).items()} if SIDECAR in names else {},
                       details={"container": "npz"})


def _compressed_reader(path: Path, member: str, hlen: int):
    def read() -> bytes:
        with zipfile.ZipFile(path) as zf, zf.open(member) as m:   # damage surfaces here: the registry's boundary
            m.read(hlen)
            return m.read()
    return read


def open_numpy(path: Path) -> ModelSource:
    with path.open("rb") as f:
        magic = f.read(6)
    return open_npy(path) if magic == NPY_MAGIC else open_npz(path)


def write_npz(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
              aliases: dict | None = None, progress=None) -> None:
    """An uncompressed `.npz`, streamed member by member; `np.load` reads it back."""
    real = {}
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for ref in tensor_list(tensors):
            if ref.dtype.numpy is None:
                raise UnsupportedError(f"tensor {ref.name!r}: NumPy has no {ref.dtype.name}; use --dequantize", dst)
            arr = np.asarray(ref.read(), dtype=ref.dtype.numpy, order="C")
            if np.lib.format.dtype_to_descr(arr.dtype).startswith(("|V", "<V")):
                real[ref.name] = ref.dtype.name
            with zf.open(ref.name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
            if progress:
                progress(ref)
        if real or metadata or aliases:
            zf.writestr(SIDECAR, json.dumps({"dtypes": real, "metadata": metadata or {}, "aliases": aliases or {}}))


FORMAT = FormatSpec(
    name="numpy",
    extensions=(".npz", ".npy"),
    detect=detect,
    open=open_numpy,
    write=write_npz,
    description="NumPy .npy / .npz",
    options={"aliases": ("npz", "npy")},
)
