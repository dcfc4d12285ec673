"""Shared test helpers: the CLI as a user runs it, in this process by default, in a fresh one where that is the point.

`run_cli` (and the `cli` fixture) calls `modelport.cli.main.main(argv)`, the entry point's own error handling
included, inside typer's `CliRunner` isolation (stdin/stdout/stderr swapped): same exit codes and output as the
`modelport` command, without paying the interpreter start and the torch/transformers imports (1-3 s) per call.
`run_cli_process` spawns `python` for what only a real process shows: the exit status the shell sees, what
reaches the real stderr (tracebacks, library chatter), signals, environment read at start-up, modules made
unimportable before modelport starts (`pre`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and so
# would every modelport process the tests start: the Ctrl-C tests would see nothing. Children inherit an ignored
# signal but not a handler, so a handler here gives them the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The environment the subprocess gives the CLI, set here too: before modelport's rich consoles are made (they
# read COLUMNS once) and before transformers and tqdm are imported (they read their variables once).
SUBPROCESS_ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
os.environ.update(SUBPROCESS_ENV)


def _quiet_libraries_as_the_cli_does() -> None:
    """`run`/`chat` silence the engines' progress bars by setting variables before the engines are imported; in
    this process the tests import them first, so the variables are set at start-up, as a fresh CLI process has them."""
    from modelport.cli.run_cmd import quiet_libraries

    quiet_libraries()


_quiet_libraries_as_the_cli_does()


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args, stdin: str | None = None, env_extra: dict | None = None, pre: str = "",
            timeout: float = 600) -> CliResult:
    """`modelport ARGS` in this process (stdin from `stdin`); `env_extra` or `pre` need a fresh interpreter
    and so run `run_cli_process`."""
    if env_extra or pre:
        return run_cli_process(*args, stdin=stdin, env_extra=env_extra, pre=pre, timeout=timeout)
    from typer.testing import CliRunner

    from modelport.cli.main import app, main

    registered = list(app.registered_commands)      # main() registers the commands on each call: undo it after
    with CliRunner().isolation(input=stdin) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:                   # what the interpreter makes of it
            code = 0 if exc.code is None else exc.code
            if not isinstance(code, int):
                print(code, file=sys.stderr)
                code = 1
        except Exception:                           # escaped main() (--debug re-raises): traceback, exit 1
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            app.registered_commands[:] = registered
        return CliResult(code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace"))


def cli_process(*args, env_extra: dict | None = None, pre: str = "") -> tuple[list[str], dict]:
    """argv and environment of `modelport ARGS` in a fresh interpreter: a bare environment (plus `env_extra`) and
    the same modelport source as this process; `pre` is Python run first (e.g. to make a package unimportable)."""
    import modelport

    code = f"{pre}\nfrom modelport.cli.main import main\nmain()"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(Path(modelport.__file__).parents[1]),
           **SUBPROCESS_ENV, **(env_extra or {})}
    return [sys.executable, "-c", code, *map(str, args)], env


def run_cli_process(*args, stdin: str | None = None, env_extra: dict | None = None, pre: str = "",
                    timeout: float = 600) -> CliResult:
    """`modelport ARGS` run to the end in a fresh interpreter (see `cli_process`)."""
    argv, env = cli_process(*args, env_extra=env_extra, pre=pre)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
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
