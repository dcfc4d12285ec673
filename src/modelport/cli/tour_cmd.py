"""`modelport tour`: the whole journey on SmolLM2-135M-Instruct, each step printed as it runs, then a summary table
and the report's path. Exit 0 when every step finished (or was left out by --quick) and every check held (the
marker never created, round trips bit-exact, sizes and perplexities ordered, the fine-tuned Q8_0 states the fact),
1 otherwise, 130 on Ctrl-C (the partial report is written first)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..tour import run_tour
from ..tour.report import SUMMARY_HEADERS, summary_rows
from .options import quiet_libraries
from .output import TensorProgress, console, print_json


def summary(record: dict) -> None:
    table = Table(title="modelport tour: what each artefact measured", title_justify="left")
    for header in SUMMARY_HEADERS:
        table.add_column(header, justify="left" if header in ("artefact", "engine") else "right")
    for row in summary_rows(record):
        table.add_row(*(str(v) if v is not None else "" for v in row))
    console.print()
    console.print(table)
    for step in record["steps"].values():
        if step["status"] not in ("failed", "interrupted"):
            continue
        console.print(f"[red]{step['status']}[/red] {step['title']}: {step['error']}", soft_wrap=True)
    checks = record.get("checks", {})
    if checks:
        console.print("checks: " + ", ".join(f"{k} [{'green' if v else 'red'}]{'yes' if v else 'NO'}[/]"
                                              for k, v in checks.items() if v is not None))
    out = Path(record["out"])
    console.print(f"\nReport: [bold cyan]{out / 'report.html'}[/bold cyan]  (every figure: {out / 'report.json'}); "
                  f"{record['seconds']:.0f} s", soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("tour")
    def tour_cmd(
        out: Path = typer.Option(Path("tour-out"), "--out", "-o", help="Folder for every artefact and the report."),
        quick: bool = typer.Option(False, "--quick", help="No training, GGUF F16/Q8_0/Q4_K_M only, a shorter perplexity "
                                                          "context and answers."),
        force: bool = typer.Option(False, "--force", help="Replace a previous tour's outputs in --out."),
        as_json: bool = typer.Option(False, "--json", help="Print report.json's content at the end (the steps still print "
                                                           "on stderr)."),
    ) -> None:
        """Walk SmolLM2-135M through every format, engine and method, and write report.html + report.json."""
        quiet_libraries()
        screen = Console(stderr=True, highlight=False) if as_json else console
        try:
            record = run_tour(out, quick=quick, force=force, console=screen, progress=lambda label: TensorProgress(label))
        except KeyboardInterrupt:
            console.print(f"\n[yellow]interrupted[/yellow]: finished steps kept; partial report {out / 'report.html'}",
                          soft_wrap=True)
            raise
        if as_json:
            print_json(record)
        else:
            summary(record)
        if not record["ok"]:
            raise typer.Exit(1)
