"""`modelport quantize IN.gguf OUT.gguf --type Q4_K_M`: re-quantize an F32/F16/BF16 GGUF as llama-quantize does."""

from __future__ import annotations

from pathlib import Path

import typer

from ..conversion.gguf_requantize import requantize
from ..opening import open as open_model
from ..writing import GgufSplit
from .options import split_max_size_option, split_max_tensors_option
from .output import TensorProgress, console, human_bytes, print_json, trust_option, verified_line


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        src: Path = typer.Argument(..., help="An F32, F16 or BF16 GGUF file."),
        dst: Path = typer.Argument(..., help="The quantized GGUF to write (an Ollama Modelfile is written beside it)."),
        qtype: str = typer.Option("Q4_K_M", "--type", "-t",
                                  help="llama.cpp file type: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, "
                                       "Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL, IQ4_XS, IQ3_M/S/XS/XXS, IQ2_M/S/XS/XXS, "
                                       "IQ1_M/S, TQ1_0, TQ2_0, MXFP4_MOE, F16, BF16, F32 (IQ1/IQ2 and IQ3_XXS/XS need "
                                       "--imatrix)."),
        imatrix: Path = typer.Option(None, "--imatrix", help="Importance matrix (modelport imatrix, or llama-imatrix's "
                                                             ".gguf/.dat) to weigh the quantizers with."),
        include_weights: list[str] = typer.Option(None, "--include-weights",
                                                  help="Use the imatrix only for tensors whose name contains this "
                                                       "(repeatable; as llama-quantize)."),
        exclude_weights: list[str] = typer.Option(None, "--exclude-weights",
                                                  help="Do not use the imatrix for tensors whose name contains this "
                                                       "(repeatable)."),
        verify: bool = typer.Option(False, "--verify", help="Re-read the output: every tensor within its type's "
                                                            "error bound of the source."),
        split_max_size: str = split_max_size_option(),
        split_max_tensors: int = split_max_tensors_option(),
        force: bool = typer.Option(False, "--force", "-f", help="Replace an existing output."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        trust: bool = trust_option(),
    ) -> None:
        """Quantize a GGUF model (same per-tensor types and bytes as llama.cpp's llama-quantize)."""
        with TensorProgress(f"quantizing {src.name}", enabled=not quiet and not as_json) as progress:
            progress.phase("reading")
            with open_model(src, trust=trust) as source:   # opened (and scanned) once; requantize checks it is GGUF
                result = requantize(source, dst, qtype, force=force, progress=progress, verify=verify,
                                    split=GgufSplit.parse(split_max_size, split_max_tensors), imatrix=imatrix,
                                    include_weights=include_weights or (), exclude_weights=exclude_weights or ())
        if as_json:
            print_json(result.__dict__)
            return
        parts = f" in {len(result.files) - 1} split files" if len(result.files) > 2 else ""
        console.print(f"[green]wrote[/green] {result.output} (gguf, {result.tensors} tensors, "
                      f"{human_bytes(result.bytes_written)} of tensor data{parts}) and {Path(result.files[-1]).name}")
        if result.verified:
            console.print(verified_line(result))
