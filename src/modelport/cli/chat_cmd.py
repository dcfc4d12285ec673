"""`modelport chat MODEL`: a conversation in the terminal (or through a pipe), streamed.

Lines starting with `/` are commands: `/reset` forgets the conversation, `/system TEXT` sets the
system message (and starts over), `/exit` leaves. Each turn renders the whole conversation with the
model's template; the engine reuses the cached prefix, so earlier turns are not recomputed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import UnsupportedError
from .output import err_console, trust_option
from .run_cmd import engine_option, quiet_libraries, sampling_from, stop_option, write

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /exit"


def register(app: typer.Typer) -> None:
    @app.command("chat")
    def chat_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, or weights file with a config beside it."),
        system: Optional[str] = typer.Option(None, "--system", help="System message (else the template's own default)."),
        max_tokens: int = typer.Option(512, "--max-tokens", "-n", help="Most tokens per answer."),
        temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 picks the likeliest token (greedy)."),
        top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold."),
        top_k: int = typer.Option(0, "--top-k", help="Keep only the k likeliest tokens (0: all)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling."),
        engine: str = engine_option(),
        ctx: Optional[int] = typer.Option(None, "--ctx", help="Context length (default: the model's)."),
        stop: Optional[list[str]] = stop_option(),
        stats: bool = typer.Option(False, "--stats", help="After each answer, print token counts and speed on stderr."),
        trust: bool = trust_option(),
    ) -> None:
        """Chat with a model; keeps the conversation. /reset, /system TEXT, /exit."""
        quiet_libraries()
        from .. import runtime
        if max_tokens < 1:
            raise UnsupportedError(f"--max-tokens must be at least 1, not {max_tokens}")
        interactive = sys.stdin.isatty()
        with runtime.load(model, engine=engine, ctx=ctx, trust=trust) as eng:
            if eng.template is None:
                raise UnsupportedError("this model has no chat template; use 'modelport run --raw'", model)
            sampling = sampling_from(temperature, top_p, top_k, seed)
            history: list[dict[str, str]] = []
            if interactive:
                err_console.print(f"[dim]{eng.name} · {HELP}[/dim]")
            while True:
                if interactive:
                    err_console.print("[bold]>>>[/bold] ", end="")
                line = sys.stdin.readline()
                if not line:
                    break
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                if text.startswith("/"):
                    command, _, arg = text.partition(" ")
                    if command in ("/exit", "/quit", "/bye"):
                        break
                    if command == "/reset":
                        history.clear()
                        err_console.print("[dim](conversation cleared)[/dim]")
                    elif command == "/system":
                        system = arg.strip() or None
                        history.clear()
                        err_console.print("[dim](system message set; conversation cleared)[/dim]")
                    else:
                        err_console.print(f"[yellow]unknown command {command}[/yellow]; {HELP}")
                    continue
                messages = ([{"role": "system", "content": system}] if system else []) + history
                messages.append({"role": "user", "content": text})
                ids = eng.chat_ids(messages)
                if len(ids) >= eng.n_ctx:
                    err_console.print(f"[yellow]the conversation ({len(ids)} tokens) fills the context of "
                                      f"{eng.n_ctx}; /reset to start over[/yellow]")
                    continue
                result = eng.complete(ids, on_text=write, max_tokens=min(max_tokens, eng.n_ctx - len(ids)),
                                      sampling=sampling, stop=stop or ())
                write("\n")
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
                if stats:
                    d = result.to_dict()
                    print(f"[prompt {d['prompt_tokens']} tokens, {d['completion_tokens']} generated, "
                          f"{d['generation_tokens_per_second']} tokens/s, stop: {d['stop_reason']}]",
                          file=sys.stderr, flush=True)
