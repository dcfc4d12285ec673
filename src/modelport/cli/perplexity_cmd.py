"""`modelport perplexity MODEL --text FILE`: llama.cpp's perplexity method, in any engine."""

from __future__ import annotations

from pathlib import Path

import typer

from .. import runtime
from ..runtime.evaluate import perplexity
from .options import engine_option, quiet_libraries, read_text
from .output import console, print_json, trust_option


def register(app: typer.Typer) -> None:
    @app.command("perplexity")
    def perplexity_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, weights file with a config beside it, or "
                                                "ONNX export folder (its model_int8.onnx for the int8 graph)."),
        text: Path = typer.Option(..., "--text", help="UTF-8 text file to score."),
        ctx: int = typer.Option(512, "--ctx", help="Window length in tokens (llama-perplexity's -c)."),
        engine: str = engine_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Perplexity over windows of --ctx tokens, scoring the second half of each (as llama-perplexity does)."""
        quiet_libraries()
        content = read_text(text)
        with runtime.load(model, engine=engine, ctx=max(ctx, 4), trust=trust) as eng:
            result = perplexity(eng, content, ctx)
        if as_json:
            print_json(result.to_dict())
        else:
            console.print(f"perplexity {result.perplexity:.4f} ({result.engine}, {result.windows} windows of "
                          f"{result.n_ctx} tokens, {result.scored_tokens} tokens scored)")
