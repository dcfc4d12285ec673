"""Limits on a zip member's declared sizes, checked before anything is read or allocated.

A zip's central directory is the file's own claim: a member may say it holds 4 GB in a 1 KB file (and a
buffered read of that length allocates it), or that 1 KB of deflate expands to a terabyte (a zip bomb).
Stored members must fit in the file; deflate cannot expand more than 1032 times (258-byte matches in
2-bit codes), so a member claiming more is refused whatever its data. Model zips (torch, .npz, .keras)
only use stored and deflated members.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .errors import FormatError, UnsupportedError

DEFLATE_RATIO = 1032


def check_member(info: zipfile.ZipInfo, file_size: int, path: Path) -> None:
    """Refuse an encrypted member, an unusual compression, and declared sizes that cannot be true of a file of
    `file_size` bytes."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise UnsupportedError(f"zip member {name!r} is encrypted", path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsupportedError(f"zip member {name!r}: compression method {info.compress_type}; "
                               "model archives use stored or deflated members", path)
    if info.compress_size > file_size or (info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size):
        raise FormatError(f"zip member {name!r} claims {info.compress_size} bytes stored in a {file_size}-byte file", path)
    if info.file_size > DEFLATE_RATIO * info.compress_size + 64:
        raise FormatError(f"zip member {name!r} claims {info.file_size} bytes from {info.compress_size} deflated; "
                          f"deflate expands {DEFLATE_RATIO}x at most (a zip bomb?)", path)
