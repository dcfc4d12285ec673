"""Seeded mutations of a model file's bytes: generic damage plus mutations that know the container's structure.

`mutate(data, kind, rng)` applies one to three mutations drawn from `rng` (a `random.Random`, so a run is
reproducible from its seed). Generic: bit flips, interesting bytes, truncation, inserted or deleted bytes, huge
integers written over 1/2/4/8 bytes. Structure-aware, by `kind`: zip record fields (sizes, offsets, method, flags,
name lengths, CRC), the safetensors JSON header (length, offsets, shapes, dtypes, nesting), the .npy header dict,
GGUF counts and lengths, protobuf varints and lengths, msgpack lengths and nesting, pickle string lengths, the
fields after HDF5's structure signatures (B-trees, heaps, object headers).
"""

from __future__ import annotations

import json
import random
import re
import struct

HUGE = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 40, 1 << 60,
        0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _put(data: bytearray, pos: int, width: int, value: int, big: bool = False) -> None:
    value &= (1 << (8 * width)) - 1
    data[pos:pos + width] = value.to_bytes(width, "big" if big else "little")


def _int_value(rng: random.Random, old: int | None = None) -> int:
    if old is not None and rng.random() < 0.3:
        return max(0, old + rng.choice((-2, -1, 1, 2, 7, 4096)))
    return rng.choice(HUGE)


# --- generic ------------------------------------------------------------------------------

