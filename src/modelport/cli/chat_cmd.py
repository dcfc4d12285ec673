"""`modelport chat MODEL`: a conversation in the terminal (or through a pipe), streamed.

Lines starting with `/` are commands: `/reset` forgets the conversation, `/system TEXT` sets the
system message (and starts over), `/exit` leaves. The conversation itself (history, system prompt,
stop strings, context limit) is a `runtime.Conversation`; this module only reads lines and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .. import runtime
from ..core.errors import UnsupportedError
from .options import (ctx_option, engine_option, generation_settings, max_tokens_option, quiet_libraries, seed_option,
                      stop_option, temperature_option, top_k_option, top_p_option)
from .output import err_console, trust_option, write

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /exit"
EXIT_COMMANDS = ("/exit", "/quit", "/bye")


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, or weights file with a config beside it."),
        system: Optional[str] = typer.Option(None, "--system", help="System message (else the template's own default)."),
        max_tokens: int = max_tokens_option(512, "Most tokens per answer."),
        temperature: float = temperature_option(),
        top_p: float = top_p_option(),
        top_k: int = top_k_option(),
        seed: Optional[int] = seed_option(),
        engine: str = engine_option(),
        ctx: Optional[int] = ctx_option(),
        stop: Optional[list[str]] = stop_option(),
        stats: bool = typer.Option(False, "--stats", help="After each answer, print token counts and speed on stderr."),
        trust: bool = trust_option(),
    ) -> None:
        """Chat with a model; keeps the conversation. /reset, /system TEXT, /exit."""
        quiet_libraries()
        settings = generation_settings(max_tokens, temperature, top_p, top_k, seed, stop)
        interactive = sys.stdin.isatty()
        with runtime.load(model, engine=engine, ctx=ctx, trust=trust, needs_template=True) as eng:
            if eng.template is None:
                raise UnsupportedError("this model has no chat template; use 'modelport run --raw'", model)
            conversation = runtime.Conversation(eng, settings, system=system, on_text=write)
            if interactive:
                err_console.print(f"[dim]{eng.name} · {HELP}[/dim]")
            for text in user_lines(interactive):
                if not text.startswith("/"):
                    answer(conversation, text, stats)
                    continue
                command, _, arg = text.partition(" ")
                if command in EXIT_COMMANDS:
                    break
                if command == "/reset":
                    conversation.reset()
                    err_console.print("[dim](conversation cleared)[/dim]")
                elif command == "/system":
                    conversation.set_system(arg.strip())
                    err_console.print("[dim](system message set; conversation cleared)[/dim]")
                else:
                    err_console.print(f"[yellow]unknown command {escape(command)}[/yellow]; {HELP}")


def user_lines(interactive: bool):
    """The non-blank lines typed (after a prompt on a terminal) or piped in, until end of input."""
    while True:
        if interactive:
            err_console.print("[bold]>>>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line:
            return
        text = line.rstrip("\n")
        if text.strip():
            yield text


def answer(conversation: runtime.Conversation, text: str, stats: bool) -> None:
    """One turn: the answer streamed to stdout, or a warning (the conversation stays usable) when it is full."""
    try:
        result = conversation.send(text)
    except runtime.ContextFullError as exc:
        err_console.print(f"[yellow]{escape(str(exc))}[/yellow]")
        return
    write("\n")
    if stats:
        d = result.to_dict()
        print(f"[prompt {d['prompt_tokens']} tokens, {d['completion_tokens']} generated, "
              f"{d['generation_tokens_per_second']} tokens/s, stop: {d['stop_reason']}]",
              file=sys.stderr, flush=True)
