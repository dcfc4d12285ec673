"""`convert`: open the source once, hand it to the first route that takes it.

Routes, in order (each one small object with `matches` and `run`, in its own module):

- `GgufToHf`       GGUF file → Hugging Face folder (dequantized, config, tokenizer)
- `GgufRequantize` GGUF → GGUF with `--quant` (llama-quantize's types and bytes)
- `HfToGguf`       HF model (or weights + config) → GGUF (llama.cpp's converter + quantizer)
- `HfToOnnx`       HF model, weights + config, or GGUF → ONNX folder (`--to onnx`: KV cache, verified)
- `WeightsRoute`   anything → any writer, tensor by tensor (matches everything: last)

Adding a route is a module with one class and a line in `ROUTES`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UnsupportedError
from ..core.source import ModelSource
from ..writing import ConvertResult, GgufSplit, Progress
from .gguf_requantize import GgufRequantize
from .gguf_to_hf import GgufToHf
from .hf_to_gguf import HfToGguf
from .hf_to_onnx import HfToOnnx
from .route import Request, Route, opened
from .weights import WeightsRoute

ROUTES: list[Route] = [GgufToHf(), GgufRequantize(), HfToGguf(), HfToOnnx(), WeightsRoute()]

__all__ = ["convert", "ConvertResult", "Request", "Route", "ROUTES"]


def convert(src: ModelSource | str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None,
            dtype: str | None = None, shard_size: str | int | None = None, force: bool = False, verify: bool | None = None,
            dequantize: bool = False, progress: Progress | None = None, quant: str | None = None,
            config: str | os.PathLike | None = None, trust: bool = False, quantize: str | None = None,
            split_max_size: str | int | None = None, split_max_tensors: int | None = None,
            imatrix: str | os.PathLike | None = None) -> ConvertResult:
    """Convert a model file or folder (a path, or a source already opened with `modelport.open`); the output
    format comes from `to` or the extension of `dst`.

    `quant` (a llama.cpp file type such as Q4_K_M) and `config` (an HF config.json for a bare weights file)
    apply to GGUF output, and so do `split_max_size` ("2GB") / `split_max_tensors`, which write llama.cpp's split
    files (`NAME-00001-of-0000N.gguf`), and `imatrix` (an importance matrix file, `modelport imatrix`) with `quant`;
    `quantize` ("int8") to ONNX output. `verify` defaults to on for ONNX output (the graph
    is proved against PyTorch) and off elsewhere. `trust` lets a file the scanner finds suspicious (not dangerous)
    be opened."""
    to = to.lower() if to else None
    if verify is None:
        verify = to == "onnx"
    if quantize is not None and to != "onnx":
        raise UnsupportedError("--quantize applies to ONNX output (--to onnx); GGUF output takes --quant", dst)
    if imatrix is not None and quant is None:
        raise UnsupportedError("--imatrix applies to quantized GGUF output: give --quant too", dst)
    request = Request(Path(dst), to=to, dtype=dtype, quant=quant,
                      config=Path(config) if config is not None else None, shard_size=shard_size,
                      dequantize=dequantize, force=force, verify=verify, trust=trust, progress=progress,
                      quantize=quantize.lower() if quantize else None,
                      split=GgufSplit.parse(split_max_size, split_max_tensors),
                      imatrix=Path(imatrix) if imatrix is not None else None)
    if request.split is not None and not request.wants_gguf:
        raise UnsupportedError("--split-max-size and --split-max-tensors apply to GGUF output; other formats take "
                               "--shard-size", dst)
    with opened(src, trust) as source:
        inputs = {source.path.resolve(), *(f.resolve() for f in source.files)}
        if request.dst.resolve() in inputs:
            raise UnsupportedError("the output would overwrite the input", request.dst)
        route = next(r for r in ROUTES if r.matches(source, request))
        return route.run(source, request)
