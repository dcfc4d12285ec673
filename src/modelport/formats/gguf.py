"""GGUF: a strict header parser of our own, lazy tensors, and a streaming writer through gguf-py.

Why our own parser beside gguf-py's `GGUFReader`: the reader memory-maps the file and builds NumPy
views from the counts it finds, so a lying count or length becomes a huge allocation or a crash
deep inside NumPy. Here every count, length and offset is checked against the file size before
anything is allocated, with llama.cpp's rules (docs/gguf.md §1): version 2/3, n_dims <= 4, known types,
ne[0] a multiple of the block size, offsets aligned and equal to the running padded sum, no
duplicate keys or tensor names, `general.alignment` a power-of-two u32. gguf-py stays the oracle
in the tests, and serves for what it does well: `gguf.quants.dequantize` (block types on `read()`)
and `GGUFWriter` (the container on write).

Metadata values keep their GGUF type so that a GGUF -> GGUF conversion writes the same keys:
  * integers and floats are NumPy scalars of the stored width (`np.uint32(30)`, `np.float32(1e-5)`),
    bools are `bool`, strings `str` (invalid UTF-8 kept with surrogateescape, so it round-trips);
  * arrays are `GGUFArray`: lazy (the values are read from the file on first use), printed as a
    summary (`[array of 49152 str]`), `tolist()` / `numpy()` for the values. So the huge token and
    merge lists never reach a display, yet stay available to converters through `source.metadata`.
The writer maps those types back; plain Python values (from other formats) get llama.cpp's usual
types (int -> u32 when it fits, float -> f32, str -> str), anything else is written as a string.

Every tensor carries `TensorRef.raw_loader`: its stored bytes as uint8 (a zero-copy view). The writer
copies quantized blocks from it untouched, so a Q4_K tensor stays byte-identical. Any transform that
yields a quantized TensorRef must set `raw_loader` the same way.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, UnsupportedError, require
from ..core.source import ModelSource, tensor_list
from ..core.tensor import TensorRef
from .registry import FormatSpec

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NAME = 63                  # ggml's GGML_MAX_NAME (64) minus the NUL: the writer keeps to it
MAX_KEY_BYTES = 1 << 16        # reader caps for keys and tensor names
MAX_ARRAY_DEPTH = 3
MAX_ARRAY_ELEMENTS = 1 << 30   # across all metadata arrays of one file
INT64_MAX = (1 << 63) - 1
NEUTRAL_ARCH = "unknown"       # written as general.architecture when the metadata names none

# GGUF value types (gguf.constants.GGUFValueType), their names, struct codes and NumPy types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
TYPE_NAMES = {U8: "u8", I8: "i8", U16: "u16", I16: "i16", U32: "u32", I32: "i32", F32: "f32", BOOL: "bool",
              STRING: "str", ARRAY: "arr", U64: "u64", I64: "i64", F64: "f64"}
_SCALARS = {U8: np.uint8, I8: np.int8, U16: np.uint16, I16: np.int16, U32: np.uint32, I32: np.int32,
            F32: np.float32, BOOL: np.uint8, U64: np.uint64, I64: np.int64, F64: np.float64}
_STRUCTS = {t: struct.Struct("<" + c) for t, c in zip((U8, I8, U16, I16, U32, I32, F32, BOOL, U64, I64, F64), "BbHhIifBQqd")}
_BY_NUMPY = {np.dtype(n): t for t, n in _SCALARS.items() if t != BOOL}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _type_name(vtype: int, sub: int | None = None) -> str:
    return f"arr[{TYPE_NAMES.get(sub, '?')}]" if vtype == ARRAY else TYPE_NAMES.get(vtype, "?")


class GGUFArray:
    """A metadata array, read from the file only when its values are asked for."""

    def __init__(self, elem_type: int, count: int, load: Callable[[], list]):
        self.type = elem_type          # GGUF value type of the elements
        self.count = count
        self._load = load
        self._values: list | None = None

    def tolist(self) -> list:
        if self._values is None:
            self._values = self._load()
        return self._values

    def numpy(self) -> np.ndarray:
        """Numeric arrays as a NumPy array of the stored type."""
        if self.type not in _SCALARS:
            raise TypeError(f"a GGUF {TYPE_NAMES.get(self.type)} array has no NumPy form")
        return np.asarray(self.tolist(), dtype=bool if self.type == BOOL else _SCALARS[self.type])

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(self.tolist())

    def __getitem__(self, index):
        return self.tolist()[index]

    def __eq__(self, other) -> bool:
        if isinstance(other, GGUFArray):
            return self.type == other.type and self.tolist() == other.tolist()
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        kind = TYPE_NAMES.get(self.type, "?")
        if self.count <= 8 and self.type != ARRAY:
            shown = self.tolist()
            if self.type != STRING or sum(len(s) for s in shown) <= 80:
                return str(shown)
        return f"[array of {self.count} {kind}]"

    __repr__ = __str__


# --- header parsing -----------------------------------------------------------------------

class _Reader:
    """Bounds-checked little-endian reads over a buffer of known size."""

    __slots__ = ("buf", "pos", "size", "path", "array_elements", "base")

    def __init__(self, buf, size: int, path: Path, pos: int = 0, base: int = 0):
        self.buf, self.size, self.path, self.pos = buf, size, path, pos
        self.base = base            # file offset of buf[0] (nested arrays are re-read from the file by offset)
        self.array_elements = 0

    def fail(self, message: str):
        raise FormatError(message, self.path)

    def need(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            self.fail(f"{what} at byte {start} runs past the end of the file ({self.size} bytes)")
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.need(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.need(8, what))[0]

    def raw_string(self, what: str, cap: int | None = None) -> bytes:
        n = self.u64(f"{what} length")
        if cap is not None and n > cap:
            self.fail(f"{what} is {n} bytes long (limit {cap})")
        start = self.need(n, what)
        return bytes(self.buf[start:start + n])

    def name(self, what: str) -> str:
        raw = self.raw_string(what, MAX_KEY_BYTES)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} {raw[:40]!r} is not UTF-8")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _STRUCTS:
            st = _STRUCTS[vtype]
            (v,) = st.unpack_from(self.buf, self.need(st.size, what))
            return bool(v) if vtype == BOOL else _SCALARS[vtype](v)
        if vtype == STRING:
            return self.raw_string(what).decode("utf-8", "surrogateescape")
        if vtype == ARRAY:
            return self.array(what, depth)
        self.fail(f"{what} has unknown value type {vtype}")

    def array(self, what: str, depth: int) -> GGUFArray:
        if depth >= MAX_ARRAY_DEPTH:
            self.fail(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        elem = self.u32(f"{what} element type")
        count = self.u64(f"{what} element count")
        self.array_elements += count
        if self.array_elements > MAX_ARRAY_ELEMENTS:
            self.fail(f"{what}: more than {MAX_ARRAY_ELEMENTS} metadata array elements in all")
        start = self.pos
        remaining = self.size - start
        if elem in _STRUCTS:
            self.need(count * _STRUCTS[elem].size, f"{what} ({count} x {TYPE_NAMES[elem]})")
        elif elem == STRING:
            if count * 8 > remaining:
                self.fail(f"{what}: {count} strings cannot fit in the {remaining} bytes left")
            pos, size, unpack = start, self.size, _U64.unpack_from
            for _ in range(count):
                if pos + 8 > size:
                    self.fail(f"{what}: a string runs past the end of the file")
                pos += 8 + unpack(self.buf, pos)[0]
            if pos > size:
                self.fail(f"{what}: a string runs past the end of the file")
            self.pos = pos
        elif elem == ARRAY:
            if count * 12 > remaining:
                self.fail(f"{what}: {count} arrays cannot fit in the {remaining} bytes left")
            for i in range(count):
                self.array(f"{what}[{i}]", depth + 1)
        else:
            self.fail(f"{what} has unknown element type {elem}")
        return GGUFArray(elem, count, _array_loader(self.path, elem, count, self.base + start, self.base + self.pos))


def _array_loader(path: Path, elem: int, count: int, start: int, end: int) -> Callable[[], list]:
    def load() -> list:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise FormatError("file changed while open (metadata array truncated)", path)
        if elem in _STRUCTS:
            arr = np.frombuffer(data, dtype=np.dtype(_SCALARS[elem]).newbyteorder("<"), count=count)
            return [bool(v) for v in arr] if elem == BOOL else arr.tolist()
        reader = _Reader(data, len(data), path, base=start)
        values = [reader.value(elem, "array element", 1) for _ in range(count)]
        return [v.tolist() for v in values] if elem == ARRAY else values
    return load


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]      # NumPy order: reversed ne
    dtype: dtypes.DType
    offset: int                 # absolute offset in the file
    nbytes: int


@dataclass
class Header:
    version: int
    metadata: dict[str, Any]
    types: dict[str, str]       # key -> GGUF type name ("u32", "arr[str]", ...)
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    size: int


def read_header(path: Path) -> Header:
    """Parse and validate everything but the tensor data."""
    size = path.stat().st_size
    require(size >= 24, f"too short for GGUF ({size} bytes)", path)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(mm, size, path)


def _parse(buf, size: int, path: Path) -> Header:
    r = _Reader(buf, size, path)
    require(bytes(buf[:4]) == MAGIC, "not a GGUF file (bad magic)", path)
    r.pos = 4
    version = r.u32("version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (1, 2, 3):
            r.fail("big-endian GGUF files are not supported")
        r.fail(f"GGUF version {version} is not supported (only 2 and 3)")
    n_tensors = r.u64("tensor count")
    n_kv = r.u64("metadata count")
    # Smallest possible KV: key length (8) + type (4) + 1-byte value; tensor info: 8 + 4 + 4 + 8.
    require(n_kv <= (size - r.pos) // 13, f"metadata count {n_kv} cannot fit in a {size}-byte file", path)
    require(n_tensors <= (size - r.pos) // 24, f"tensor count {n_tensors} cannot fit in a {size}-byte file", path)

    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    for i in range(n_kv):
        key = r.name(f"metadata key #{i}")
        if key in metadata:
            r.fail(f"duplicate metadata key {key!r}")
        vtype = r.u32(f"type of {key!r}")
        value = r.value(vtype, f"value of {key!r}")
        metadata[key] = value
        types[key] = _type_name(vtype, value.type if isinstance(value, GGUFArray) else None)

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        a = metadata["general.alignment"]
        require(types["general.alignment"] == "u32", f"general.alignment must be u32, not {types['general.alignment']}", path)
        alignment = int(a)
        require(alignment > 0 and alignment & (alignment - 1) == 0, f"general.alignment {alignment} is not a power of two", path)

    infos: list[tuple[str, tuple, dtypes.DType, int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = r.name(f"tensor name #{i}")
        require(name not in names, f"duplicate tensor name {name!r}", path)
        names.add(name)
        n_dims = r.u32(f"tensor {name!r} n_dims")
        require(n_dims <= MAX_DIMS, f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})", path)
        ne = []
        numel = 1
        for d in range(n_dims):
            n = r.u64(f"tensor {name!r} dimension {d}")
            require(n <= INT64_MAX, f"tensor {name!r} dimension {d} is {n}", path)
            numel *= n
            require(numel <= INT64_MAX, f"tensor {name!r}: shape {ne + [n]} overflows", path)
            ne.append(n)
        code = r.u32(f"tensor {name!r} type")
        dtype = dtypes.by_code("gguf", code)
        require(dtype is not None, f"tensor {name!r} has unknown ggml type {code}", path)
        offset = r.u64(f"tensor {name!r} offset")
        ne0 = ne[0] if ne else 1
        require(ne0 % dtype.block_size == 0,
                f"tensor {name!r}: row of {ne0} is not a multiple of the {dtype.name} block size {dtype.block_size}", path)
        if dtype.is_quantized:
            nbytes = numel // dtype.block_size * dtype.type_size
        else:
            nbytes = numel * (dtype.bits // 8)
        require(nbytes <= INT64_MAX, f"tensor {name!r}: size overflows", path)
        infos.append((name, tuple(reversed(ne)), dtype, offset, nbytes))

    data_start = -(-r.pos // alignment) * alignment
    tensors = []
    expected = 0
    for name, shape, dtype, offset, nbytes in infos:
        require(offset % alignment == 0, f"tensor {name!r}: offset {offset} is not a multiple of the alignment {alignment}", path)
        require(offset == expected, f"tensor {name!r} has offset {offset}, expected {expected}", path)
        require(data_start + offset + nbytes <= size,
                f"tensor {name!r}: data [{data_start + offset}, {data_start + offset + nbytes}) runs past the end "
                f"of the file ({size} bytes)", path)
        tensors.append(TensorInfo(name, shape, dtype, data_start + offset, nbytes))
        expected = offset + -(-nbytes // alignment) * alignment
    return Header(version, metadata, types, tensors, alignment, data_start, size)


# --- the source ---------------------------------------------------------------------------

def plain_value(value):
    """A metadata value as plain JSON-able Python for display (NumPy scalars unwrapped, arrays summarised)."""
    if isinstance(value, GGUFArray):
        return str(value)
    if isinstance(value, np.float32):
        return float(str(value))        # the shortest decimal that is this float32: 1e-05, not 9.99999974e-06
    if isinstance(value, np.generic):
        return value.item()
    return value


def _config(meta: dict[str, Any]) -> dict[str, Any] | None:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None

    def get(key):
        v = meta.get(f"{arch}.{key}")
        if isinstance(v, GGUFArray):
            values = v.tolist()
            return values[0] if values and all(x == values[0] for x in values) else values
        return v.item() if isinstance(v, np.generic) else v

    config: dict[str, Any] = {"architecture": arch, "model_type": arch}
    for hf, key in (("hidden_size", "embedding_length"), ("num_hidden_layers", "block_count"),
                    ("num_attention_heads", "attention.head_count"),
                    ("num_key_value_heads", "attention.head_count_kv"),
                    ("max_position_embeddings", "context_length"), ("intermediate_size", "feed_forward_length"),
                    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"), ("layer_norm_eps", "attention.layer_norm_epsilon"),
                    ("rope_theta", "rope.freq_base"), ("head_dim", "attention.key_length"),
                    ("vocab_size", "vocab_size"), ("num_experts", "expert_count"),
                    ("num_experts_per_tok", "expert_used_count"), ("moe_intermediate_size", "expert_feed_forward_length"),
                    ("shared_expert_intermediate_size", "expert_shared_feed_forward_length")):
        v = get(key)
        if v is not None:
            config[hf] = v
    tokens = meta.get("tokenizer.ggml.tokens")
    if "vocab_size" not in config and isinstance(tokens, GGUFArray):
        config["vocab_size"] = tokens.count
    return config


def _details(header: Header, tensors: list[TensorInfo]) -> dict[str, Any]:
    meta = header.metadata
    arch = meta.get("general.architecture")
    details: dict[str, Any] = {"version": header.version, "alignment": header.alignment,
                               "tensor_data_offset": header.data_start}
    if arch is not None:
        details["architecture"] = plain_value(arch)
    if "general.name" in meta:
        details["name"] = plain_value(meta["general.name"])
    if isinstance(arch, str):
        prefix = arch + "."
        hp = {k[len(prefix):]: plain_value(v) for k, v in meta.items() if k.startswith(prefix)}
        if hp:
            details["hyperparameters"] = hp
    tok: dict[str, Any] = {}
    for key, label in (("tokenizer.ggml.model", "model"), ("tokenizer.ggml.pre", "pre_tokenizer"),
                       ("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                       ("tokenizer.ggml.unknown_token_id", "unknown_token_id"),
                       ("tokenizer.ggml.padding_token_id", "padding_token_id"),
                       ("tokenizer.ggml.add_bos_token", "add_bos_token"), ("tokenizer.ggml.add_eos_token", "add_eos_token")):
        if key in meta:
            tok[label] = plain_value(meta[key])
    for key, label in (("tokenizer.ggml.tokens", "vocab_size"), ("tokenizer.ggml.merges", "merges")):
        if isinstance(meta.get(key), GGUFArray):
            tok[label] = meta[key].count
    if tok:
        details["tokenizer"] = tok
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        details["chat_template"] = template
    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.dtype.name] = counts.get(t.dtype.name, 0) + 1
    details["tensor_types"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    ftype = meta.get("general.file_type")
    if ftype is not None and not isinstance(ftype, (str, GGUFArray)):
        from gguf.constants import LlamaFileType
        try:
            details["file_type"] = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")
        except ValueError:
            details["file_type"] = f"unknown ({int(ftype)})"
    numel = sum(math.prod(t.shape) for t in tensors)
    if numel:
        details["bits_per_weight"] = round(sum(t.nbytes for t in tensors) * 8 / numel, 3)
    return details


def open_gguf(path: Path) -> ModelSource:
    """One GGUF file, or the whole split set it belongs to (`split.count` > 1), from any of its files."""
    header = read_header(path)
    if split_count(header.metadata) > 1:
        return open_split_set(path, header)
    tensors, closer = _tensor_refs(path, header)
    return ModelSource(path=path, format="gguf", tensors=tensors, files=[path], metadata=header.metadata,
                       config=_config(header.metadata), details=_details(header, header.tensors),
                       closers=[closer])


def _tensor_refs(path: Path, header: Header) -> tuple[dict[str, TensorRef], Callable[[], None]]:
    """Lazy refs over one file's memory map (mapped on first read), and the callable that unmaps it."""
    cache: list[np.ndarray] = []

    def mapped() -> np.ndarray:
        if not cache:
            cache.append(np.memmap(path, dtype=np.uint8, mode="r"))
        return cache[0]

    tensors = {}
    for info in header.tensors:
        raw = _raw_loader(mapped, info)
        tensors[info.name] = TensorRef(info.name, info.dtype, info.shape, _loader(mapped, path, info),
                                       nbytes=info.nbytes, file=str(path), offset=info.offset,
                                       storage=(str(path), info.offset, info.nbytes),
                                       raw_loader=raw, extra={"gguf_type": info.dtype.name})
    return tensors, cache.clear


