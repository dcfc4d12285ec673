"""`modelport inspect PATH`: format, tensors, parameters, config and memory at each precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..inspection import inspect
from .output import console, human_bytes, human_count, print_json, trust_option


def _text(value: Any, limit: int = 120) -> str:
    """One cell: dicts and lists flattened, long values cut, and escaped (model text is not rich markup)."""
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_cut(v, 40)}" for k, v in value.items())
    elif isinstance(value, list):
        text = ", ".join(_cut(v, 40) for v in value[:16]) + (f", … ({len(value)} in all)" if len(value) > 16 else "")
    else:
        text = str(value)
    return escape(_cut(text, limit))


def _cut(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kv_table(title: str, data: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column(style="cyan")
    table.add_column()
    for key, value in data.items():
        table.add_row(escape(str(key)), _text(value))
    return table


def _shown_above(report: dict) -> set[str]:
    """Metadata keys the detail tables already show (GGUF hyperparameters, tokenizer, chat template)."""
    details = report["details"] if isinstance(report["details"], dict) else {}
    metadata = report["metadata"] or {}
    arch = details.get("architecture")
    keys = {f"{arch}.{k}" for k in details.get("hyperparameters", {})} if arch else set()
    if details.get("tokenizer"):
        keys |= {k for k in metadata if k.startswith("tokenizer.")}
    for key, detail in (("general.architecture", "architecture"), ("general.name", "name"),
                        ("general.file_type", "file_type")):
        if detail in details:
            keys.add(key)
    return keys & set(metadata)


def render(report: dict, show_tensors: bool) -> None:
    files = report["files"]
    summary = {
        "path": report["path"],
        "format": report["format"],
        "files": f"{len(files)} ({human_bytes(report['file_size'])})" if len(files) > 1
        else f"{files[0]['name']} ({human_bytes(report['file_size'])})",
        "tensors": report["tensor_count"],
        "parameters": f"{report['parameter_count']:,} ({human_count(report['parameter_count'])})",
    }
    if report["aliases"]:
        summary["tied"] = ", ".join(f"{a} → {b}" for a, b in report["aliases"].items())
    console.print(_kv_table("Model", summary))

    dtypes = Table(title="Tensors by dtype", title_justify="left", title_style="bold")
    for col in ("dtype", "tensors", "parameters", "size"):
        dtypes.add_column(col, justify="left" if col == "dtype" else "right")
    for name, row in sorted(report["dtypes"].items(), key=lambda kv: -kv[1]["bytes"]):
        dtypes.add_row(name, str(row["tensors"]), f"{row['parameters']:,}", human_bytes(row["bytes"]))
    console.print(dtypes)

    if report["config"]:
        console.print(_kv_table("Architecture (config)", report["config"]))
    for title, value in report["details"].items() if isinstance(report["details"], dict) else ():
        if isinstance(value, dict) and value and title != "tensor_types":    # that one is the dtype table above
            console.print(_kv_table(title.replace("_", " ").capitalize(), value))
    flat = {k: v for k, v in report["details"].items() if not isinstance(v, dict)}
    if flat:
        console.print(_kv_table("Format details", flat))
    shown = _shown_above(report)
    rest = {k: v for k, v in report["metadata"].items() if k not in shown}
    if rest:
        console.print(_kv_table("Other metadata" if shown else "Metadata", rest))
    if report["side_files"]:
        console.print(_kv_table("Side files", {"files": report["side_files"]}))

    memory = Table(title="Weights at each precision", title_justify="left", title_style="bold")
    memory.add_column("precision")
    memory.add_column("size", justify="right")
    for precision, size in report["memory"].items():
        memory.add_row(precision, human_bytes(size))
    console.print(memory)

    if show_tensors:
        table = Table(title="Tensors", title_justify="left", title_style="bold")
        for col in ("name", "dtype", "shape", "parameters", "size"):
            table.add_column(col, justify="right" if col in ("parameters", "size") else "left")
        for t in report["tensors"]:
            table.add_row(escape(t["name"]), t["dtype"], str(tuple(t["shape"])), f"{t['parameters']:,}", human_bytes(t["bytes"]))
        console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="A model file, a shard index or a Hugging Face folder."),
        tensors: bool = typer.Option(False, "--tensors", "-t", help="List every tensor."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Show what a model holds: format, tensors, parameters, config and size at each precision (headers only)."""
        report = inspect(path, tensors=tensors or as_json, trust=trust)
        if as_json:
            print_json(report)
        else:
            render(report, tensors)
