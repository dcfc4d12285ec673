"""Sizes people type: '5GB', '500MB', '2GiB' or a byte count."""

from __future__ import annotations

from .errors import UnsupportedError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """'5GB', '500MB', '2GiB', '2G' (gguf-split's spelling), or a byte count -> bytes (decimal units like huggingface_hub)."""
    if text is None or isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    digits = s.rstrip("KMGTIB")
    unit = s[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        raise UnsupportedError(f"cannot read size {text!r}; use e.g. 2GB or 500MB") from None
    if unit not in _UNITS or value <= 0:
        raise UnsupportedError(f"cannot read size {text!r}; use e.g. 2GB or 500MB")
    return int(value * _UNITS[unit])
