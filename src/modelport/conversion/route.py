"""What a conversion is asked to do (`Request`) and what handles it (`Route`).

A route is one small object: `matches(source, request)` says whether it takes this source and output,
`run(source, request)` writes the output. `modelport.conversion.ROUTES` lists them in order; the first
that matches runs. The source is opened (and scanned) once, by `convert()`, and handed to the route.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..core import dtypes
from ..core.source import ModelSource
from ..opening import open as open_model
from ..writing import ConvertResult, GgufSplit, Progress

HF_TARGETS = ("hf", "huggingface")


def writing_phase(planned) -> str:
    """The progress phase for writing GGUF tensors planned with llama.cpp types: "quantizing" when any is quantized."""
    return "quantizing" if any(dtypes.DTYPES[p.type].is_quantized for p in planned) else "writing"


@dataclass
class Request:
    """The output and the options of one `convert` call, as the user gave them."""
    dst: Path
    to: str | None = None                 # output format name, lower case; None: from dst's extension
    dtype: str | None = None              # cast floats: f32, f16, bf16
    quant: str | None = None              # GGUF output: a llama.cpp file type
    imatrix: Path | None = None           # GGUF output with --quant: an importance matrix file
    config: Path | None = None            # GGUF output from a bare weights file: its config.json
    shard_size: str | int | None = None
    dequantize: bool = False
    force: bool = False
    verify: bool = False
    quantize: str | None = None           # ONNX output: int8
    trust: bool = False
    progress: Progress | None = None
    split: GgufSplit | None = None        # GGUF output: llama.cpp split files (--split-max-size/--split-max-tensors)

    @property
    def wants_gguf(self) -> bool:
        return self.to == "gguf" or (self.to is None and self.dst.suffix.lower() == ".gguf")

    @property
    def wants_hf(self) -> bool:
        """An HF folder: `--to hf`, or a destination without extension that is not an existing file."""
        return self.to in HF_TARGETS or (self.to is None and not self.dst.suffix and not self.dst.is_file())


class Route(Protocol):
    name: str

    def matches(self, source: ModelSource, request: Request) -> bool: ...

    def run(self, source: ModelSource, request: Request) -> ConvertResult: ...


@contextlib.contextmanager
def opened(src: ModelSource | str | os.PathLike, trust: bool = False) -> Iterator[ModelSource]:
    """`src` itself when it is already open (the caller closes it), else opened here and closed after."""
    if isinstance(src, ModelSource):
        yield src
        return
    with open_model(src, trust=trust) as source:
        yield source
