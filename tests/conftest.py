"""Shared test helpers: run the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd=None, timeout: float = 300) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "modelport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Bad input: exit 2, exactly one line on stderr naming the problem, no traceback."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modelport: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@dataclass
class Cost:
    read_bytes: int = 0      # bytes this process read through read() calls (/proc/self/io rchar)
    peak_alloc: int = 0      # traced Python and NumPy allocation peak


class measure_cost:
    """`with measure_cost() as cost:` what a block read and allocated, as facts that don't depend on machine load
    (tests never assert on seconds). Memory-mapped pages are not reads: a lazy reader maps and touches nothing."""

    def __enter__(self) -> Cost:
        import tracemalloc

        self.cost = Cost()
        self._rchar = _rchar()
        tracemalloc.start()
        return self.cost

    def __exit__(self, *exc) -> None:
        import tracemalloc

        self.cost.peak_alloc = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.cost.read_bytes = _rchar() - self._rchar


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])
