"""`modelport` entry point: the app, global flags, and the one place errors become exit codes.

Each command lives in its own module under `modelport.cli` and exposes `register(app)`.
`--debug` and `-v/--verbose` are taken before or after the command name (`modelport inspect X --debug`),
and `--json` before it too (`modelport --json inspect X`).
Errors: a `ModelportError` prints one line and exits with its code (2 bad input, 1 a finding or a
failed check); anything else is a bug and says so in one line unless `--debug` shows the traceback.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import threading

import typer

from .. import __version__
from ..core.errors import ModelportError
from . import (
    chat_cmd,
    check_cmd,
    compare_cmd,
    convert_cmd,
    diff_cmd,
    embed_cmd,
    estimate_cmd,
    imatrix_cmd,
    inspect_cmd,
    list_cmd,
    perplexity_cmd,
    quantize_cmd,
    recommend_cmd,
    run_cmd,
    scan_cmd,
    serve_cmd,
    tour_cmd,
    train_cmd,
)
from .options import show_library_logs

# Command modules, in the order `--help` lists them.
COMMANDS = (list_cmd, inspect_cmd, scan_cmd, check_cmd, convert_cmd, quantize_cmd, imatrix_cmd, diff_cmd, estimate_cmd, recommend_cmd,
            run_cmd, chat_cmd, compare_cmd, perplexity_cmd, embed_cmd, serve_cmd, train_cmd, tour_cmd)

app = typer.Typer(
    name="modelport",
    help="One tool for LLM model files: inspect, scan, convert, quantize, run, train.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False, "verbose": False, "signal": None}


def _set_flag(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> None:
    """`--debug` / `--verbose` wherever given: either one lets the libraries' own logs through."""
    if value:
        _state[param.name] = True
        show_library_logs(True)


def _print_version(value: bool) -> None:
    if value:
        print(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", callback=_set_flag, is_eager=True,
                               help="Show full tracebacks on errors, and the libraries' own logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", callback=_set_flag, is_eager=True,
                                 help="Show the libraries' own logs (llama.cpp, transformers)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def register_commands() -> None:
    """Add every command to `app` (once; in-process callers such as tests call it too)."""
    if app.registered_commands:
        return
    for command in COMMANDS:
        command.register(app)


def build():
    """The click command for `app`, with `--debug` and `-v/--verbose` accepted after each command name too."""
    register_commands()
    group = typer.main.get_command(app)
    flags = []
    for param in group.params:   # the root's own --debug and --verbose, as typer built them
        if param.name in _state:
            flag = copy.copy(param)
            flag.expose_value = False   # commands do not take them as arguments: the callback records them
            flags.append(flag)
    for command in group.commands.values():
        command.params += flags
    return group


def hoist_json(argv: list[str]) -> list[str]:
    """`modelport --json CMD ...` as `modelport CMD --json ...`: every global option is a flag, so the command
    is the first word that does not start with a dash."""
    lead = 0
    while lead < len(argv) and argv[lead].startswith("-"):
        lead += 1
    if "--json" not in argv[:lead] or lead == len(argv):
        return argv
    before = [a for a in argv[:lead] if a != "--json"]
    return [*before, argv[lead], "--json", *argv[lead + 1:]]


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that outputs being written are removed on the way out."""


def _signalled(signum, frame) -> None:
    _state["signal"] = signum
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextlib.contextmanager
def _unwinding_signals():
    """Ctrl-C and SIGTERM unwind the command (atomic outputs remove their temporaries) and are remembered, so that
    the exit says which (typer turns a KeyboardInterrupt into a silent exit code 130). Commands that handle them
    themselves (chat, train, serve) install their own handlers inside; an in-process caller gets its own back."""
    _state["signal"] = None
    ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in ours.items():
            if signal.getsignal(signum) == default:
                previous[signum] = signal.signal(signum, _signalled)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> None:
    argv = hoist_json(list(argv if argv is not None else sys.argv[1:]))
    command = build()
    _state.update(debug=False, verbose=False)
    show_library_logs(False)
    try:
        with _unwinding_signals():
            code = command(args=argv, prog_name="modelport", standalone_mode=False)
        if code == 130 and _state["signal"] is not None:
            raise Terminated if _state["signal"] == signal.SIGTERM else KeyboardInterrupt
    except ModelportError as exc:
        if _state["debug"]:
            raise
        print(f"modelport: {exc.cli_text()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("modelport: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"modelport: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        sys.exit(143 if terminated else 130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
            exc.show()
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        print(f"modelport: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