# --- split sets (llama.cpp's gguf-split) ------------------------------------------------------
# `NAME-00001-of-00003.gguf` ... : the first file holds all the metadata, every file `split.no` (u16, from 0),
# `split.count` (u16) and `split.tensors.count` (i32, the whole set's), and its own tensors (offsets per file).

SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_path(prefix: str | Path, index: int, count: int) -> Path:
    """llama.cpp's `llama_split_path`: file `index` (from 0) of `count` is `PREFIX-{index+1:05d}-of-{count:05d}.gguf`."""
    return Path(f"{prefix}-{index + 1:05d}-of-{count:05d}.gguf")


def split_count(metadata: dict[str, Any]) -> int:
    value = metadata.get(SPLIT_COUNT)
    return int(value) if isinstance(value, (int, np.integer)) else 0


def open_split_set(path: Path, header: Header) -> ModelSource:
    """A split set as one model, from any of its files: every file is found by name, checked and mapped; the
    set's path is its first file (the one llama.cpp loads), its metadata the first file's without the split keys."""
    count, no = split_count(header.metadata), header.metadata.get(SPLIT_NO)
    require(count <= 99999, f"split.count {count} is more than a split name can hold", path)
    require(isinstance(no, (int, np.integer)) and 0 <= int(no) < count,
            f"split.no {no} is not a part number of a {count}-file split set", path)
    match = _SPLIT_NAME.match(path.name)
    require(match is not None and int(match["no"]) == int(no) + 1 and int(match["count"]) == count,
            f"part {int(no) + 1} of a {count}-file split GGUF must keep its name "
            f"{split_path('NAME', int(no), count).name}", path)
    prefix = path.parent / match["prefix"]
    paths = [split_path(prefix, i, count) for i in range(count)]
    tensors: dict[str, TensorRef] = {}
    infos: list[TensorInfo] = []
    closers = []
    headers = []
    for i, part in enumerate(paths):
        require(part.is_file(), f"part {i + 1} of this {count}-file split set is missing: {part.name}", path)
        h = header if part == path else read_header(part)
        require(split_count(h.metadata) == count and h.metadata.get(SPLIT_NO) == i,
                f"{part.name} is not part {i + 1} of {count} of this set (split.no {h.metadata.get(SPLIT_NO)}, "
                f"split.count {h.metadata.get(SPLIT_COUNT)})", path)
        refs, closer = _tensor_refs(part, h)
        for name in refs:
            require(name not in tensors, f"tensor {name!r} appears in more than one part ({part.name})", path)
        tensors.update(refs)
        infos.extend(h.tensors)
        closers.append(closer)
        headers.append(h)
    expected = headers[0].metadata.get(SPLIT_TENSORS)
    require(expected is None or int(expected) == len(tensors),
            f"the split set holds {len(tensors)} tensors but says {SPLIT_TENSORS} = {expected}", path)
    first = headers[0]
    metadata = {k: v for k, v in first.metadata.items() if k not in SPLIT_KEYS}
    details = _details(first, infos)
    details["split"] = {"count": count, "files": [p.name for p in paths]}
    return ModelSource(path=paths[0], format="gguf", tensors=tensors, files=paths, metadata=metadata,
                       config=_config(metadata), details=details, closers=closers)


