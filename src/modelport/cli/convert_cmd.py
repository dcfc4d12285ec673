"""`modelport convert SRC DST`: between formats, streaming, atomic, optionally verified."""

from __future__ import annotations

from pathlib import Path

import typer

from ..conversion import convert
from ..conversion.hf_to_onnx import verify_summary
from ..opening import open as open_model
from .options import split_max_size_option, split_max_tensors_option
from .output import TensorProgress, console, err_console, human_bytes, print_json, trust_option, verified_line


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_cmd(
        src: Path = typer.Argument(..., help="Model file, shard index or Hugging Face folder."),
        dst: Path = typer.Argument(..., help="Output file (format from its extension) or folder."),
        to: str = typer.Option(None, "--to", help="Output format: safetensors, pytorch, numpy, hf, ... (default: from DST)."),
        dtype: str = typer.Option(None, "--dtype", help="Cast floating tensors: f32, f16 or bf16."),
        shard_size: str = typer.Option(None, "--shard-size", help="Split the output into shards of at most this size (e.g. 2GB)."),
        dequantize: bool = typer.Option(False, "--dequantize", help="Write block-quantized tensors as float32."),
        quant: str = typer.Option(None, "--quant", help="GGUF output: llama.cpp file type (F16, Q8_0, Q4_K_M, ...)."),
        imatrix: Path = typer.Option(None, "--imatrix", help="GGUF output with --quant: importance matrix "
                                                             "(modelport imatrix) to weigh the quantizers with."),
        config: Path = typer.Option(None, "--config", help="GGUF output from a bare weights file: its HF config.json."),
        verify: bool = typer.Option(None, "--verify/--no-verify",
                                    help="Re-open the output and compare every tensor with the source (bit for bit; "
                                         "quantized GGUF within its type's error bound); ONNX: onnxruntime against "
                                         "PyTorch, logits and a greedy decode. Default: on for --to onnx, else off."),
        quantize: str = typer.Option(None, "--quantize", help="ONNX output: also write model_int8.onnx (onnxruntime "
                                                              "dynamic int8) and report its agreement."),
        split_max_size: str = split_max_size_option(),
        split_max_tensors: int = split_max_tensors_option(),
        force: bool = typer.Option(False, "--force", "-f", help="Replace an existing output."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        trust: bool = trust_option(),
    ) -> None:
        """Convert a model between formats (safetensors, PyTorch, NumPy, ... and HF folders)."""
        with TensorProgress(f"converting {src.name}", enabled=not quiet and not as_json) as progress:
            progress.phase("reading")
            with open_model(src, trust=trust) as source:   # opened (and scanned) once: convert() takes the source
                result = convert(source, dst, to=to, dtype=dtype, shard_size=shard_size, force=force, verify=verify,
                                 dequantize=dequantize, progress=progress, quant=quant, config=config,
                                 quantize=quantize, split_max_size=split_max_size,
                                 split_max_tensors=split_max_tensors, imatrix=imatrix)
        if as_json:
            print_json(result.__dict__)
            return
        console.print(f"[green]wrote[/green] {result.output} ({result.format}, {result.tensors} tensors, "
                      f"{human_bytes(result.bytes_written)} of tensor data"
                      + (f", {len(result.files)} files" if len(result.files) > 1 else "") + ")")
        if result.aliases:
            err_console.print(f"tied tensors stored once: {', '.join(f'{a} → {b}' for a, b in result.aliases.items())}")
        if result.format == "onnx":
            print_onnx_details(result.details)
        if "tokenizer" in result.details:
            print_tokenizer_details(result.details["tokenizer"])
        elif result.verified:
            console.print(verified_line(result))


def print_tokenizer_details(tok: dict) -> None:
    """Which llama.cpp tokenizer the GGUF got and how it was chosen (a retrained vocabulary: by behaviour)."""
    console.print(f"tokenizer: {tok['model']}, pre-tokenizer '{tok['pre_tokenizer']}' ({tok['how']})")
    for note in tok.get("notes") or []:
        err_console.print(f"[yellow]note:[/yellow] {note}")


def print_onnx_details(details: dict) -> None:
    """What an ONNX export proved and cost: verification, int8 agreement, peak memory."""
    if "verify" in details:
        console.print(f"[green]verified[/green] {verify_summary(details['verify'])}")
    int8 = details.get("int8")
    if int8:
        agree = (f"top-1 agreement {int8['top1_agreement']:.1%}" if "top1_agreement" in int8
                 else f"min cosine {int8['min_cosine']:.5f}")
        console.print(f"int8: {int8['file']} {human_bytes(int8['bytes'])} (float {human_bytes(int8['float_bytes'])}), "
                      f"{agree}, max |int8 - float| {int8['max_abs_diff']:.3g}")
    console.print(f"opset {details['opset']}, {details['kind']}; model {human_bytes(details['model_bytes'])} in float32, "
                  f"peak memory {human_bytes(details['peak_rss_bytes'])}")
