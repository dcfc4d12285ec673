"""`modelport chat MODEL`: a conversation in the terminal (or through a pipe), streamed.

Lines starting with `/` are commands (`/help` lists them). On a terminal, lines are read with
`readline` (editing, history kept in memory for the session); Ctrl-C while an answer streams ends
that answer and keeps the conversation (the partial answer stays in it, as shown); Ctrl-C or Ctrl-D
at the prompt leaves. The conversation itself (history, system prompt, stop strings, context limit)
is a `runtime.Conversation`; this module only reads lines and prints.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

import typer
from rich.markup import escape

from .. import runtime
from ..core.errors import UnsupportedError
from .options import (
    ctx_option,
    engine_option,
    generation_settings,
    max_tokens_option,
    quiet_libraries,
    seed_option,
    stop_option,
    temperature_option,
    top_k_option,
    top_p_option,
)
from .output import err_console, trust_option, write

EXIT_COMMANDS = ("/exit", "/quit", "/bye")
COMMANDS = (
    ("/help", "list these commands"),
    ("/reset", "forget the conversation (the system message stays)"),
    ("/system TEXT", "set the system message and start over"),
    ("/exit", "leave (also /quit, /bye, Ctrl-D, or Ctrl-C at the prompt)"),
)
HELP = "/help for commands; Ctrl-C stops an answer"
PROMPT = ">>> "


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, weights file with a config beside it, or "
                                                "ONNX export folder (its model_int8.onnx for the int8 graph)."),
        system: str | None = typer.Option(None, "--system", help="System message (else the template's own default)."),
        max_tokens: int = max_tokens_option(512, "Most tokens per answer."),
        temperature: float = temperature_option(),
        top_p: float = top_p_option(),
        top_k: int = top_k_option(),
        seed: int | None = seed_option(),
        engine: str = engine_option(),
        ctx: int | None = ctx_option(),
        stop: list[str] | None = stop_option(),
        stats: bool = typer.Option(False, "--stats", help="After each answer, print token counts and speed on stderr."),
        trust: bool = trust_option(),
    ) -> None:
        """Chat with a model; keeps the conversation. /help lists the commands; Ctrl-C stops an answer."""
        quiet_libraries()
        settings = generation_settings(max_tokens, temperature, top_p, top_k, seed, stop)
        interactive = sys.stdin.isatty()
        if interactive:
            err_console.print(f"[dim]loading {escape(str(model))} …[/dim]", highlight=False, soft_wrap=True)
        start = time.perf_counter()
        with runtime.load(model, engine=engine, ctx=ctx, trust=trust, needs_template=True) as eng:
            if eng.template is None:
                raise UnsupportedError("this model has no chat template; use 'modelport run --raw'", model)
            conversation = runtime.Conversation(eng, settings, system=system, on_text=write)
            if interactive:
                err_console.print(f"[dim]loaded in {time.perf_counter() - start:.1f}s ({eng.name}) · {HELP}[/dim]",
                                  highlight=False, soft_wrap=True)
            for text in user_lines(interactive):
                if not text.startswith("/"):
                    answer(conversation, text, stats)
                    continue
                command, _, arg = text.partition(" ")
                if command in EXIT_COMMANDS:
                    break
                if command == "/help":
                    err_console.print(help_text(), highlight=False)
                elif command == "/reset":
                    conversation.reset()
                    err_console.print("[dim](conversation cleared)[/dim]")
                elif command == "/system":
                    conversation.set_system(arg.strip())
                    err_console.print("[dim](system message set; conversation cleared)[/dim]")
                else:
                    err_console.print(f"[yellow]unknown command {escape(command)}[/yellow]; /help lists them")


def help_text() -> str:
    return "\n".join(f"  {escape(name):<14} {what}" for name, what in COMMANDS)


def user_lines(interactive: bool):
    """The non-blank lines typed (after a prompt on a terminal) or piped in, until end of input, Ctrl-D or
    Ctrl-C at the prompt. On a terminal `input()` goes through readline: line editing, and history
    (up/down) kept in memory, never written to disk."""
    if interactive:
        with contextlib.suppress(ImportError):   # not on every platform; input() works without it
            import readline  # noqa: F401 - importing it is what turns line editing on for input()
    while True:
        try:
            line = read_line(interactive)
        except (EOFError, KeyboardInterrupt):
            if interactive:
                sys.stderr.write("\n")
            return
        if line is None:
            return
        if line.strip():
            yield line


def read_line(interactive: bool) -> str | None:
    """One line without its newline; None at end of input."""
    if not interactive:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    if sys.stdout.isatty():
        return input(PROMPT)          # readline draws the prompt and knows where the line starts
    sys.stderr.write(PROMPT)          # answers piped elsewhere: the prompt stays on the terminal
    sys.stderr.flush()
    return input()


@contextlib.contextmanager
def ctrl_c_stops():
    """While an answer streams, Ctrl-C (SIGINT) only asks it to stop: yields the `cancel()` to poll.
    (Signal handlers belong to the main thread; elsewhere, as under a server, nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def answer(conversation: runtime.Conversation, text: str, stats: bool) -> None:
    """One turn: the answer streamed to stdout, or a warning (the conversation stays usable) when it is full.
    Ctrl-C ends the answer where it is; what was shown stays in the conversation."""
    try:
        with ctrl_c_stops() as cancel:
            result = conversation.send(text, cancel=cancel)
    except runtime.ContextFullError as exc:
        err_console.print(f"[yellow]{escape(str(exc))}[/yellow]")
        return
    write("\n")
    if result.stop_reason == "cancelled":
        err_console.print("[dim](answer stopped; kept in the conversation)[/dim]", highlight=False)
    if stats:
        d = result.to_dict()
        print(f"[prompt {d['prompt_tokens']} tokens, {d['completion_tokens']} generated, "
              f"{d['generation_tokens_per_second']} tokens/s, stop: {d['stop_reason']}]",
              file=sys.stderr, flush=True)
