"""`modelport diff A B`: tensor-by-tensor comparison across formats; exit 1 when they differ."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..comparison import diff
from .output import console, print_json, trust_option

STYLE = {"equal": "green", "close": "green", "different": "red", "shape": "red", "dtype": "yellow"}


def register(app: typer.Typer) -> None:
    @app.command("diff")
    def diff_cmd(
        a: Path = typer.Argument(..., help="First model."),
        b: Path = typer.Argument(..., help="Second model."),
        atol: float = typer.Option(0.0, "--atol", help="Absolute tolerance."),
        rtol: float = typer.Option(0.0, "--rtol", help="Relative tolerance."),
        show_all: bool = typer.Option(False, "--all", help="List equal tensors too."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Compare two models tensor by tensor (any formats). Exit 0 when equal or within tolerance, 1 otherwise."""
        report = diff(a, b, atol=atol, rtol=rtol, trust=trust)
        if as_json:
            print_json(report.to_dict())
        else:
            table = Table(title=f"{a} vs {b}", title_justify="left")
            for col in ("tensor", "status", "shape", "dtype", "max abs", "max rel", "outside tol"):
                table.add_column(col)
            for name in report.only_in_a:
                table.add_row(name, "[red]only in A[/red]", "", "", "", "", "")
            for name in report.only_in_b:
                table.add_row(name, "[red]only in B[/red]", "", "", "", "", "")
            for t in report.tensors:
                if t.status == "equal" and not show_all:
                    continue
                shape = str(tuple(t.shape_a)) if t.shape_a == t.shape_b else f"{tuple(t.shape_a)} → {tuple(t.shape_b)}"
                dtype = t.dtype_a if t.dtype_a == t.dtype_b else f"{t.dtype_a} → {t.dtype_b}"
                table.add_row(t.name, f"[{STYLE[t.status]}]{t.status}[/]", shape, dtype,
                              "" if t.max_abs is None else f"{t.max_abs:.3g}",
                              "" if t.max_rel is None else f"{t.max_rel:.3g}", str(t.mismatched or ""))
            if table.row_count:
                console.print(table)
            identical = sum(t.status == "equal" for t in report.tensors)
            close = sum(t.status == "close" for t in report.tensors)
            verdict = "[green]equal[/green]" if report.equal else "[red]different[/red]"
            console.print(f"{verdict}: {identical} of {len(report.tensors)} common tensors bit-identical"
                          + (f", {close} within tolerance" if close else "")
                          + f", {len(report.only_in_a)} only in A, {len(report.only_in_b)} only in B")
        if not report.equal:
            raise typer.Exit(1)
