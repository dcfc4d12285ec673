"""`modelport list`: the models already on this machine that can be named instead of given as a path.

The Hugging Face cache and the Ollama store, read offline (`modelport.locate`). A table in a terminal;
plain tab-separated lines (source, name, format, bytes, quantization, path) when piped, for scripts.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..locate import LocalModel, hf_cache_dir, hf_cache_models, ollama_dir, ollama_models
from .output import console, err_console, human_bytes, print_json


def render(models: list[LocalModel], out: Console) -> None:
    table = Table(title_justify="left")
    for col in ("source", "name", "format", "size", "quantization"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for m in models:
        fmt = f"[red]{escape(m.problem)}[/red]" if m.problem else escape(m.format)
        table.add_row(m.source, escape(m.name), fmt, human_bytes(m.size) if m.size else "-", escape(m.quantization))
    out.print(table)


def tsv_lines(models: list[LocalModel]) -> list[str]:
    """One line a model: source, name, format (or the problem), size in bytes, quantization, path."""
    return ["\t".join((m.source, m.name, f"error: {m.problem}" if m.problem else m.format, str(m.size),
                       m.quantization, str(m.path))) for m in models]


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print the models as JSON.")) -> None:
        """List the models in the Hugging Face cache and the Ollama store, by the names other commands take."""
        models = hf_cache_models() + ollama_models()
        if as_json:
            print_json([m.to_dict() for m in models])
        elif not console.is_terminal:
            for line in tsv_lines(models):
                typer.echo(line)
        elif models:
            render(models, console)
        else:
            err_console.print(f"No models in the Hugging Face cache ({escape(str(hf_cache_dir()))}) "
                              f"or the Ollama store ({escape(str(ollama_dir()))}).")
