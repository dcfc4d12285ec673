"""`--export FORMAT[:QUANT]`: the trained model as files people run, through modelport's own conversion routes.

The merged HF folder (`DIR/model/`) is the source of every export: `safetensors` is that folder itself,
`gguf[:QUANT]` goes through the HF → GGUF route (byte-identical to llama.cpp's converter and quantizer) into
`DIR/model-QUANT.gguf`; any other format in FORMATS is `convert(..., to=FORMAT)` into `DIR/model-FORMAT`
(its QUANT passed as `quantize`), so a format `convert` learns (ONNX) is one more name here, no code.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..conversion import convert
from ..core.errors import UnsupportedError

FORMATS = ("safetensors", "hf", "gguf", "onnx")


@dataclass(frozen=True)
class ExportSpec:
    format: str
    quant: str | None = None

    @property
    def label(self) -> str:
        return self.format + (f":{self.quant}" if self.quant else "")


def parse_export(text: str) -> ExportSpec:
    """`gguf:q4_k_m` → ExportSpec("gguf", "Q4_K_M"); `safetensors` → ExportSpec("safetensors")."""
    fmt, _, quant = text.strip().partition(":")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UnsupportedError(f"--export {text!r}: use safetensors, gguf or gguf:QUANT (gguf:q8_0, gguf:q4_k_m, ...), "
                              "onnx or onnx:int8")
    if quant and fmt in ("safetensors", "hf"):
        raise UnsupportedError(f"--export {text!r}: safetensors takes no quantization")
    return ExportSpec("safetensors" if fmt == "hf" else fmt, quant.upper() or None)


def write_export(folder: Path, out: Path, spec: ExportSpec) -> dict:
    """Write one export of the merged HF `folder` into `out`; the result's path and the command that runs it."""
    if spec.format == "safetensors":
        path = folder
    elif spec.format == "gguf":
        quant = spec.quant or "F16"
        path = out / f"model-{quant}.gguf"
        convert(folder, path, quant=quant, force=True)
    else:
        path = out / f"model-{spec.format}"
        convert(folder, path, to=spec.format, force=True, **({"quantize": spec.quant.lower()} if spec.quant else {}))
    return {"export": spec.label, "path": str(path), "run": f"modelport run {shlex.quote(str(path))} -p 'Hello'"}
