"""`modelport` entry point: the app, global flags, and the one place errors become exit codes.

Each command lives in its own module under `modelport.cli` and exposes `register(app)`.
Errors: a `ModelportError` prints one line and exits with its code (2 bad input, 1 a finding or a
failed check); anything else is a bug and says so in one line unless `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from ..core.errors import ModelportError
from . import (chat_cmd, check_cmd, compare_cmd, convert_cmd, diff_cmd, estimate_cmd, inspect_cmd, list_cmd, perplexity_cmd,
               quantize_cmd, recommend_cmd, run_cmd, scan_cmd)

# Command modules, in the order `--help` lists them.
COMMANDS = (list_cmd, inspect_cmd, scan_cmd, check_cmd, convert_cmd, quantize_cmd, diff_cmd, estimate_cmd, recommend_cmd, run_cmd,
            chat_cmd, compare_cmd, perplexity_cmd)

app = typer.Typer(
    name="modelport",
    help="One tool for LLM model files: inspect, scan, convert, quantize, run, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def register_commands() -> None:
    """Add every command to `app` (once; in-process callers such as tests call it too)."""
    if app.registered_commands:
        return
    for command in COMMANDS:
        command.register(app)


def main(argv: list[str] | None = None) -> None:
    register_commands()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = app(args=argv, prog_name="modelport", standalone_mode=False)
    except ModelportError as exc:
        if debug:
            raise
        print(f"modelport: {exc.cli_text()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("modelport: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("modelport: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        print(f"modelport: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(3)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
