"""`modelport inspect PATH`: format, tensors, parameters, config and memory at each precision.

In a terminal: rich tables, long values cut to fit unless `--wide`. Piped: plain `key<TAB>value` lines
under `# Section` headers, and one `name<TAB>dtype<TAB>shape<TAB>parameters<TAB>bytes` line per tensor,
every name and path whole, so that `grep`, `cut` and `awk` see what the model holds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from .. import families
from ..core.errors import UnsupportedError
from ..inspection import inspect
from ..opening import open as open_model
from ..runtime.chat_template import template_for
from .output import console, human_bytes, human_count, print_json, trust_option


def flat_text(value: Any, limit: int | None = 120) -> str:
    """One value on one line: dicts and lists flattened; with a `limit`, long values cut (a terminal cell)."""
    short = 40 if limit else None
    if isinstance(value, dict):
        text = ", ".join(f"{k}={cut(v, short)}" for k, v in value.items())
    elif isinstance(value, list):
        shown = value[:16] if limit else value
        text = ", ".join(cut(v, short) for v in shown) + (f", … ({len(value)} in all)" if len(shown) < len(value) else "")
    else:
        text = str(value)
    return cut(text, limit)


def cut(value: Any, limit: int | None) -> str:
    text = str(value)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


class Page:
    """Where `render` writes: rich tables in a terminal, plain tab-separated lines when piped."""

    def __init__(self, plain: bool, wide: bool):
        self.plain, self.limit = plain, None if wide else 120

    def key_values(self, title: str, data: dict) -> None:
        if self.plain:
            print(f"# {title}")
            for key, value in data.items():
                print(f"{key}\t{flat_text(value, None)}".replace("\n", "\\n"))
            return
        table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
        table.add_column(style="cyan", overflow="fold")
        table.add_column(overflow="fold")
        for key, value in data.items():
            table.add_row(escape(str(key)), escape(flat_text(value, self.limit)))
        console.print(table)

    def rows(self, title: str, columns: tuple[str, ...], rows: list[tuple], right: tuple[str, ...] = ()) -> None:
        if self.plain:
            print(f"# {title}")
            print("\t".join(columns))
            for row in rows:
                print("\t".join(str(v) for v in row))
            return
        table = Table(title=title, title_justify="left", title_style="bold")
        for col in columns:
            table.add_column(col, justify="right" if col in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(escape(str(v)) for v in row))
        console.print(table)


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


def render(report: dict, show_tensors: bool, page: Page) -> None:
    files = report["files"]
    size = report["file_size"]
    summary = {
        "path": report["path"],
        "format": report["format"],
        "files": f"{len(files)} ({human_bytes(size)})" if len(files) > 1 else f"{files[0]['name']} ({human_bytes(size)})",
        "tensors": report["tensor_count"],
        "parameters": f"{report['parameter_count']:,} ({human_count(report['parameter_count'])})",
    }
    if report["aliases"]:
        summary["tied"] = ", ".join(f"{a} → {b}" for a, b in report["aliases"].items())
    page.key_values("Model", summary)
    by_size = sorted(report["dtypes"].items(), key=lambda kv: -kv[1]["bytes"])
    page.rows("Tensors by dtype", ("dtype", "tensors", "parameters", "size"),
              [(name, row["tensors"], f"{row['parameters']:,}", human_bytes(row["bytes"])) for name, row in by_size],
              right=("tensors", "parameters", "size"))
    if report["config"]:
        page.key_values("Architecture (config)", report["config"])
    for title, value in report["details"].items() if isinstance(report["details"], dict) else ():
        if isinstance(value, dict) and value and title != "tensor_types":    # that one is the dtype table above
            page.key_values(title.replace("_", " ").capitalize(), value)
    flat = {k: v for k, v in report["details"].items() if not isinstance(v, dict)}
    if flat:
        page.key_values("Format details", flat)
    shown = _shown_above(report)
    rest = {k: v for k, v in report["metadata"].items() if k not in shown}
    if rest:
        page.key_values("Other metadata" if shown else "Metadata", rest)
    if report["side_files"]:
        page.key_values("Side files", {"files": report["side_files"]})
    page.rows("Weights at each precision", ("precision", "size"),
              [(precision, human_bytes(size)) for precision, size in report["memory"].items()], right=("size",))
    if show_tensors:
        page.rows("Tensors", ("name", "dtype", "shape", "parameters", "bytes" if page.plain else "size"),
                  [(t["name"], t["dtype"], str(tuple(t["shape"])), t["parameters"] if page.plain else f"{t['parameters']:,}",
                    t["bytes"] if page.plain else human_bytes(t["bytes"])) for t in report["tensors"]],
                  right=("parameters", "size"))


def print_template(path: Path, trust: bool) -> None:
    """The model's whole chat template, as the engines render it (GGUF metadata or the tokenizer files)."""
    with open_model(path, trust=trust) as source:
        template = template_for(source)
    if template is None:
        raise UnsupportedError("has no chat template (run it with --raw, or give one with --template FILE)", path)
    sys.stdout.write(template.source if template.source.endswith("\n") else template.source + "\n")


def print_families(as_json: bool, page: Page) -> None:
    """`inspect --families`: what `convert --to gguf` accepts, one row per family."""
    rows = families.catalog()
    if as_json:
        print_json({"families": rows})
        return
    page.rows(f"Families that convert to GGUF and back ({len(rows)})",
              ("family", "llama.cpp arch", "HF architectures", "model_type", "MoE", "what"),
              [(r["family"], r["llama_cpp_arch"], ", ".join(r["hf_architectures"]), ", ".join(r["model_types"]),
                "yes" if r["mixture_of_experts"] else "", r["description"]) for r in rows])


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(None, help="A model file, a shard index or a Hugging Face folder."),
        tensors: bool = typer.Option(False, "--tensors", "-t", help="List every tensor."),
        template: bool = typer.Option(False, "--template", help="Print the model's whole chat template and nothing else."),
        wide: bool = typer.Option(False, "--wide", "-w", help="In a terminal, wrap long names and values instead of cutting them."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
        trust: bool = trust_option(),
        list_families: bool = typer.Option(False, "--families", help="List the model families that convert to GGUF "
                                           "and back: HF architectures, llama.cpp arch name (no PATH)."),
    ) -> None:
        """Show what a model holds: format, tensors, parameters, config and size at each precision (headers only).

        Piped, it prints plain tab-separated lines with every name whole."""
        if list_families:
            print_families(as_json, Page(plain=not console.is_terminal, wide=wide))
            return
        if path is None:
            raise typer.BadParameter("give a model PATH (or --families)", param_hint="PATH")
        if template:
            print_template(path, trust)
            return
        report = inspect(path, tensors=tensors or as_json, trust=trust)
        if as_json:
            print_json(report)
        else:
            render(report, tensors, Page(plain=not console.is_terminal, wide=wide))
