"""`modelport imatrix MODEL --text FILE -o model.imatrix.gguf`: an importance matrix for `quantize --imatrix`,
in llama.cpp's imatrix GGUF (or legacy .dat) format; `--in-file` combines files, `--show-statistics` reports one."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.errors import UnsupportedError
from ..gguf import imatrix as imx
from ..opening import open as open_model
from ..runtime import activations
from .options import quiet_libraries, read_text
from .output import console, err_console, print_json, trust_option


def _default_output(model: Path) -> Path:
    stem = model.name[:-5] if model.name.lower().endswith(".gguf") else model.name
    return model.parent / f"{stem}.imatrix.gguf"


def _stats_table(title: str, rows: list[imx.TensorStats]) -> Table:
    table = Table(title=title)
    for col in ("layer", "tensor", "Σ(act²)", "min", "max", "μ", "σ", "% active", "N", "entropy", "E (norm)", "ZD",
                "cos sim"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for r in rows:
        table.add_row("-" if r.layer is None else str(r.layer), r.tensor, f"{r.sum:.2f}", f"{r.min:.4f}",
                      f"{r.max:.4f}", f"{r.mean:.2f}", f"{r.std:.2f}", f"{100 * r.active:.2f}%", str(r.elements),
                      f"{r.entropy:.4f}", f"{r.entropy_norm:.2f}%", f"{100 * r.zd:.2f}%",
                      "" if r.cos_sim is None else f"{r.cos_sim:.4f}")
    return table


def _summary(m: imx.ImportanceMatrix) -> dict:
    return {"entries": len(m.entries), "chunk_count": m.chunk_count, "chunk_size": m.chunk_size,
            "datasets": m.datasets, "format": "dat" if m.legacy else "gguf"}


def register(app: typer.Typer) -> None:
    @app.command("imatrix")
    def imatrix_cmd(
        model: Path = typer.Argument(None, help="The model to run: GGUF, Hugging Face folder, or weights with a "
                                                "config.json beside them. Not needed with --in-file."),
        text: Path = typer.Option(None, "--text", "-f", help="Calibration text (UTF-8). Default: modelport's own "
                                                             "(prose, code, numbers, several languages)."),
        chunks: int = typer.Option(0, "--chunks", help="Run at most this many chunks (0: all the text gives)."),
        ctx: int = typer.Option(activations.DEFAULT_CTX, "--ctx", "-c", help="Tokens per chunk (llama-imatrix's -c)."),
        output: Path = typer.Option(None, "--output", "-o", help="The imatrix to write: .gguf (llama.cpp's current "
                                                                 "format) or .dat (legacy). Default: "
                                                                 "MODEL.imatrix.gguf."),
        in_files: list[Path] = typer.Option(None, "--in-file", help="An imatrix (GGUF or .dat) to combine into the "
                                                                    "output; repeat for several."),
        show_statistics: bool = typer.Option(False, "--show-statistics", help="Print per-tensor statistics of one "
                                                                              "imatrix (--in-file) and write nothing."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        trust: bool = trust_option(),
    ) -> None:
        """Collect an importance matrix (squared input activations per weight column) by running the model on a
        calibration text, for `quantize --imatrix` and llama-quantize."""
        in_files = list(in_files or [])
        if show_statistics:
            if len(in_files) != 1 or model is not None:
                raise UnsupportedError("--show-statistics reads exactly one imatrix: give it as --in-file")
            m = imx.read(in_files[0])
            rows = imx.statistics(m)
            layers = imx.layer_summary(rows)
            if as_json:
                print_json({"file": str(in_files[0]), **_summary(m),
                            "tensors": [r.__dict__ for r in rows], "layers": layers})
                return
            console.print(_stats_table(f"{in_files[0].name}: {len(rows)} tensors, {m.chunk_count} chunks", rows))
            per_layer = Table(title="weighted averages per layer")
            for col in ("layer", "μΣ(act²)", "μZD", "μ cos sim"):
                per_layer.add_column(col, justify="right")
            for row in layers:
                per_layer.add_row(str(row["layer"]), f"{row['sum']:.2f}", f"{100 * row['zd']:.2f}%",
                                  f"{row['cos_sim']:.4f}")
            console.print(per_layer)
            return
        if model is None and not in_files:
            raise UnsupportedError("give a MODEL to run, or --in-file imatrices to combine")
        if output is None:
            if model is None:
                raise UnsupportedError("combining --in-file imatrices needs -o OUTPUT")
            output = _default_output(model)
        if output.exists() and not force:
            raise UnsupportedError("the output exists (use --force to replace it)", output)
        parts = [imx.read(p) for p in in_files]
        collected = None
        if model is not None:
            quiet_libraries()
            content = read_text(text) if text is not None else activations.calibration_text()
            dataset = str(text) if text is not None else f"modelport:{activations.CALIBRATION_NAME}"
            collected = _run(model, content, ctx, chunks, dataset, output, quiet or as_json, trust)
            parts.append(collected.imatrix)
        result = parts[0] if len(parts) == 1 else imx.combine(parts, chunk_size=ctx)
        imx.write(result, output, force=force)
        info = {"output": str(output), **_summary(result), "format": "dat" if output.suffix.lower() == ".dat"
                else "gguf", "bytes": output.stat().st_size}
        if collected is not None:
            info.update(tokens=collected.tokens, chunks_run=collected.chunks, ctx=collected.ctx)
        if as_json:
            print_json(info)
            return
        how = f"{collected.chunks} chunks of {ctx} tokens" if collected is not None else f"{len(parts)} files combined"
        console.print(f"[green]wrote[/green] {output} ({info['format']}, {len(result.entries)} tensors, {how}, "
                      f"{result.chunk_count} chunks in all)")


def _run(model: Path, content: str, ctx: int, chunks: int, dataset: str, output: Path, quiet: bool, trust: bool):
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=quiet or not err_console.is_terminal) as bar:
        task = bar.add_task(f"imatrix {model.name}: chunks", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with open_model(model, trust=trust) as source:
            return activations.collect(source, content, ctx=ctx, chunks=chunks or None, dataset=dataset,
                                       workdir=output.parent, progress=progress)
