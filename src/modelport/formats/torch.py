"""PyTorch `.pt/.pth/.bin/.ckpt`: read without torch and without running the pickle; write `.pt` zips.

Why our own: `torch.load` needs torch and materializes every tensor; no maintained torch-free lazy
reader exists (docs/formats.md §2.11). The pickle is interpreted by `torch_pickle` (allowlist, inert
stand-ins); tensor bytes are memory-mapped from the file, so `open()` reads the zip central directory,
the pickle and one local header per storage, and `read()` touches only that tensor's bytes.

Containers: the zip format (torch >= 1.6) and the legacy single stream (`_use_new_zipfile_serialization=False`).
The legacy tar format, TorchScript archives and `torch.export` `.pt2` archives are recognised and refused
with a message saying what they are.

Writer: a zip `torch.load(weights_only=True)` accepts, laid out like torch's own (records stored and
64-byte aligned through a padding extra field, keys "0", "1", ... in order of use), streamed record by
record with `zipfile`, so memory holds one tensor at a time. Tensors with the same `storage` identity
(or named in `aliases`) are written once and pickled as views of one storage, so ties survive.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, ModelportError, UnsupportedError, require
from ..core.source import ModelSource, tensor_list
from ..core.tensor import VERBATIM, TensorRef, map_bytes
from ..core.zipmember import check_member
from . import torch_pickle
from .registry import ZIP_ERRORS, FormatSpec

MAX_PICKLE = 256 * 1024 * 1024
MAX_DEPTH = 64                   # nesting of dicts/lists in a checkpoint object
ALIGNMENT = 64
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_MAGIC_BYTES = LEGACY_MAGIC.to_bytes(10, "little")
_TORCH_MEMBER = re.compile(r"^[^/]+/(data\.pkl|data/|\.format_version|byteorder|version|archive_format|constants\.pkl|code/)")


# --- detection ------------------------------------------------------------------------------------

def _first_zip_name(head: bytes) -> str | None:
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    (name_len,) = struct.unpack("<H", head[26:28])
    return head[30:30 + name_len].decode("utf-8", "replace")


def _is_legacy_stream(head: bytes) -> bool:
    return len(head) >= 15 and head[0] == 0x80 and 2 <= head[1] <= 5 and b"\x8a\x0a" + _MAGIC_BYTES in head[:32]


def _is_legacy_tar(head: bytes) -> bool:
    return (len(head) >= 512 and head[257:262] == b"ustar"
            and head[:100].rstrip(b"\0") in (b"sys_info", b"pickle", b"storages", b"tensors"))


def detect(path: Path, head: bytes) -> bool:
    name = _first_zip_name(head)
    if name is not None:
        return bool(_TORCH_MEMBER.match(name))
    return _is_legacy_stream(head) or _is_legacy_tar(head)


# --- tensors --------------------------------------------------------------------------------------

def _swap(arr: np.ndarray, dtype: dtypes.DType) -> np.ndarray:
    """Big-endian elements to native (complex numbers swap each half)."""
    unit = dtype.numpy.itemsize // (2 if dtype.kind == "complex" else 1)
    if unit == 1:
        return arr
    words = np.ascontiguousarray(arr).view(f"u{unit}").byteswap()
    return words.view(dtype.numpy)


def _element_type(name: str | None, path: Path, what: str) -> dtypes.DType:
    dtype = dtypes.by_code("torch", name) if isinstance(name, str) else None
    if dtype is None:
        raise UnsupportedError(f"{what}: torch dtype {name!r} is not supported", path)
    if dtype.bits % 8 or dtype.numpy is None:
        raise UnsupportedError(f"{what}: torch dtype {name!r} has no byte-addressable layout here", path)
    return dtype


def _c_strides(shape: tuple) -> tuple:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _is_contiguous(shape: tuple, stride: tuple) -> bool:
    return all(d == 1 or s == c for d, s, c in zip(shape, stride, _c_strides(shape)))


def _make_ref(path: Path, name: str, t: torch_pickle.PickledTensor, records: dict, big_endian: bool) -> TensorRef:
    """A lazy ref for one pickled tensor after checking its view against its storage record."""
    root = t.storage.root or t.storage
    record_start, _ = records[root.key]
    storage_type = t.storage.stype.dtype
    if t.dtype is None:                         # v1/v2: the tensor has its storage's dtype
        require(storage_type is not None, f"tensor {name!r}: untyped storage without a dtype", path)
        dtype = _element_type(storage_type, path, f"tensor {name!r}")
    else:                                       # v3: explicit dtype over an untyped (byte) storage
        dtype = _element_type(t.dtype, path, f"tensor {name!r}")
    item = dtype.numpy.itemsize
    storage_item = torch_pickle.storage_itemsize(t.storage.stype)
    view_start = t.storage.elem_offset * storage_item   # legacy storage views
    view_bytes = t.storage.numel * storage_item
    shape, stride, offset = t.shape, t.stride, t.offset
    require(all(d >= 0 for d in shape) and all(s >= 0 for s in stride) and offset >= 0,
            f"tensor {name!r}: negative size, stride or offset ({shape}, {stride}, {offset})", path)
    numel = math.prod(shape)
    require(numel < 1 << 62, f"tensor {name!r}: shape {list(shape)} overflows", path)
    if numel:
        last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
        require((last + 1) * item <= view_bytes,
                f"tensor {name!r}: view (offset {offset}, size {list(shape)}, stride {list(stride)}) of {dtype.name} "
                f"runs past its storage {root.key!r} ({view_bytes} bytes)", path)
    base = record_start + view_start
    contiguous = _is_contiguous(shape, stride)
    nbytes = numel * item
    verbatim = contiguous and not big_endian and dtype.bits % 8 == 0   # a writer may copy the file's bytes as they are

    def load() -> np.ndarray:
        if numel == 0:
            return np.empty(shape, dtype.numpy)
        if contiguous:
            arr = map_bytes(path, base + offset * item, nbytes).view(dtype.numpy).reshape(shape)
            return _swap(arr, dtype).reshape(shape) if big_endian else arr
        span = (sum((d - 1) * s for d, s in zip(shape, stride)) + 1) * item
        elems = map_bytes(path, base + offset * item, span).view(dtype.numpy)
        view = np.lib.stride_tricks.as_strided(elems, shape=shape, strides=[s * item for s in stride],
                                               writeable=False)
        arr = np.ascontiguousarray(view)
        return _swap(arr, dtype).reshape(shape) if big_endian else arr

    return TensorRef(name, dtype, shape, load, nbytes=nbytes, file=str(path),
                     offset=base + offset * item if contiguous else None,
                     storage=(str(path), root.key, dtype.name, t.storage.elem_offset * storage_item + offset * item,
                              shape, stride),
                     extra={"parameter": True, VERBATIM: verbatim} if t.parameter else {VERBATIM: verbatim})


def _scalar(value) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (torch_pickle.TorchDType, torch_pickle.StorageType)):
        return repr(value)
    if isinstance(value, (set, frozenset)):
        return sorted((_scalar(v) for v in value), key=repr)
    return repr(value)[:200]


def _flatten(obj, path: Path) -> tuple[list[tuple[str, torch_pickle.PickledTensor]], dict[str, Any]]:
    """Tensors with dotted names and scalar leaves as metadata, walking dicts, lists and tuples."""
    tensors: list[tuple[str, torch_pickle.PickledTensor]] = []
    metadata: dict[str, Any] = {}
    if isinstance(obj, torch_pickle.PickledTensor):
        return [("tensor", obj)], metadata
    stack = [("", obj, 0)]
    while stack:
        prefix, value, depth = stack.pop()
        require(depth <= MAX_DEPTH, f"checkpoint object nests deeper than {MAX_DEPTH} levels", path)
        if isinstance(value, dict):
            items = [(_scalar(k) if not isinstance(k, str) else k, v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            if not any(isinstance(v, (torch_pickle.PickledTensor, dict, list, tuple)) for v in value):
                metadata[prefix] = [_scalar(v) for v in value]
                continue
            items = list(enumerate(value))
        elif isinstance(value, torch_pickle.PickledTensor):
            tensors.append((prefix, value))
            continue
        else:
            metadata[prefix] = _scalar(value)
            continue
        for key, child in reversed(items):
            stack.append((f"{prefix}.{key}" if prefix else str(key), child, depth + 1))
    return tensors, metadata


def _build(path: Path, obj, records: dict, big_endian: bool, details: dict) -> ModelSource:
    named, metadata = _flatten(obj, path)
    tensors: dict[str, TensorRef] = {}
    for name, t in named:
        require(name not in tensors, f"two tensors are both named {name!r}", path)
        tensors[name] = _make_ref(path, name, t, records, big_endian)
    metadata.pop("", None)
    return ModelSource(path=path, format="pytorch", tensors=tensors, files=[path], metadata=metadata,
                       details=details)


# --- zip container -------------------------------------------------------------------------------

def _local_data_start(f, info: zipfile.ZipInfo, size: int, path: Path) -> int:
    """Offset of a member's data, from its local header, checked against the central directory."""
    f.seek(info.header_offset)
    header = f.read(30)
    require(len(header) == 30 and header[:4] == b"PK\x03\x04",
            f"zip member {info.filename!r}: no local header at offset {info.header_offset}", path)
    flags, method, name_len, extra_len = struct.unpack("<2xHH16xHH", header[4:30])
    raw_name = f.read(name_len)
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    require(name == info.orig_filename, f"zip member {info.filename!r}: local header names {name!r}", path)
    require(method == info.compress_type, f"zip member {info.filename!r}: local and central compression differ", path)
    start = info.header_offset + 30 + name_len + extra_len
    require(start + info.compress_size <= size,
            f"zip member {info.filename!r} runs past the end of the file (truncated?)", path)
    return start


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, path: Path) -> bytes:
    require(info.file_size <= cap, f"zip member {info.filename!r} is {info.file_size} bytes (limit {cap})", path)
    try:
        with zf.open(info) as member:
            data = member.read(cap + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise FormatError(f"zip member {info.filename!r} cannot be read ({exc})", path) from None
    require(len(data) <= cap, f"zip member {info.filename!r} is larger than {cap} bytes", path)
    return data


def _open_zip(path: Path) -> ModelSource:
    size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise FormatError(f"corrupt zip archive ({exc})", path) from None
    with zf, path.open("rb") as f:
        infos = zf.infolist()
        require(infos, "empty zip archive", path)
        members = {}
        for info in infos:
            require(info.filename not in members, f"zip member {info.filename!r} appears twice", path)
            check_member(info, size, path)
            members[info.filename] = info
        first = infos[0].filename
        require("/" in first, f"first zip member {first!r} has no folder prefix; not a torch archive", path)
        prefix = first.split("/", 1)[0] + "/"
        if prefix + "archive_format" in members:
            raise UnsupportedError("this is a torch.export program archive (.pt2), not a torch.save checkpoint; "
                                   "modelport reads weights saved with torch.save(model.state_dict(), path)", path)
        if prefix + "constants.pkl" in members or any(n.startswith(prefix + "code/") for n in members):
            raise UnsupportedError("this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
                                   "modelport reads weights saved with torch.save(model.state_dict(), path)", path)
        pkl = members.get(prefix + "data.pkl")
        require(pkl is not None, f"no {prefix}data.pkl in the archive; not a torch checkpoint", path)
        data = _read_member(zf, pkl, MAX_PICKLE, path)
        big_endian = False
        if prefix + "byteorder" in members:
            order = _read_member(zf, members[prefix + "byteorder"], 16, path).strip()
            require(order in (b"little", b"big"), f"byteorder record says {order[:16]!r}", path)
            big_endian = order == b"big"
        if big_endian == (sys.byteorder == "big"):
            big_endian = False
        pkl_start = _local_data_start(f, pkl, size, path) if pkl.compress_type == zipfile.ZIP_STORED else 0
        stream = io.BytesIO(data)
        try:
            scan = torch_pickle.prescan(stream, MAX_PICKLE, base=pkl_start)
        except ModelportError as exc:
            raise type(exc)(exc.message, path) from None
        require(scan.end == len(data), f"{len(data) - scan.end} stray bytes after the pickle in data.pkl", path)
        obj, storages = _unpickle(data, scan, path)
        records = {}
        for key, storage in storages.items():
            info = members.get(f"{prefix}data/{key}")
            require(info is not None, f"storage {key!r} has no record {prefix}data/{key}", path)
            require(info.compress_type == zipfile.ZIP_STORED,
                    f"record data/{key} is compressed (method {info.compress_type}); torch stores records uncompressed", path)
            require(info.compress_size == info.file_size, f"record data/{key}: stored sizes disagree", path)
            item = torch_pickle.storage_itemsize(storage.stype)
            require(info.file_size == storage.numel * item,
                    f"record data/{key} is {info.file_size} bytes but its storage declares {storage.numel} x {item} bytes", path)
            records[key] = (_local_data_start(f, info, size, path), info.file_size)
    details = {"container": "zip", "pickle_protocol": scan.protocol, "storages": len(storages), "prefix": prefix[:-1]}
    if big_endian:
        details["byteorder"] = "big"
    return _build(path, obj, records, big_endian, details)


def _unpickle(data: bytes, scan, path: Path):
    try:
        return torch_pickle.unpickle(data, scan)
    except ModelportError as exc:
        raise type(exc)(exc.message, path) from None


# --- legacy stream ---------------------------------------------------------------------------------

def _open_legacy(path: Path) -> ModelSource:
    size = path.stat().st_size
    values, protocols = [], []
    with path.open("rb") as f:
        for what in ("magic number", "protocol version", "system info", "main object", "storage keys"):
            start = f.tell()
            try:
                scan = torch_pickle.prescan(f, MAX_PICKLE, base=start)
            except ModelportError as exc:
                raise FormatError(f"legacy {what} pickle: {exc.message}", path) from None
            f.seek(start)
            data = f.read(scan.end - start)
            obj, storages = _unpickle(data, scan, path)
            values.append((obj, storages))
            protocols.append(scan.protocol)
            f.seek(scan.end)
            if what == "magic number":
                require(obj == LEGACY_MAGIC, "legacy torch magic number is wrong", path)
            elif what == "protocol version":
                require(obj == LEGACY_PROTOCOL, f"legacy torch protocol version {obj!r} is not {LEGACY_PROTOCOL}", path)
            elif what == "system info":
                require(isinstance(obj, dict), "legacy system info is not a dict", path)
        obj, storages = values[3]
        keys = values[4][0]
        require(isinstance(keys, list) and all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys),
                "legacy storage key list is not a list of distinct strings", path)
        roots = storages
        missing = sorted(set(roots) - set(keys))
        if missing:
            raise FormatError(f"storage {missing[0]!r} is used but has no data in the file", path)
        records = {}
        offset = f.tell()
        for key in keys:
            storage = roots.get(key)
            require(storage is not None, f"legacy storage {key!r} is not used by any tensor; its element size is unknown", path)
            item = torch_pickle.storage_itemsize(storage.stype)
            f.seek(offset)
            count_bytes = f.read(8)
            require(len(count_bytes) == 8, f"legacy storage {key!r}: file ends before its element count (truncated)", path)
            (count,) = struct.unpack("<q", count_bytes)
            require(count == storage.numel,
                    f"legacy storage {key!r}: {count} elements recorded but the pickle declares {storage.numel}", path)
            nbytes = count * item
            require(offset + 8 + nbytes <= size, f"legacy storage {key!r} runs past the end of the file (truncated)", path)
            records[key] = (offset + 8, nbytes)
            offset += 8 + nbytes
        require(offset == size, f"{size - offset} unexpected bytes after the last storage", path)
    details = {"container": "legacy", "pickle_protocol": protocols[3], "storages": len(keys)}
    return _build(path, obj, records, False, details)