def flip_bits(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return data


def interesting_byte(data: bytearray, rng: random.Random) -> bytearray:
    data[rng.randrange(len(data))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    return data


def truncate(data: bytearray, rng: random.Random) -> bytearray:
    cut = rng.randrange(len(data)) if rng.random() < 0.5 else max(0, len(data) - rng.randint(1, 64))
    return data[:cut]


def insert(data: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(data) + 1)
    return data[:i] + bytearray(rng.randbytes(rng.randint(1, 64))) + data[i:]


def delete(data: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 64):]


def duplicate(data: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(data))
    chunk = data[i:i + rng.randint(1, 256)]
    j = rng.randrange(len(data) + 1)
    return data[:j] + chunk + data[j:]


def big_int(data: bytearray, rng: random.Random, align: int = 1) -> bytearray:
    width = rng.choice((1, 2, 4, 8))
    if len(data) < width:
        return data
    pos = rng.randrange(0, len(data) - width + 1)
    pos -= pos % align
    _put(data, pos, width, _int_value(rng), big=rng.random() < 0.1)
    return data


GENERIC = (flip_bits, interesting_byte, truncate, insert, delete, duplicate, big_int)


# --- zip ----------------------------------------------------------------------------------

# (signature, {field offset: width}) for local headers, central directory entries and the end record.
_ZIP_FIELDS = {
    b"PK\x03\x04": {4: 2, 6: 2, 8: 2, 14: 4, 18: 4, 22: 4, 26: 2, 28: 2},
    b"PK\x01\x02": {8: 2, 10: 2, 16: 4, 20: 4, 24: 4, 28: 2, 30: 2, 32: 2, 38: 4, 42: 4},
    b"PK\x05\x06": {4: 2, 6: 2, 8: 2, 10: 2, 12: 4, 16: 4, 20: 2},
    b"PK\x06\x06": {24: 8, 32: 8, 40: 8, 48: 8},
}


def zip_field(data: bytearray, rng: random.Random) -> bytearray:
    records = [(m.start(), sig) for sig in _ZIP_FIELDS for m in re.finditer(re.escape(sig), data)]
    if not records:
        return big_int(data, rng)
    start, sig = rng.choice(records)
    offset, width = rng.choice(list(_ZIP_FIELDS[sig].items()))
    pos = start + offset
    if pos + width > len(data):
        return data
    if offset in (8, 10) and rng.random() < 0.5 and width == 2:   # method / flags: other real values
        _put(data, pos, 2, rng.choice((0, 1, 8, 9, 12, 14, 93, 99)))
    else:
        _put(data, pos, width, _int_value(rng, int.from_bytes(data[pos:pos + width], "little")))
    return data


def zip_name(data: bytearray, rng: random.Random) -> bytearray:
    """Rename a member (same length, so offsets stay right): a clash, a path, a NUL."""
    names = [(m.start() + 30, int.from_bytes(data[m.start() + 26:m.start() + 28], "little"))
             for m in re.finditer(rb"PK\x03\x04", data) if m.start() + 30 <= len(data)]
    names += [(m.start() + 46, int.from_bytes(data[m.start() + 28:m.start() + 30], "little"))
              for m in re.finditer(rb"PK\x01\x02", data) if m.start() + 46 <= len(data)]
    if not names:
        return data
    pos, n = rng.choice(names)
    if n == 0:
        return data
    new = rng.choice((b"../" + b"x" * n, b"/" * n, b"\x00" * n, bytes(data[names[0][0]:names[0][0] + n]), b"a" * n))
    data[pos:pos + n] = new[:n].ljust(n, b"a")
    return data


# --- safetensors JSON header --------------------------------------------------------------

def json_header(data: bytearray, rng: random.Random) -> bytearray:
    if len(data) < 8:
        return data
    n = int.from_bytes(data[:8], "little")
    if rng.random() < 0.25 or n > len(data):
        _put(data, 0, 8, _int_value(rng, n))
        return data
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except (ValueError, RecursionError):
        return big_int(data, rng)
    names = [k for k in header if k != "__metadata__"]
    if not names:
        return data
    entry = header[rng.choice(names)]
    choice = rng.randrange(6)
    if choice == 0:
        entry["data_offsets"] = [rng.choice(HUGE), rng.choice(HUGE)]
    elif choice == 1:
        entry["shape"] = [rng.choice(HUGE) for _ in range(rng.randint(0, 4))]
    elif choice == 2:
        entry["dtype"] = rng.choice(("F4", "I64", "BOOL", "F8_E4M3", "U64", "", "O", 7))
    elif choice == 3:
        entry["shape"] = "x" if rng.random() < 0.5 else [-1, 2]
    elif choice == 4:
        header["__metadata__"] = {"deep": "<deep>"} if rng.random() < 0.5 else [1]
    else:
        entry["data_offsets"] = entry["data_offsets"][::-1]
    body = json.dumps(header).replace('"<deep>"', "[" * 5000 + "]" * 5000).encode()
    body += b" " * (-len(body) % 8)
    return bytearray(len(body).to_bytes(8, "little")) + bytearray(body) + data[8 + n:]


# --- .npy header ----------------------------------------------------------------------------

def npy_header(data: bytearray, rng: random.Random) -> bytearray:
    m = re.search(rb"\{.*?\}", data[:4096], re.S)
    if not m:
        return big_int(data, rng)
    text = bytes(m.group(0))
    choice = rng.randrange(4)
    if choice == 0:
        text = re.sub(rb"\d+", lambda _: str(rng.choice(HUGE)).encode(), text, count=1)
    elif choice == 1:
        text = re.sub(rb"'descr': '[^']*'", lambda _: b"'descr': '" + rng.choice(
            (b"|O", b"<U1000000000", b"|V99999999999", b"<f4", b">i8", b"[('a','<f4')]", b"<M8[s]")) + b"'", text)
    elif choice == 2:
        text = text.replace(b"False", b"True")
    else:
        text = re.sub(rb"\(.*?\)", b"(" + b"4, " * rng.randint(1, 70) + b")", text, count=1)
    out = data[:m.start()] + text + data[m.end():]
    if rng.random() < 0.3:
        _put(out, 8, 2, _int_value(rng, int.from_bytes(out[8:10], "little")))
    return out


# --- GGUF -----------------------------------------------------------------------------------

_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_fields(data: bytes) -> list[tuple[int, int]]:
    """(position, width) of every count, length, type and offset field of a GGUF header, by walking it."""
    fields = [(8, 8), (16, 8)]
    pos = 24
    try:
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

        def string() -> None:
            nonlocal pos
            fields.append((pos, 8))
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]

        def value(vtype: int) -> None:
            nonlocal pos
            if vtype == 8:
                string()
            elif vtype == 9:
                fields.extend([(pos, 4), (pos + 4, 8)])
                itype, count = struct.unpack_from("<IQ", data, pos)
                pos += 12
                for _ in range(min(count, 10_000)):
                    value(itype)
            else:
                pos += _GGUF_SIZES[vtype]

        for _ in range(min(n_kv, 10_000)):
            string()
            fields.append((pos, 4))
            vtype = struct.unpack_from("<I", data, pos)[0]
            pos += 4
            value(vtype)
        for _ in range(min(n_tensors, 10_000)):
            string()
            fields.append((pos, 4))
            n_dims = struct.unpack_from("<I", data, pos)[0]
            pos += 4
            fields.extend((pos + 8 * i, 8) for i in range(min(n_dims, 8)))
            pos += 8 * n_dims
            fields.extend([(pos, 4), (pos + 4, 8)])
            pos += 12
    except (struct.error, KeyError, OverflowError):
        pass
    return [(p, w) for p, w in fields if p + w <= len(data)]


def gguf_field(data: bytearray, rng: random.Random) -> bytearray:
    fields = gguf_fields(bytes(data))
    if not fields:
        return big_int(data, rng)
    pos, width = rng.choice(fields)
    _put(data, pos, width, _int_value(rng, int.from_bytes(data[pos:pos + width], "little")))
    return data


# --- protobuf -------------------------------------------------------------------------------

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return value, pos


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def proto_varints(data: bytes, start: int = 0, end: int | None = None, depth: int = 0, out=None) -> list[tuple[int, int, int]]:
    """(position, byte length, value) of the tags, varint values and lengths of a protobuf message, nested
    messages included where a length-delimited field parses as one."""
    out = [] if out is None else out
    end = len(data) if end is None else end
    pos = start
    found: list = []
    try:
        while pos < end:
            tag, after = _varint(data, pos)
            found.append((pos, after - pos, tag))
            wire = tag & 7
            if wire == 0:
                value, nxt = _varint(data, after)
                found.append((after, nxt - after, value))
                pos = nxt
            elif wire == 2:
                length, body = _varint(data, after)
                found.append((after, body - after, length))
                if body + length > end:
                    raise ValueError
                if depth < 20 and length:
                    proto_varints(data, body, body + length, depth + 1, found)
                pos = body + length
            elif wire == 5:
                pos = after + 4
            elif wire == 1:
                pos = after + 8
            else:
                raise ValueError
    except ValueError:
        if depth:
            return out  # not a message: a string or bytes payload
    out.extend(found)
    return out


