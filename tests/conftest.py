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