def open_torch(path: Path) -> ModelSource:
    with path.open("rb") as f:
        head = f.read(1024)
    if head[:4] == b"PK\x03\x04":
        return _open_zip(path)
    if _is_legacy_stream(head):
        return _open_legacy(path)
    if _is_legacy_tar(head):
        raise UnsupportedError("this is a legacy torch tar checkpoint (torch < 0.4); load it with an old torch and "
                               "re-save it with torch.save(state_dict, path)", path)
    raise FormatError(f"not a torch checkpoint (starts with {head[:8].hex(' ')})", path)


# --- writer -------------------------------------------------------------------------------------

_LEGACY_STORAGE = {v: k for k, v in torch_pickle.STORAGE_DTYPES.items()}


class _Pickler:
    """Emits the protocol-2 opcodes torch's weights-only unpickler accepts (docs/formats.md §2.6)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def int(self, v: int):
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2**31 <= v < 2**31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def str(self, s: str):
        raw = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def ints(self, values):
        if not values:
            self.out += b")"
            return
        self.out += b"("
        for v in values:
            self.int(v)
        self.out += b"t"

    def tensor(self, key: str, dtype: dtypes.DType, storage_numel: int, offset: int, shape, stride):
        legacy = _LEGACY_STORAGE.get(dtype.torch)
        self.glob("torch._utils", "_rebuild_tensor_v2" if legacy else "_rebuild_tensor_v3")
        self.out += b"(("
        self.str("storage")
        if legacy:
            self.glob("torch", legacy)
        else:
            self.glob("torch.storage", "UntypedStorage")
        self.str(key)
        self.str("cpu")
        self.int(storage_numel)
        self.out += b"tQ"                       # TUPLE, BINPERSID
        self.int(offset)
        self.ints(shape)
        self.ints(stride)
        self.out += b"\x89"                     # requires_grad False
        self.glob("collections", "OrderedDict")
        self.out += b")R"                       # backward hooks: OrderedDict()
        if not legacy:
            self.glob("torch", dtype.torch)
        self.out += b"tR"


def _archive_name(dst: Path) -> str:
    """torch names the folder inside the zip after the file; see through `atomic_file`'s temporary name."""
    name = dst.name
    hidden = re.match(r"^\.(.+)\.[^.]+\.tmp$", name)
    if hidden:
        name = hidden.group(1)
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem).strip(".") or "archive"
    return stem