def _raw_loader(mapped, info: TensorInfo):
    def raw() -> np.ndarray:
        return mapped()[info.offset:info.offset + info.nbytes]
    return raw


def _loader(mapped, path: Path, info: TensorInfo):
    def load() -> np.ndarray:
        raw = mapped()[info.offset:info.offset + info.nbytes]
        if not info.dtype.is_quantized:
            return raw.view(info.dtype.numpy).reshape(info.shape)
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import dequantize
        if info.nbytes == 0:
            return np.zeros(info.shape, np.float32)
        rows = math.prod(info.shape[:-1]) if info.shape else 1
        try:
            out = dequantize(raw.reshape(rows, -1), GGMLQuantizationType(info.dtype.gguf))
        except NotImplementedError:
            raise UnsupportedError(f"tensor {info.name!r}: gguf-py cannot dequantize {info.dtype.name}", path) from None
        return out.reshape(info.shape)
    return load


def detect(path: Path, head: bytes) -> bool:
    return head[:4] == MAGIC


# --- writer -------------------------------------------------------------------------------

def encode_metadata_value(key: str, value) -> tuple[Any, int, int | None]:
    """(value, GGUF type, element type or None) as the writer stores a metadata value; the rules are in the module
    docstring. Public so that size estimates count the bytes the writer will write."""
    from gguf.gguf_writer import GGUFValue
    if isinstance(value, GGUFValue):
        return value.value, int(value.type), None if value.sub_type is None else int(value.sub_type)
    if isinstance(value, GGUFArray):
        values = value.tolist()
        if value.type == STRING:
            values = [s.encode("utf-8", "surrogateescape") for s in values]
        return values, ARRAY, value.type
    if isinstance(value, (bool, np.bool_)):
        return bool(value), BOOL, None
    if isinstance(value, np.generic) and value.dtype in _BY_NUMPY:
        return value.item(), _BY_NUMPY[value.dtype], None
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return value, U32, None
        if -(1 << 63) <= value < 1 << 63:
            return value, I64, None
        if 0 <= value < 1 << 64:
            return value, U64, None
        return str(value), STRING, None
    if isinstance(value, float):
        return value, F32, None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape"), STRING, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), ARRAY, U8
    if isinstance(value, (list, tuple)):
        items = [encode_metadata_value(key, v) for v in value]
        if items and all(t == items[0][1] and t != ARRAY for _, t, _ in items):
            return [v for v, _, _ in items], ARRAY, items[0][1]
        if not items:
            return [], ARRAY, STRING
    return str(value).encode("utf-8", "surrogateescape"), STRING, None


