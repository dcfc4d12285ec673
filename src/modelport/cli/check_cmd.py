"""`modelport check MODEL`: why a model would not load, load slowly or not fit, before loading it. Exit 0 clean
(notes only), 1 with findings, 2 when the input cannot be read."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..check import ERROR, NOTE, WARNING, check
from .output import console, human_bytes, print_json, trust_option

_STYLE = {ERROR: "bold red", WARNING: "yellow", NOTE: "cyan"}


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, or weights file with a config beside it."),
        as_json: bool = typer.Option(False, "--json", help="Print every finding (severity, what, cause, fix) as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Diagnose a model without loading it: tensors against its config, tokenizer, chat template, format, memory.

        Exit 0 when nothing is wrong (notes only), 1 with errors or warnings, 2 when the model cannot be read."""
        report = check(model, trust=trust)
        if as_json:
            print_json(report.to_dict())
        elif console.is_terminal:
            _table(report)
        else:   # piped: one finding per line, tab-separated; the memory and the verdict as '#' lines
            for f in report.findings:
                sys.stdout.write("\t".join((f.severity, f.kind, f.what, f.cause, f.fix)) + "\n")
            for line in _summary(report):
                sys.stdout.write(f"# {line}\n")
        if not report.ok:
            sys.exit(1)  # not typer.Exit: with standalone_mode=False click returns its code instead of exiting


def _table(report) -> None:
    if report.findings:
        table = Table(title=f"check {escape(report.path)}", title_justify="left", show_lines=True)
        for col in ("severity", "what", "cause", "fix"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", escape(f.what), escape(f.cause), escape(f.fix))
        console.print(table)
    for line in _summary(report):
        console.print(escape(line))


def _summary(report) -> list[str]:
    """The memory needed against what is free, and the verdict, one line each."""
    lines = []
    mem = report.memory
    if mem:
        lines.append(f"memory: {human_bytes(mem['need'])} to run ({mem['engine']}, ctx {mem['ctx']}), "
                     f"{human_bytes(mem['available'])} available")
    n = len(report.problems)
    lines.append(f"ok: nothing wrong with {report.path}" if not n else
                 f"{n} finding{'s' if n > 1 else ''} in {report.path}")
    return lines