def _check_writable(ref: TensorRef, dst: Path) -> None:
    if ref.dtype.torch is None or ref.dtype.numpy is None or ref.dtype.bits % 8:
        raise UnsupportedError(f"tensor {ref.name!r}: torch has no dtype {ref.dtype.name}"
                               + ("; use --dequantize" if ref.dtype.is_quantized else ""), dst)


def _tensor_bytes(ref: TensorRef, dst: Path) -> np.ndarray:
    arr = np.asarray(ref.read())
    if tuple(arr.shape) != ref.shape:
        raise FormatError(f"tensor {ref.name!r}: reader gave shape {arr.shape}, expected {ref.shape}", dst)
    arr = np.ascontiguousarray(arr, dtype=ref.dtype.numpy)
    return arr.reshape(-1).view(np.uint8)


def write_torch(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
                aliases: dict | None = None, progress=None) -> None:
    """Write a flat state_dict zip; `metadata` is not stored (a state_dict holds tensors only)."""
    if sys.byteorder != "little":
        raise UnsupportedError("writing torch files is implemented for little-endian hosts only", dst)
    refs = tensor_list(tensors)
    for ref in refs:
        _check_writable(ref, dst)
    by_name = {ref.name: ref for ref in refs}
    require(len(by_name) == len(refs), "two tensors share a name", dst)
    aliases = dict(aliases or {})
    for dropped, kept in aliases.items():
        require(kept in by_name, f"alias {dropped!r} points at {kept!r}, which is not among the tensors", dst)

    # One storage per distinct tensor; same storage identity (or an alias) -> the same storage key.
    storage_of: dict[str, str] = {}
    identity_key: dict = {}
    owners: list[TensorRef] = []
    for ref in refs:
        if ref.name in aliases:
            continue
        ident = (ref.storage, ref.dtype.name, ref.shape) if ref.storage is not None else None
        if ident is not None and ident in identity_key:
            storage_of[ref.name] = identity_key[ident]
            continue
        key = str(len(owners))
        owners.append(ref)
        storage_of[ref.name] = key
        if ident is not None:
            identity_key[ident] = key
    entries = [(ref.name, ref) for ref in refs if ref.name not in aliases]
    for dropped, kept in aliases.items():
        target = kept
        while target in aliases:
            target = aliases[target]
        storage_of[dropped] = storage_of[target]
        entries.append((dropped, by_name[target]))

    pickler = _Pickler()
    pickler.out += b"}"                         # EMPTY_DICT
    if entries:
        pickler.out += b"("
        for name, ref in entries:
            pickler.str(name)
            numel = ref.numel
            storage_numel = numel if ref.dtype.torch in _LEGACY_STORAGE else ref.dtype.nbytes(numel)
            pickler.tensor(storage_of[name], ref.dtype, storage_numel, 0, ref.shape, _c_strides(ref.shape))
        pickler.out += b"u"                     # SETITEMS
    pickler.out += b"."
    pickle_bytes = bytes(pickler.out)

    prefix = _archive_name(dst)
    serial = str(int(hashlib.sha256(pickle_bytes).hexdigest(), 16))[:40].rjust(40, "0")
    with dst.open("wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        def record(name: str, chunks) -> None:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            header = 30 + len(info.filename.encode("utf-8")) + 20        # + the ZIP64 extra zipfile adds
            pad = -(raw.tell() + header) % ALIGNMENT
            if pad and pad < 4:
                pad += ALIGNMENT
            info.extra = struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4) if pad else b""
            with zf.open(info, "w", force_zip64=True) as out:
                for chunk in chunks:
                    if len(chunk):
                        out.write(chunk)

        record("data.pkl", [pickle_bytes])
        record(".format_version", [b"1"])
        record(".storage_alignment", [str(ALIGNMENT).encode()])
        record("byteorder", [b"little"])
        written = set()
        for key, ref in enumerate(owners):
            data = _tensor_bytes(ref, dst)
            if data.nbytes != ref.dtype.nbytes(ref.numel):
                raise FormatError(f"tensor {ref.name!r}: got {data.nbytes} bytes, expected {ref.dtype.nbytes(ref.numel)}", dst)
            record(f"data/{key}", [data])
            written.add(ref.name)
            if progress:
                progress(ref)
        record("version", [b"3\n"])
        record(".data/serialization_id", [serial.encode()])
    if progress:
        for ref in refs:
            if ref.name not in written:
                progress(ref)


FORMAT = FormatSpec(
    name="pytorch",
    extensions=(".pt", ".pth", ".bin", ".ckpt"),
    detect=detect,
    open=open_torch,
    write=write_torch,
    shard_index="pytorch_model.bin.index.json",
    shard_pattern="pytorch_model-{i:05d}-of-{n:05d}.bin",
    description="PyTorch torch.save (zip or legacy stream), read without torch",
    options={"aliases": ("torch", "pt", "pth", "bin", "ckpt")},
)
