"""`modelport compare A B`: do two models (or one model in two engines) predict the same tokens?"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .. import runtime
from ..core.errors import ModelportError
from ..runtime.evaluate import compare
from .options import quiet_libraries, read_text
from .output import console, print_json, trust_option

SAMPLE_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press. Within fifty years, presses were at work in "
    "more than two hundred European cities, and millions of books had been printed. Knowledge that had been "
    "copied by hand, slowly and with many mistakes, could now be shared quickly and accurately. Scholars "
    "compared editions, scientists published their results, and reformers spread pamphlets to a growing "
    "public of readers. Many historians regard the press as one of the inventions that shaped the modern world."
)


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        a: Path = typer.Argument(..., help="Model A (its tokenizer is used)."),
        b: Path = typer.Argument(..., help="Model B (may be the same file in another engine)."),
        prompt_file: Path | None = typer.Option(None, "--prompt-file", help="UTF-8 text to score (default: a built-in paragraph)."),
        tokens: int = typer.Option(256, "--tokens", help="Compare on the first N tokens of the text."),
        engine_a: str = typer.Option("auto", "--engine-a", help="Engine for A: auto, llama, hf or onnx."),
        engine_b: str = typer.Option("auto", "--engine-b", help="Engine for B: auto, llama, hf or onnx."),
        ctx: int | None = typer.Option(None, "--ctx", help="Context length for both engines."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Feed the same token ids to A and B; report argmax agreement, KL divergence, top-1 gap, perplexity."""
        quiet_libraries()
        text = read_text(prompt_file) if prompt_file else SAMPLE_TEXT
        if tokens < 2:
            raise ModelportError(f"--tokens must be at least 2, not {tokens}")
        with runtime.load(a, engine=engine_a, ctx=ctx, trust=trust) as ea, \
                runtime.load(b, engine=engine_b, ctx=ctx, trust=trust) as eb:
            report = compare(ea, eb, text, tokens)
        if as_json:
            print_json(report.to_dict())
            return
        console.print(f"[bold]A[/bold] {a.name} ({report.engine_a})\n[bold]B[/bold] {b.name} ({report.engine_b})",
                      highlight=False)
        table = Table()
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("tokens compared", str(report.tokens))
        table.add_row("argmax agreement", f"{report.argmax_agreement:.2%}")
        table.add_row("first disagreement", "none" if report.first_disagreement is None else f"position {report.first_disagreement}")
        table.add_row("mean KL(A‖B)", f"{report.mean_kl:.5f} nats")
        table.add_row("max KL(A‖B)", f"{report.max_kl:.5f} nats")
        table.add_row("mean top-1 probability gap", f"{report.top1_prob_gap:.4f}")
        table.add_row("perplexity A", f"{report.perplexity_a:.4f}")
        table.add_row("perplexity B", f"{report.perplexity_b:.4f}")
        console.print(table)
        if report.note:
            console.print(f"[yellow]note:[/yellow] {report.note}")
