"""Shared rendering: rich consoles, sizes for people, JSON output, streamed text, and progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

console = Console()
err_console = Console(stderr=True)


def human_bytes(n: float) -> str:
    """Decimal units, as model cards and the guide give sizes (7B F16 = 14 GB)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def human_count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write(piece: str) -> None:
    """Streamed text: on stdout at once, not when the line ends."""
    sys.stdout.write(piece)
    sys.stdout.flush()


def verified_line(result) -> str:
    """What `--verify` found, for a conversion or quantization result with per-type `errors`."""
    if not result.errors:
        return "[green]verified[/green]: every tensor matches the source"
    worst = ", ".join(f"{t} {e:.3f}" for t, e in sorted(result.errors.items(), key=lambda kv: -kv[1]))
    return (f"[green]verified[/green]: every tensor within its type's error bound "
            f"(worst relative RMS error against the source: {worst})")


@contextlib.contextmanager
def byte_progress(total: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """A progress bar over bytes on stderr; yields `advance(nbytes)`. Hidden when not a terminal or disabled."""
    if not enabled or not err_console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def trust_option():
    """`--trust`: every command that opens a model scans it first; this lets a suspicious file through."""
    return typer.Option(False, "--trust", help="Open a file the scanner finds suspicious (a dangerous one is always refused).")
