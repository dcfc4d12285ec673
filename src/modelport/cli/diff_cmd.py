"""`modelport diff A B`: tensor-by-tensor comparison across formats; exit 1 when they differ."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..comparison import DiffReport, diff
from .output import console, print_json, trust_option

STYLE = {"equal": "green", "close": "green", "different": "red", "shape": "red", "dtype": "yellow",
         "only in A": "red", "only in B": "red"}
SHOWN = 10   # rows of differences shown without --all


def rows(report: DiffReport, show_all: bool) -> list[tuple[str, ...]]:
    """(tensor, status, shape, dtype, max abs, max rel, outside tol) for each tensor worth a row."""
    out = [(n, "only in A", "", "", "", "", "") for n in report.only_in_a]
    out += [(n, "only in B", "", "", "", "", "") for n in report.only_in_b]
    for t in report.tensors:
        if t.status == "equal" and not show_all:
            continue
        shape = str(tuple(t.shape_a)) if t.shape_a == t.shape_b else f"{tuple(t.shape_a)} → {tuple(t.shape_b)}"
        dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a} → {t.dtype_b}"
        out.append((t.name, t.status, shape, dtype, "" if t.max_abs is None else f"{t.max_abs:.3g}",
                    "" if t.max_rel is None else f"{t.max_rel:.3g}", str(t.mismatched or "")))
    return out


def summary(report: DiffReport) -> str:
    identical = sum(t.status == "equal" for t in report.tensors)
    close = sum(t.status == "close" for t in report.tensors)
    naming = {"b": " (B read in A's Hugging Face naming)", "a": " (A read in B's Hugging Face naming)"}.get(report.renamed or "", "")
    return (f"{'equal' if report.equal else 'different'}: {identical} of {len(report.tensors)} common tensors "
            f"bit-identical{naming}" + (f", {close} within tolerance" if close else "")
            + f", {len(report.only_in_a)} only in A, {len(report.only_in_b)} only in B")


def render(report: DiffReport, a: Path, b: Path, show_all: bool) -> None:
    """A table of what differs (the first few unless --all) and a summary line; plain tab-separated lines,
    every name whole, when piped."""
    table_rows = rows(report, show_all)
    hidden = 0 if show_all else max(0, len(table_rows) - SHOWN)
    table_rows = table_rows if show_all else table_rows[:SHOWN]
    columns = ("tensor", "status", "shape", "dtype", "max abs", "max rel", "outside tol")
    if not console.is_terminal:
        print("\t".join(columns))
        for row in table_rows:
            print("\t".join(row))
        if hidden:
            print(f"# {hidden} more rows (--all)")
        print(f"# {summary(report)}")
        return
    console.print(f"A: {escape(str(a))}\nB: {escape(str(b))}")
    if table_rows:
        table = Table(title_justify="left")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in table_rows:
            table.add_row(escape(row[0]), f"[{STYLE[row[1]]}]{row[1]}[/]", *row[2:])
        console.print(table)
    if hidden:
        console.print(f"… {hidden} more rows: --all lists every tensor")
    line = summary(report)
    color = "green" if report.equal else "red"
    console.print(f"[{color}]{line.split(':', 1)[0]}[/{color}]:{escape(line.split(':', 1)[1])}")


def register(app: typer.Typer) -> None:
    @app.command("diff")
    def diff_cmd(
        a: Path = typer.Argument(..., help="First model."),
        b: Path = typer.Argument(..., help="Second model."),
        atol: float = typer.Option(0.0, "--atol", help="Absolute tolerance."),
        rtol: float = typer.Option(0.0, "--rtol", help="Relative tolerance."),
        show_all: bool = typer.Option(False, "--all", help="List every tensor (default: a summary and the first "
                                                            f"{SHOWN} that differ)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Compare two models tensor by tensor (any formats). Exit 0 when equal or within tolerance, 1 otherwise."""
        report = diff(a, b, atol=atol, rtol=rtol, trust=trust)
        if as_json:
            print_json(report.to_dict())
        else:
            render(report, a, b, show_all)
        if not report.equal:
            raise typer.Exit(1)
