"""`modelport scan PATH...`: what in these files would run code or harm a reader.

Exit 0 clean, 1 flagged or unknown (content never read is not clean), 2 on bad input. `--allow-unknown` lets
unknown content pass (it is still listed), for trees that also hold files modelport does not know."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..core.errors import ModelportError
from ..locate import require
from ..security import DANGEROUS, SAFE, SUSPICIOUS, UNKNOWN, scan
from .output import console, print_json

_STYLE = {SAFE: "green", UNKNOWN: "magenta", SUSPICIOUS: "yellow", DANGEROUS: "bold red"}
_LEVELS = {"suspicious": (SUSPICIOUS, DANGEROUS), "dangerous": (DANGEROUS,)}
LIST_ALL_UP_TO = 20   # a small scan lists every file; a big tree lists the flagged ones and counts the rest


def register(app: typer.Typer) -> None:
    @app.command("scan")
    def scan_cmd(
        paths: list[Path] = typer.Argument(..., help="Files or folders (scanned recursively)."),
        as_json: bool = typer.Option(False, "--json", help="Print verdicts and findings as JSON."),
        severity: str = typer.Option("suspicious", "--severity", help="Show findings at or above: suspicious|dangerous."),
        show_all: bool = typer.Option(False, "--all", help=f"List every file (by default past {LIST_ALL_UP_TO} files "
                                                           "only the flagged ones)."),
        allow_unknown: bool = typer.Option(False, "--allow-unknown", help="Exit 0 even when some content is unknown "
                                           "(still listed): for trees that also hold files modelport does not know."),
    ) -> None:
        """Find pickled code, loader gadgets and lying headers without loading anything.

        Verdicts: safe, unknown (content modelport could not identify or open, e.g. random bytes, a 7z archive,
        an encrypted zip member: nothing in it was checked, so it is never called safe), suspicious, dangerous.

        Exit 0 when nothing is flagged, 1 when anything is (at or above --severity) or any content is unknown
        (unless --allow-unknown), 2 on a usage error."""
        if severity not in _LEVELS:
            raise ModelportError(f"--severity must be suspicious or dangerous, not {severity!r}")
        paths = [p if p.exists() else require(str(p)) for p in paths]   # a name: the HF cache or Ollama store
        report = scan(paths)
        shown = (UNKNOWN, *_LEVELS[severity])
        if as_json:
            data = report.to_dict()
            for f in data["files"]:
                f["findings"] = [x for x in f["findings"] if x["severity"] in shown]
            print_json(data)
        else:
            table = Table(title="Findings", title_justify="left", show_lines=False)
            for col in ("severity", "what", "where", "why"):
                table.add_column(col, overflow="fold")
            n = 0
            for f in report.findings:
                if f.severity not in shown:
                    continue
                n += 1
                where = f.member or ""
                where = f"{Path(f.file).name}{':' + where if where else ''}{f' (byte {f.offset})' if f.offset is not None else ''}"
                if f.count > 1:
                    where += f" ×{f.count}"
                table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", escape(f.what), escape(where), escape(f.why))
            if n:
                console.print(table)
            listed = report.files if show_all or len(report.files) <= LIST_ALL_UP_TO else \
                [r for r in report.files if r.verdict != SAFE]
            for r in listed:
                console.print(f"[{_STYLE[r.verdict]}]{r.verdict:>10}[/]  {escape(r.path)}  [dim]({r.kind})[/dim]")
            quiet = len(report.files) - len(listed)
            console.print(f"verdict: [{_STYLE[report.verdict]}]{report.verdict}[/] ({len(report.files)} files"
                          + (f"; {quiet} safe ones not listed, --all lists them" if quiet else "") + ")")
        fails = _LEVELS[severity] if allow_unknown else shown
        if any(f.severity in fails for f in report.findings):
            sys.exit(1)  # not typer.Exit: with standalone_mode=False click returns its code instead of exiting