def _writer_class():
    from gguf.constants import GGUFValueType
    from gguf.gguf_writer import GGUFWriter, WriterState

    class Writer(GGUFWriter):
        """GGUFWriter that can also write empty arrays (gguf-py refuses them; the format allows them)."""

        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type if sub_type is not None else GGUFValueType.STRING) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

        def write_tensor_data(self, tensor, tensor_endianess=None) -> None:
            """The next tensor's bytes through the file object (NumPy's `tofile` reports a short write on a full disk
            without its errno; `write` raises ENOSPC / EFBIG, which the atomic output turns into a one-line error)."""
            if self.state not in (WriterState.TI_DATA, WriterState.WEIGHTS):
                raise ValueError(f"expected tensor info or weights, got {self.state}")
            file_id = next(i for i, tensors in enumerate(self.tensors) if tensors)
            fout = self.fout[file_id]
            info = self.tensors[file_id].pop(next(iter(self.tensors[file_id])))
            assert info.nbytes == tensor.nbytes
            self.write_padding(fout, fout.tell())
            fout.write(memoryview(np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)))
            self.write_padding(fout, tensor.nbytes)
            self.state = WriterState.WEIGHTS

    return Writer


_LAYOUT_KEYS = ("general.alignment", "split.no", "split.count", "split.tensors.count")


