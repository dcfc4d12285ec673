"""LevelDB-format sorted tables (the TF checkpoint `.index` file) and the CRC32C they are checked with.

A table is a footer (metaindex and index handles, magic), an index block and data blocks with
prefix-compressed keys and restart arrays; every block's masked CRC32C is checked. Snappy-compressed
blocks (TensorFlow never writes them) are decoded with `cramjam` if installed, else refused.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from ...core import protobuf as pb
from ...core.errors import FormatError, require

TABLE_MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)
FOOTER = 48

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
    """The CRC32C a table or bundle stored "masked" (rotated and offset, so CRCs of CRCs stay distinct)."""
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


def has_table_magic(path: Path) -> bool:
    """Whether `path` ends with the LevelDB table magic (a TF `.index` file), without reading the rest."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() < FOOTER:
                return False
            f.seek(-8, 2)
            return f.read(8) == TABLE_MAGIC
    except OSError:
        return False

