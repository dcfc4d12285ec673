"""TensorFlow without TensorFlow: checkpoint tensor bundles, SavedModel variables, frozen GraphDefs.

Why our own code: only TensorFlow itself reads these (≈1.9 GB, and loading a SavedModel runs graph
functions); no pure-Python reader exists (docs/formats.md §4.7). We parse:
- the `.index` file, a LevelDB-style sorted table (footer, index block, data blocks with
  prefix-compressed keys and restart arrays; every block's masked CRC32C checked) holding a
  `BundleHeaderProto` and one `BundleEntryProto` per tensor; data is a memory-map view of the
  `.data-0000i-of-0000n` shard, checked against the entry's CRC32C on read; partitioned variables
  (slices stored under OrderedCode keys, as TF's shard-size policy writes them) are reassembled;
- SavedModel folders (`saved_model.pb` + `variables/variables.index`) and checkpoint folders (the
  `checkpoint` text file names the latest prefix, resolved inside the folder only);
- frozen `GraphDef` `.pb` files: `Const` nodes (also inside library functions); `tensor_content`
  is memory-mapped, typed `*_val` lists are decoded with TF's fill rule (fewer values than elements:
  the last one repeats; none: zeros).
Protobufs go through the shared bounds-checked walker in `core.protobuf`. Snappy-compressed table
blocks (TF never writes them) are decoded with `cramjam` if installed, else refused.
Sub-byte TF dtypes (DT_INT4 …) are one byte per element, value in the low bits (docs/formats.md §0.3).
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from pathlib import Path

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, require
from ..core.source import ModelSource, safe_member
from ..core.tensor import TensorRef
from ..core import protobuf as pb
from .registry import FormatSpec

TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
FOOTER = 48
MAX_SHARDS = 100_000
VAR_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
DT_STRING, DT_RESOURCE, DT_VARIANT = 7, 20, 21
SHARD_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<i>\d{5})-of-(?P<n>\d{5})$")
DECODED_CAP = 1 << 30   # typed-value constants may expand (fill rule) to at most this many bytes …
DECODED_RATIO = 64      # … or this many times the file size, whichever is larger

# --- CRC32C ---------------------------------------------------------------------------------

_TABLE = np.zeros(256, np.uint32)
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (0x82F63B78 if _c & 1 else 0)
    _TABLE[_i] = _c
_TABLE_LIST = _TABLE.tolist()


def crc32c_pure(data) -> int:
    """Table-driven CRC32C (Castagnoli), the fallback when google-crc32c is not installed."""
    crc = 0xFFFFFFFF
    table = _TABLE_LIST
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    import google_crc32c as _gcrc

    def crc32c(data) -> int:
        return _gcrc.value(bytes(data) if not isinstance(data, (bytes, bytearray)) else data)

    CRC_IMPL = f"google-crc32c ({_gcrc.implementation})"
except ImportError:  # pragma: no cover - exercised only without the package
    crc32c = crc32c_pure
    CRC_IMPL = "pure Python (slow; pip install google-crc32c)"


def unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot << 15) | (rot >> 17)) & 0xFFFFFFFF


# --- LevelDB table --------------------------------------------------------------------------

def _snappy(data: bytes, path: Path) -> bytes:
    try:
        import cramjam
    except ImportError:
        raise FormatError("table block is snappy-compressed and no snappy decoder is installed "
                               "(pip install cramjam); TensorFlow itself writes tables uncompressed", path) from None
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except Exception as exc:
        raise FormatError(f"snappy block does not decode ({exc})", path) from None


def _handle(buf, pos: int, end: int, path: Path) -> tuple[int, int, int]:
    offset, pos = pb.varint(buf, pos, end, path)
    size, pos = pb.varint(buf, pos, end, path)
    return offset, size, pos


def _block(buf, offset: int, size: int, path: Path) -> bytes:
    total = len(buf)
    require(offset + size + 5 <= total,
            f"table block [{offset}, +{size}) runs past the end of the file ({total} bytes)", path)
    contents = bytes(buf[offset:offset + size + 1])
    (stored,) = struct.unpack("<I", bytes(buf[offset + size + 1:offset + size + 5]))
    require(crc32c(contents) == unmask(stored), f"table block at {offset}: CRC32C mismatch (corrupt index)", path)
    kind = contents[-1]
    if kind == 0:
        return contents[:-1]
    if kind == 1:
        return _snappy(contents[:-1], path)
    raise FormatError(f"table block at {offset}: unknown compression type {kind}", path)


def _entries(block: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    n = len(block)
    require(n >= 4, "table block shorter than its restart count", path)
    (restarts,) = struct.unpack_from("<I", block, n - 4)
    limit = n - 4 - 4 * restarts
    require(restarts >= 1 and limit >= 0, f"table block claims {restarts} restart points in {n} bytes", path)
    out, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = pb.varint(block, pos, limit, path)
        own, pos = pb.varint(block, pos, limit, path)
        vlen, pos = pb.varint(block, pos, limit, path)
        require(shared <= len(key) and own + vlen <= limit - pos, f"table entry at {pos} has bad key/value lengths", path)
        key = key[:shared] + block[pos:pos + own]
        pos += own
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
    return out


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table file, in order."""
    size = path.stat().st_size
    require(size >= FOOTER, f"{size} bytes is too short for a table (footer is {FOOTER})", path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        require(buf[size - 8:] == TABLE_MAGIC, "no LevelDB table magic at the end (not a TF .index file)", path)
        footer_start = size - FOOTER
        _, _, pos = _handle(buf, footer_start, size - 8, path)
        index_off, index_size, _ = _handle(buf, pos, size - 8, path)
        out = []
        last = b""
        for _, handle in _entries(_block(buf, index_off, index_size, path), path):
            off, bsize, _ = _handle(handle, 0, len(handle), path)
            for key, value in _entries(_block(buf, off, bsize, path), path):
                require(not out or key > last, f"table keys out of order at {key[:40]!r}", path)
                out.append((key, value))
                last = key
    return out


# --- bundle ---------------------------------------------------------------------------------

def _shape(buf, a: int, b: int, path: Path, what: str) -> tuple[int, ...] | None:
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


def _entry(value: bytes, path: Path, what: str) -> dict:
    e = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": None, "slices": []}
    for num, wire, a, b in pb.fields(value, 0, len(value), path):
        if num == 1 and wire == pb.VARINT:
            e["dtype"] = a
        elif num == 2 and wire == pb.LEN:
            e["shape"] = _shape(value, a, b, path, what)
        elif num == 3 and wire == pb.VARINT:
            e["shard"] = pb.signed(a)
        elif num == 4 and wire == pb.VARINT:
            e["offset"] = pb.signed(a)
        elif num == 5 and wire == pb.VARINT:
            e["size"] = pb.signed(a)
        elif num == 6 and wire == pb.I32:
            e["crc"] = struct.unpack_from("<I", value, a)[0]
        elif num == 7 and wire == pb.LEN:  # TensorSliceProto: extent {start, length (absent = whole dim)}
            extents = []
            for n2, w2, x, y in pb.fields(value, a, b, path):
                if n2 == 1 and w2 == pb.LEN:
                    start, length = 0, -1
                    for n3, w3, v, _ in pb.fields(value, x, y, path):
                        if n3 == 1 and w3 == pb.VARINT:
                            start = pb.signed(v)
                        elif n3 == 2 and w3 == pb.VARINT:
                            length = pb.signed(v)
                    extents.append((start, length))
            e["slices"].append(tuple(extents))
    return e


def _fix_subbyte(arr: np.ndarray, dtype: dtypes.DType) -> np.ndarray:
    if dtype.bits < 8:
        mask = (1 << dtype.bits) - 1
        return (arr.view(np.uint8) & mask).view(dtype.numpy)
    return arr


def _bundle_loader(state: dict, shard: Path, name: str, dtype: dtypes.DType, shape, start: int, size: int,
                   crc: int | None, big: bool):
    def load() -> np.ndarray:
        maps = state.setdefault("maps", {})
        if shard not in maps:
            maps[shard] = np.memmap(shard, dtype=np.uint8, mode="r")
        raw = maps[shard][start:start + size]
        if crc is not None and state.get("verify", True):
            require(crc32c(raw) == unmask(crc), f"tensor {name!r}: CRC32C of its data does not match the index", shard)
        arr = raw.view(dtype.numpy.newbyteorder(">") if big and dtype.numpy.itemsize > 1 else dtype.numpy).reshape(shape)
        if big and dtype.numpy.itemsize > 1:
            arr = arr.astype(dtype.numpy)
        return _fix_subbyte(arr, dtype)
    return load


def _slice_key_name(key: bytes) -> str | None:
    """The tensor name inside a slice key (TF OrderedCode: 0, escaped name ending 00 01, dims, extents)."""
    if not key.startswith(b"\x00"):
        return None
    out, i = bytearray(), 1
    while i + 1 < len(key):
        b = key[i]
        if b == 0x00:
            if key[i + 1] == 0x01:
                return out.decode("utf-8", "replace")
            if key[i + 1] != 0xFF:
                return None
            out.append(0x00)
            i += 2
        elif b == 0xFF:
            if key[i + 1] != 0x00:
                return None
            out.append(0xFF)
            i += 2
        else:
            out.append(b)
            i += 1
    return None


def _sliced_loader(parts: list, dtype: dtypes.DType, shape):
    """A partitioned variable: each slice is read (CRC-checked) and copied into place."""
    def load() -> np.ndarray:
        out = np.zeros(shape, dtype.numpy)
        for index, part in parts:
            out[index] = part()
        return out
    return load


def _index_for(path: Path) -> Path:
    m = SHARD_RE.match(path.name)
    if m:
        return path.with_name(m["prefix"] + ".index")
    return path


def open_bundle(path: Path) -> ModelSource:
    index = _index_for(path)
    require(index.is_file(), f"no {index.name} beside this data shard", path)
    table = read_table(index)
    require(table and table[0][0] == b"", "the table has no bundle header (empty key) first", index)
    num_shards, endian = 1, 0
    for num, wire, a, _ in pb.fields(table[0][1], 0, len(table[0][1]), index):
        if num == 1 and wire == pb.VARINT:
            num_shards = pb.signed(a)
        elif num == 2 and wire == pb.VARINT:
            endian = a
    require(1 <= num_shards <= MAX_SHARDS, f"bundle header claims {num_shards} shards", index)
    require(endian in (0, 1), f"bundle header has unknown endianness {endian}", index)
    prefix = index.name[: -len(".index")] if index.name.endswith(".index") else index.name
    shard_paths = [index.with_name(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    shard_sizes: dict[int, int] = {}
    state: dict = {}
    tensors: dict[str, TensorRef] = {}
    skipped: dict[str, list] = {}
    slice_entries: dict[str, list] = {}
    for key, value in table[1:]:
        base = _slice_key_name(key)
        if base is not None:  # sorted keys: a tensor's slices come in increasing (start, length) order
            slice_entries.setdefault(base, []).append(_entry(value, index, base))

    def locate(key_s: str, e: dict, dtype: dtypes.DType, shape) -> tuple[Path, int, int]:
        sid, off, size = e["shard"], e["offset"], e["size"]
        require(0 <= sid < num_shards, f"tensor {key_s!r}: shard {sid} of {num_shards}", index)
        need = math.prod(shape) * dtype.numpy.itemsize
        require(size == need, f"tensor {key_s!r}: {size} bytes for {dtype.name}{list(shape)}, which needs {need}", index)
        if sid not in shard_sizes:
            shard = shard_paths[sid]
            require(shard.is_file() and not shard.is_symlink(), f"data shard {shard.name} is missing", index)
            shard_sizes[sid] = shard.stat().st_size
        require(0 <= off and off + size <= shard_sizes[sid],
                f"tensor {key_s!r}: data at [{off}, {off + size}) lies outside {shard_paths[sid].name} ({shard_sizes[sid]} bytes)", index)
        return shard_paths[sid], off, size

    for key, value in table[1:]:
        if key.startswith(b"\x00"):
            continue
        try:
            key_s = key.decode("utf-8")
        except UnicodeDecodeError:
            skipped.setdefault("undecodable_keys", []).append(key.hex()[:40])
            continue
        e = _entry(value, index, key_s)
        dtype = dtypes.by_code("tf", e["dtype"])
        if e["dtype"] in (DT_STRING, DT_RESOURCE, DT_VARIANT) or dtype is None or dtype.numpy is None:
            skipped.setdefault("non_numeric" if e["dtype"] in (DT_STRING, DT_RESOURCE, DT_VARIANT) else "unknown_dtype", []).append(key_s)
            continue
        shape = e["shape"]
        require(shape is not None and all(d >= 0 for d in shape), f"tensor {key_s!r}: unknown shape", index)
        name = key_s[: -len(VAR_SUFFIX)] if key_s.endswith(VAR_SUFFIX) else key_s
        require(name not in tensors, f"tensor name {name!r} repeats", index)
        if e["slices"]:
            stored = slice_entries.get(key_s, [])
            require(len(stored) == len(e["slices"]),
                    f"tensor {key_s!r}: {len(e['slices'])} slices declared, {len(stored)} stored", index)
            parts, covered = [], 0
            for extents, part in zip(sorted(e["slices"]), stored):
                require(len(extents) == len(shape), f"tensor {key_s!r}: slice rank differs from the shape", index)
                sl, sub = [], []
                for (start, length), dim in zip(extents, shape):
                    length = dim - start if length < 0 else length
                    require(0 <= start and 0 <= length and start + length <= dim, f"tensor {key_s!r}: slice outside the shape", index)
                    sl.append(slice(start, start + length))
                    sub.append(length)
                shard, off, size = locate(key_s, part, dtype, sub)
                covered += math.prod(sub)
                parts.append((tuple(sl), _bundle_loader(state, shard, name, dtype, tuple(sub), off, size, part["crc"], endian == 1)))
            require(covered == math.prod(shape), f"tensor {key_s!r}: slices do not cover the tensor exactly", index)
            tensors[name] = TensorRef(name, dtype, shape, _sliced_loader(parts, dtype, shape),
                                      file=str(index), extra={"key": key_s, "slices": len(parts)})
            continue
        shard, off, size = locate(key_s, e, dtype, shape)
        tensors[name] = TensorRef(name, dtype, shape,
                                  _bundle_loader(state, shard, name, dtype, shape, off, size, e["crc"], endian == 1),
                                  nbytes=size, file=str(shard), offset=off, extra={"key": key_s})
    details = {"container": "tensor bundle", "shards": num_shards, "endianness": "big" if endian else "little",
               "crc32c": CRC_IMPL}
    if any(k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") for k in skipped.get("non_numeric", [])):
        details["object_graph"] = True
    details.update({k: v[:20] for k, v in skipped.items()})
    if slice_entries:
        details["partitioned"] = sum(1 for t in tensors.values() if "slices" in t.extra)
    source = ModelSource(path=path, format="tf", tensors=tensors,
                         files=[index, *(shard_paths[i] for i in sorted(shard_sizes))], details=details)
    source.closers = [state.clear]
    return source


# --- folders --------------------------------------------------------------------------------

def _latest_prefix(folder: Path) -> Path | None:
    state = folder / "checkpoint"
    if not state.is_file() or state.stat().st_size > 1 << 20:
        return None
    m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text("utf-8", "replace"), re.M)
    if not m:
        return None
    name = m[1]
    if name.startswith("/"):  # absolute paths are accepted only when they point into this folder
        p = Path(name)
        if p.parent.resolve() != folder.resolve():
            raise FormatError(f"checkpoint file points at {name!r}, outside this folder", folder)
        name = p.name
    return safe_member(folder, name + ".index", "checkpoint")


def detect_folder(folder: Path) -> bool:
    if (folder / "variables" / "variables.index").is_file() and \
            ((folder / "saved_model.pb").is_file() or (folder / "saved_model.pbtxt").is_file()):
        return True
    try:
        index = _latest_prefix(folder)
    except FormatError:
        return True  # ours, and open() will say why it is refused
    return index is not None and index.is_file()


def _saved_model_info(pbfile: Path) -> dict:
    """Tags, signatures and TF version of `saved_model.pb`, parsed as data."""
    info: dict = {"tags": [], "signatures": []}
    if not pbfile.is_file():
        return info
    with pbfile.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for num, wire, a, b in pb.fields(buf, 0, len(buf), pbfile):
            if num != 2 or wire != pb.LEN:
                continue
            for n2, w2, c, d in pb.fields(buf, a, b, pbfile):
                if n2 == 1 and w2 == pb.LEN:  # MetaInfoDef
                    for n3, w3, e, g in pb.fields(buf, c, d, pbfile):
                        if n3 == 4 and w3 == pb.LEN:
                            info["tags"].append(pb.text(buf, e, g, "tag", pbfile))
                        elif n3 == 5 and w3 == pb.LEN:
                            info["tensorflow_version"] = pb.text(buf, e, g, "version", pbfile)
                elif n2 == 5 and w2 == pb.LEN:  # signature_def map entry
                    for n3, w3, e, g in pb.fields(buf, c, d, pbfile):
                        if n3 == 1 and w3 == pb.LEN:
                            info["signatures"].append(pb.text(buf, e, g, "signature name", pbfile))
    return info


def open_folder(folder: Path) -> ModelSource:
    variables = folder / "variables" / "variables.index"
    if variables.is_file():
        require(not variables.is_symlink(), "variables/variables.index is a symbolic link; refused", folder)
        source = open_bundle(variables)
        source.details = {**source.details, "container": "SavedModel variables",
                          **_saved_model_info(folder / "saved_model.pb")}
    else:
        index = _latest_prefix(folder)
        require(index is not None and index.is_file(), "the checkpoint file names no existing .index", folder)
        source = open_bundle(index)
        source.details["checkpoint"] = index.name[: -len(".index")]
    source.path = folder
    return source


# --- frozen GraphDef ------------------------------------------------------------------------

# TensorProto typed-value field for each canonical dtype: (field number, element kind).
_TYPED = {"F32": (5, "f4"), "F64": (6, "f8"), "I32": (7, "varint"), "I16": (7, "varint"), "I8": (7, "varint"),
          "U8": (7, "varint"), "U16": (7, "varint"), "I4": (7, "varint"), "U4": (7, "varint"), "I2": (7, "varint"),
          "U2": (7, "varint"), "F4": (7, "varint"), "C64": (9, "f4"), "I64": (10, "varint"), "BOOL": (11, "varint"),
          "C128": (12, "f8"), "F16": (13, "varint"), "BF16": (13, "varint"), "U32": (16, "varint"),
          "U64": (17, "varint"), "F8_E4M3": (18, "bytes"), "F8_E5M2": (18, "bytes"), "F8_E4M3FNUZ": (18, "bytes"),
          "F8_E5M2FNUZ": (18, "bytes")}


def _looks_like_graphdef(head: bytes) -> bool:
    """GraphDef starts with node (field 1) whose first fields are name (1) then op (2), both short text."""
    try:
        if head[:1] != b"\x0a":
            return False
        _, p = pb.varint(head, 1, len(head))
        if head[p:p + 1] != b"\x0a":
            return False
        n, p = pb.varint(head, p + 1, len(head))
        name = head[p:p + n]
        if len(name) != n or not name.isascii() or not (name.decode().isprintable() and n):
            return False
        p += n
        if head[p:p + 1] != b"\x12":
            return False
        n, p = pb.varint(head, p + 1, len(head))
        op = head[p:p + n]
        return len(op) == n and 0 < n < 128 and op.isascii() and op.decode().isidentifier()
    except FormatError:
        return False


def _tensor_header(buf, a: int, b: int, path: Path, what: str) -> dict:
    t = {"dtype": 0, "shape": (), "content": None, "fields": {}}
    for num, wire, x, y in pb.fields(buf, a, b, path):
        if num == 1 and wire == pb.VARINT:
            t["dtype"] = x
        elif num == 2 and wire == pb.LEN:
            t["shape"] = _shape(buf, x, y, path, what)
        elif num == 4 and wire == pb.LEN:
            t["content"] = (x, y)
    t["range"] = (a, b)
    return t


def _typed_values(buf, a: int, b: int, number: int, kind: str, path: Path) -> np.ndarray:
    parts = []
    for num, wire, x, y in pb.fields(buf, a, b, path):
        if num != number:
            continue
        if kind == "bytes":
            require(wire == pb.LEN, f"field {number} is not bytes", path)
            parts.append(np.frombuffer(bytes(buf[x:y]), np.uint8))
        elif kind == "varint":
            if wire == pb.VARINT:
                parts.append(np.array([x], np.uint64))
            else:
                require(wire == pb.LEN, f"field {number} has wire type {wire}", path)
                parts.append(pb.decode_varints(np.frombuffer(bytes(buf[x:y]), np.uint8), path))
        else:
            width = int(kind[1])
            require(wire == pb.LEN or wire == (pb.I32 if width == 4 else pb.I64), f"field {number} has wire type {wire}", path)
            raw = bytes(buf[x:y])
            require(len(raw) % width == 0, f"packed field {number} is not a whole number of values", path)
            parts.append(np.frombuffer(raw, "<" + kind))
    if not parts:
        return np.zeros(0, np.uint64 if kind == "varint" else np.uint8 if kind == "bytes" else "<" + kind)
    return np.concatenate(parts)


def _graph_loader(state: dict, path: Path, name: str, dtype: dtypes.DType, shape, t: dict):
    def load() -> np.ndarray:
        numel = math.prod(shape)
        if t["content"] is not None:
            x, y = t["content"]
            if "map" not in state:
                state["map"] = np.memmap(path, dtype=np.uint8, mode="r")
            return _fix_subbyte(state["map"][x:y].view(dtype.numpy).reshape(shape), dtype)
        number, kind = _TYPED[dtype.name]
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            vals = _typed_values(buf, *t["range"], number, kind, path)
        if kind == "varint":
            if dtype.name in ("F16", "BF16"):
                vals = (vals & np.uint64(0xFFFF)).astype(np.uint16).view(dtype.numpy)
            elif dtype.name == "BOOL":
                vals = vals != 0
            elif dtype.kind == "int" or dtype.name == "F4":
                vals = vals.view(np.int64)
                vals = _fix_subbyte(vals.astype(np.int8), dtype) if dtype.bits < 8 else vals.astype(dtype.numpy)
            else:
                vals = _fix_subbyte(vals.astype(np.uint8), dtype) if dtype.bits < 8 else vals.astype(dtype.numpy)
        elif kind == "bytes":
            vals = vals.view(dtype.numpy)
        else:
            vals = vals.view(dtype.numpy) if dtype.kind == "complex" else vals.astype(dtype.numpy)
        n = vals.size
        require(n <= numel, f"constant {name!r}: {n} values for {numel} elements", path)
        if n == numel:
            return vals.reshape(shape)
        out = np.zeros(numel, dtype.numpy) if n == 0 else np.empty(numel, dtype.numpy)
        if n:
            out[:n] = vals
            out[n:] = vals[-1]
        return out.reshape(shape)
    return load


def open_graphdef(path: Path) -> ModelSource:
    size = path.stat().st_size
    require(size > 0, "empty file", path)
    consts: list[tuple[str, dict]] = []
    ops: dict[str, int] = {}
    skipped: list[str] = []
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:

        def node(a: int, b: int, prefix: str) -> None:
            name, op, value = "", "", None
            for num, wire, x, y in pb.fields(buf, a, b, path):
                if num == 1 and wire == pb.LEN:
                    name = pb.text(buf, x, y, "node name", path)
                elif num == 2 and wire == pb.LEN:
                    op = pb.text(buf, x, y, "op name", path)
                elif num == 5 and wire == pb.LEN:
                    key, val = "", None
                    for n2, w2, c, d in pb.fields(buf, x, y, path):
                        if n2 == 1 and w2 == pb.LEN:
                            key = pb.text(buf, c, d, "attr name", path)
                        elif n2 == 2 and w2 == pb.LEN:
                            val = (c, d)
                    if key == "value" and val is not None:
                        value = val
            ops[op] = ops.get(op, 0) + 1
            if op == "Const" and value is not None:
                for num, wire, x, y in pb.fields(buf, *value, path):
                    if num == 8 and wire == pb.LEN:
                        consts.append((prefix + name, _tensor_header(buf, x, y, path, prefix + name)))

        for num, wire, a, b in pb.fields(buf, 0, size, path):
            if num == 1 and wire == pb.LEN:
                node(a, b, "")
            elif num == 2 and wire == pb.LEN:  # FunctionDefLibrary
                for n2, w2, c, d in pb.fields(buf, a, b, path):
                    if n2 != 1 or w2 != pb.LEN:
                        continue
                    fname, nodes = "function", []
                    for n3, w3, e, g in pb.fields(buf, c, d, path):
                        if n3 == 1 and w3 == pb.LEN:  # OpDef signature: name is field 1
                            for n4, w4, h, i in pb.fields(buf, e, g, path):
                                if n4 == 1 and w4 == pb.LEN:
                                    fname = pb.text(buf, h, i, "function name", path)
                        elif n3 == 3 and w3 == pb.LEN:
                            nodes.append((e, g))
                    for e, g in nodes:
                        node(e, g, f"{fname}/")
            elif wire != pb.LEN and num not in (3, 4):
                raise FormatError(f"not a GraphDef (field {num}, wire type {wire} at top level)", path)
    require(ops, "no nodes: not a GraphDef", path)
    state: dict = {}
    tensors: dict[str, TensorRef] = {}
    cap = max(DECODED_CAP, DECODED_RATIO * size)
    for name, t in consts:
        dtype = dtypes.by_code("tf", t["dtype"])
        if dtype is None or dtype.numpy is None or t["shape"] is None or (t["content"] is None and dtype.name not in _TYPED):
            skipped.append(name)
            continue
        shape = t["shape"]
        require(all(d >= 0 for d in shape), f"constant {name!r}: unknown dimension in {list(shape)}", path)
        numel = math.prod(shape)
        nbytes = numel * dtype.numpy.itemsize
        if t["content"] is not None:
            x, y = t["content"]
            require(y - x == nbytes, f"constant {name!r}: tensor_content has {y - x} bytes, {dtype.name}{list(shape)} needs {nbytes}", path)
        else:
            require(nbytes <= cap, f"constant {name!r}: {dtype.name}{list(shape)} would expand to {nbytes} bytes; refused", path)
        require(name not in tensors, f"constant name {name!r} repeats", path)
        tensors[name] = TensorRef(name, dtype, shape, _graph_loader(state, path, name, dtype, shape, t), nbytes=nbytes,
                                  file=str(path), offset=t["content"][0] if t["content"] else None)
    details = {"container": "GraphDef", "nodes": sum(ops.values()), "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:30])}
    if skipped:
        details["skipped_constants"] = skipped[:20]
    source = ModelSource(path=path, format="tf", tensors=tensors, files=[path], details=details)
    source.closers = [state.clear]
    return source


# --- entry points ---------------------------------------------------------------------------

def _has_table_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() < FOOTER:
                return False
            f.seek(-8, 2)
            return f.read(8) == TABLE_MAGIC
    except OSError:
        return False


def detect(path: Path, head: bytes) -> bool:
    if SHARD_RE.match(path.name):
        return _has_table_magic(_index_for(path))
    if _has_table_magic(path):
        return True
    if path.name in ("saved_model.pb",) and detect_folder(path.parent):
        return True
    return _looks_like_graphdef(head)


def open_tf(path: Path) -> ModelSource:
    if path.is_dir():
        return open_folder(path)
    if path.name == "saved_model.pb" and detect_folder(path.parent):
        return open_folder(path.parent)
    if SHARD_RE.match(path.name) or _has_table_magic(path):
        return open_bundle(path)
    return open_graphdef(path)


FORMAT = FormatSpec(
    name="tf",
    extensions=(".index", ".pb"),
    detect=detect,
    open=open_tf,
    detect_folder=detect_folder,
    description="TensorFlow checkpoint bundle, SavedModel variables, frozen GraphDef",
    options={"aliases": ("tensorflow",)},
)