def write_gguf(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
               aliases: dict | None = None, progress=None, *, split: tuple[int, int, int] | None = None) -> None:
    """Stream tensors into a GGUF file: F32/F16/BF16/F64/I8..I64 from `read()`, block types from `read_raw()`.

    `aliases` (tied names) are not written: GGUF expresses tying by leaving the tensor out.
    `split` = (part index from 0, part count, the set's tensor count) writes one file of a split set as
    gguf-split does: the first part carries the metadata, the others only the split keys (and a non-default
    alignment, so that each part reads alone); then split.no, split.tensors.count, split.count, in that order.
    """
    from gguf.constants import GGMLQuantizationType, GGUFValueType

    refs = tensor_list(tensors)
    meta = dict(metadata or {})
    plan = []
    for ref in refs:
        code = ref.dtype.gguf
        if code is None:
            hint = "; cast it to F32/F16/BF16 first" if ref.dtype.is_float else ""
            raise UnsupportedError(f"tensor {ref.name!r}: GGUF has no type for {ref.dtype.name}{hint}", dst)
        if len(ref.name.encode("utf-8")) > MAX_NAME:
            raise UnsupportedError(f"tensor name {ref.name!r} is longer than GGUF's {MAX_NAME} bytes; "
                                   "map the names to GGUF names first", dst)
        if len(ref.shape) > MAX_DIMS:
            raise UnsupportedError(f"tensor {ref.name!r} has {len(ref.shape)} dimensions; GGUF allows {MAX_DIMS}", dst)
        if ref.dtype.is_quantized:
            if ref.raw_loader is None:
                raise UnsupportedError(f"tensor {ref.name!r}: {ref.dtype.name} tensor without its raw blocks", dst)
            if not ref.shape or ref.shape[-1] % ref.dtype.block_size:
                raise UnsupportedError(f"tensor {ref.name!r}: shape {list(ref.shape)} does not fit "
                                       f"{ref.dtype.name} blocks of {ref.dtype.block_size}", dst)
        plan.append((ref, GGMLQuantizationType(code), ref.dtype.nbytes(ref.numel)))

    arch = meta.pop("general.architecture", None)
    arch = arch if isinstance(arch, str) and arch else NEUTRAL_ARCH
    writer = _writer_class()(dst, arch)
    later_part = split is not None and split[0] > 0
    if later_part:
        writer.kv_data[0].clear()       # gguf-split's later parts start from an empty context: no architecture
    alignment = meta.get("general.alignment")
    if alignment is not None:
        a = int(alignment.tolist()[0] if isinstance(alignment, GGUFArray) else alignment)
        if a <= 0 or a & (a - 1) or a >= 1 << 32:
            raise UnsupportedError(f"general.alignment {a} is not a power of two", dst)
        writer.data_alignment = a
        writer.add_key_value("general.alignment", a, GGUFValueType.UINT32)
    for key, value in meta.items():
        if key in _LAYOUT_KEYS or later_part:
            continue
        val, vtype, sub = encode_metadata_value(key, value)
        writer.add_key_value(str(key), val, GGUFValueType(vtype), None if sub is None else GGUFValueType(sub))
    if split is not None:
        no, count, total = split
        writer.add_key_value(SPLIT_NO, no, GGUFValueType.UINT16)
        writer.add_key_value(SPLIT_TENSORS, total, GGUFValueType.INT32)
        writer.add_key_value(SPLIT_COUNT, count, GGUFValueType.UINT16)
    for ref, qtype, nbytes in plan:
        # A non-uint8 dtype with raw_dtype keeps the logical shape as given; gguf-py reverses it to ne.
        writer.add_tensor_info(ref.name, ref.shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for ref, _qtype, nbytes in plan:
            if ref.dtype.is_quantized:
                data = np.ascontiguousarray(np.asarray(ref.read_raw()).view(np.uint8)).reshape(-1)
            else:
                arr = np.asarray(ref.read())
                if tuple(arr.shape) != ref.shape:
                    raise FormatError(f"tensor {ref.name!r}: reader gave shape {arr.shape}, header said {ref.shape}")
                data = np.ascontiguousarray(arr, dtype=ref.dtype.numpy).reshape(-1).view(np.uint8)
            if data.nbytes != nbytes:
                raise FormatError(f"tensor {ref.name!r}: got {data.nbytes} bytes, expected {nbytes}", dst)
            writer.write_tensor_data(data)
            if progress:
                progress(ref)
    finally:
        writer.close()


FORMAT = FormatSpec(
    name="gguf",
    extensions=(".gguf",),
    detect=detect,
    open=open_gguf,
    write=write_gguf,
    description="GGUF (llama.cpp)",
    options={"quantized": True},     # block-quantized tensors are written back as their raw blocks
)
