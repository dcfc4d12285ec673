"""`modelport.scan`: find what would run code or harm a reader, in every format, without loading anything.

    report = modelport.scan("model.bin")       # a file, a folder (recursive), or several
    report.verdict                              # "safe" | "unknown" | "suspicious" | "dangerous"
    for f in report.findings: print(f.severity, f.what, f.where(), f.why)

`unknown`: content the scanner could not identify or open (a 7z archive, an encrypted member, random
bytes): nothing in it was checked, so it is never called safe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..core.errors import ModelportError, UnsafeFileError
from .containers import iter_files, scan_file
from .findings import DANGEROUS, SAFE, SUSPICIOUS, UNKNOWN, FileReport, Finding, ScanReport

__all__ = ["scan", "guard", "scan_file", "ScanReport", "FileReport", "Finding", "SAFE", "UNKNOWN", "SUSPICIOUS",
           "DANGEROUS"]


def scan(path: str | os.PathLike | Iterable[str | os.PathLike], reader_checks: bool = True) -> ScanReport:
    """Scan files and folders (recursively). A path that does not exist is a `ModelportError` (exit 2).

    `reader_checks=False` leaves the layout checks that modelport's own readers make on open to them."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    report = ScanReport()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ModelportError("no such file or folder", p)
        if p.is_file() and not os.access(p, os.R_OK):
            raise ModelportError("cannot read: permission denied", p)
        for f in iter_files(p):
            report.files.append(scan_file(f, reader_checks))
    return report


def guard(path: str | os.PathLike, trust: bool = False) -> ScanReport:
    """The check every command that opens a model runs first: a dangerous file is refused, a suspicious
    one too unless `trust` (the `--trust` flag). Raises `UnsafeFileError` naming the first finding.
    Unknown content is left to the format reader, which refuses what it cannot identify."""
    report = scan(path, reader_checks=False)   # the reader opening it next makes those checks itself
    # A merely malformed structure is left to the format's reader, which refuses it with a sharper message.
    findings = [f for f in report.findings if not f.malformed]
    worst = [f for f in findings if f.severity == DANGEROUS] or \
        ([] if trust else [f for f in findings if f.severity == SUSPICIOUS])
    if worst:
        f = worst[0]
        more = f" (+{len(worst) - 1} more)" if len(worst) > 1 else ""
        hint = "" if f.severity == DANGEROUS else "; pass --trust to open it anyway"
        where = f"{f.member}: " if f.member else ""
        at = f" at byte {f.offset}" if f.offset is not None else ""
        raise UnsafeFileError(f"{f.severity}: {where}{f.what}{at}: {f.why}{more}{hint} (see 'modelport scan')", f.file)
    return report