def proto_varint(data: bytearray, rng: random.Random) -> bytearray:
    fields = proto_varints(bytes(data))
    if not fields:
        return big_int(data, rng)
    pos, width, value = rng.choice(fields)
    return data[:pos] + bytearray(encode_varint(_int_value(rng, value))) + data[pos + width:]


def varint_anywhere(data: bytearray, rng: random.Random) -> bytearray:
    """TF's table blocks are varint-encoded too but not protobuf: rewrite a varint at a random place."""
    pos = rng.randrange(len(data))
    try:
        _, end = _varint(bytes(data), pos)
    except ValueError:
        return data
    return data[:pos] + bytearray(encode_varint(_int_value(rng))) + data[end:]


# --- msgpack ----------------------------------------------------------------------------------

_MSGPACK_LENGTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4, 0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}


def msgpack_length(data: bytearray, rng: random.Random) -> bytearray:
    spots = [i for i, b in enumerate(data) if b in _MSGPACK_LENGTHS or 0x80 <= b <= 0x9F]
    if not spots:
        return big_int(data, rng)
    i = rng.choice(spots)
    b = data[i]
    if b in _MSGPACK_LENGTHS:
        width = _MSGPACK_LENGTHS[b]
        if i + 1 + width <= len(data):
            _put(data, i + 1, width, _int_value(rng, int.from_bytes(data[i + 1:i + 1 + width], "big")), big=True)
    elif rng.random() < 0.5:
        data[i] = (b & 0xF0) | rng.randrange(16)                       # fixmap/fixarray count
    else:
        data[i:i + 1] = bytes([0xDF if b < 0x90 else 0xDD]) + struct.pack(">I", rng.choice((0xFFFFFFFF, 1 << 31, 70000)))
    return data


def msgpack_nest(data: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(data))
    return data[:i] + b"\x91" * rng.choice((100, 5000, 200_000)) + data[i:]


# --- pickle -----------------------------------------------------------------------------------

def pickle_length(data: bytearray, rng: random.Random) -> bytearray:
    """A BINUNICODE/BINBYTES/SHORT_BINUNICODE length or a memo index set to something large."""
    spots = [m.start() for m in re.finditer(rb"[XBq\x8c\x8dhjr]", data)]
    if not spots:
        return big_int(data, rng)
    i = rng.choice(spots)
    width = {ord("X"): 4, ord("B"): 4, ord("r"): 4, ord("j"): 4, 0x8D: 8}.get(data[i], 1)
    if i + 1 + width <= len(data):
        _put(data, i + 1, width, _int_value(rng))
    return data


# --- HDF5 -------------------------------------------------------------------------------------

# Signatures of HDF5's on-disk structures: superblock, v1 B-tree and local heap, symbol table node, global heap
# collection (every variable-length string), v2 object header and its continuation, fractal heap, v2 B-tree.
_HDF5_SIGNATURES = (b"\x89HDF\r\n\x1a\n", b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"OCHK", b"FRHP", b"FHDB",
                    b"BTHD", b"BTLF", b"BTIN")


def hdf5_field(data: bytearray, rng: random.Random) -> bytearray:
    """An interesting integer over a field of a structure HDF5 finds by address: sizes, counts, addresses and
    object lengths in the 64 bytes after a signature (a global heap object's size: HDF5 loops on some)."""
    spots = [m.start() for sig in _HDF5_SIGNATURES for m in re.finditer(re.escape(sig), data)]
    if not spots:
        return big_int(data, rng, align=8)
    start = rng.choice(spots)
    width = rng.choice((1, 2, 4, 8))
    pos = start + 4 + width * rng.randrange(64 // width)
    if pos + width > len(data):
        return data
    _put(data, pos, width, _int_value(rng, int.from_bytes(data[pos:pos + width], "little")))
    return data


STRUCTURED = {
    "zip": (zip_field, zip_field, zip_name),
    "json-header": (json_header,),
    "npy": (npy_header,),
    "gguf": (gguf_field,),
    "protobuf": (proto_varint,),
    "table": (varint_anywhere,),
    "msgpack": (msgpack_length, msgpack_nest),
    "pickle": (pickle_length,),
    "hdf5": (lambda d, r: big_int(d, r, align=8), hdf5_field),
    "flatbuffer": (lambda d, r: big_int(d, r, align=4),),
    "raw": (),
}


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not out:
            break
        structured = STRUCTURED.get(kind, ())
        op = rng.choice(structured) if structured and rng.random() < 0.5 else rng.choice(GENERIC)
        out = op(out, rng)
    return bytes(out)
