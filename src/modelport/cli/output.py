"""Shared rendering: rich consoles, sizes for people, JSON output, streamed text, and progress bars."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

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


class TensorProgress:
    """A progress bar on stderr counted in tensors, with the phase named (reading, writing, quantizing, verifying).

    Pass it as a library call's `progress`: it is called once per tensor done, and its `phase(name, total)`
    says what comes next (`total` None: no count, the bar only pulses). It shows nothing for work that ends
    within `delay` seconds, nothing when stderr is not a terminal or it is disabled, and is gone when done."""

    def __init__(self, label: str, enabled: bool = True, delay: float = 1.0):
        self.label = label
        self.enabled = enabled and err_console.is_terminal
        self.delay = delay
        self.done = 0
        self.total: int | None = None
        self._progress: Progress | None = None
        self._task = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._shown = False

    def __enter__(self) -> TensorProgress:
        if self.enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                      TimeElapsedColumn(), console=err_console, transient=True)
            self._task = self._progress.add_task(self.label, total=None, count="")
            self._timer = threading.Timer(self.delay, self._show)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _show(self) -> None:
        with self._lock:
            if self._progress is not None and not self._shown:
                self._shown = True
                self._progress.start()

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._shown:
                self._progress.stop()
            self._progress = None

    def phase(self, name: str, total: int | None = None) -> None:
        """Start counting `name` from zero, out of `total` tensors (None: unknown)."""
        self.done, self.total = 0, total
        self._update(description=f"{self.label}: {name}", total=total, completed=0)

    def __call__(self, ref: Any = None) -> None:
        """One tensor done."""
        self.done += 1
        self._update(completed=self.done)

    def _update(self, **fields) -> None:
        if self._progress is None:
            return
        count = f"{self.done}/{self.total} tensors" if self.total is not None else ""
        self._progress.update(self._task, count=count, **fields)


def trust_option():
    """`--trust`: every command that opens a model scans it first; this lets a suspicious file through."""
    return typer.Option(False, "--trust", help="Open a file the scanner finds suspicious (a dangerous one is always refused).")
