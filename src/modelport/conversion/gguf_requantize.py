"""GGUF → GGUF re-quantization (`quantize in.gguf out.gguf --type T`, or `convert in.gguf out.gguf --quant T`).

An F32/F16/BF16 GGUF to any llama.cpp file type, with llama-quantize's per-tensor types and bytes; tensors
it leaves alone keep their bytes (F16 norms stay F16).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import dtypes
from ..core.errors import UnsupportedError
from ..core.source import ModelSource
from ..core.tensor import TensorRef, as_float32
from ..gguf import imatrix as imx
from ..gguf import mixes
from ..gguf.convert import (
    FLOAT_FTYPES,
    Planned,
    apply_imatrix,
    llama_quantize_layout,
    llama_quantize_metadata,
    model_shape,
    parse_ftype,
    to_refs,
    verify_gguf,
)
from ..gguf.modelfile import modelfile_path, write_modelfile
from ..writing import ConvertResult, GgufSplit, check_output_name, report_phase, write_gguf_output
from .route import Request, opened, writing_phase


def float32_loader(ref: TensorRef):
    def load():
        return as_float32(ref.read())
    return load


def requantize(src: ModelSource | str | os.PathLike, dst: str | os.PathLike, qtype: str, *, force: bool = False,
               progress=None, modelfile: bool = True, trust: bool = False, verify: bool = False,
               split: GgufSplit | None = None, imatrix: str | os.PathLike | None = None,
               include_weights: list[str] | tuple[str, ...] = (),
               exclude_weights: list[str] | tuple[str, ...] = ()) -> ConvertResult:
    """An F32/F16/BF16 GGUF (a path, or an opened source) to the llama.cpp file type `qtype` at `dst` (or a split
    set); `imatrix` (an imatrix file, GGUF or .dat) weighs the quantizers and changes some of the mix's types, as in
    llama-quantize; `include_weights` / `exclude_weights` (name substrings) keep or drop some of its entries."""
    dst = Path(dst)
    ftype = parse_ftype(qtype, default="Q4_K_M")
    check_output_name(dst, "gguf")
    if (include_weights or exclude_weights) and imatrix is None:
        raise UnsupportedError("--include-weights and --exclude-weights choose entries of an imatrix: pass --imatrix")
    if include_weights and exclude_weights:
        raise UnsupportedError("--include-weights and --exclude-weights cannot be used together (as in llama-quantize)")
    matrix = imx.read(imatrix) if imatrix is not None else None
    if matrix is not None:
        matrix = imx.select(matrix, include_weights, exclude_weights)
    with opened(src, trust) as source:
        if dst.exists() and dst.resolve() in {f.resolve() for f in source.files}:
            raise UnsupportedError("the output would overwrite the input", dst)
        if source.format != "gguf":
            raise UnsupportedError(f"quantize takes a GGUF file; this is {source.format} "
                                   "(use 'modelport convert' for HF models)", source.path)
        planned = []
        for ref in source.values():
            if ref.dtype.is_quantized or not ref.dtype.is_float:
                if mixes.allows_quantization(ref.name, ref.shape):
                    raise UnsupportedError(f"tensor {ref.name!r} is already {ref.dtype.name}; re-quantizing a quantized "
                                           "model loses quality twice; start from an F32/F16/BF16 GGUF", source.path)
            planned.append(Planned(ref.name, ref.shape, float32_loader(ref), ref.dtype.name))
        planned = llama_quantize_layout(planned)      # its order and dimensions
        meta = dict(source.metadata)
        shape = model_shape(meta)
        if ftype in FLOAT_FTYPES:
            for p in planned:
                if mixes.allows_quantization(p.name, p.shape):
                    p.type = ftype
        else:
            chosen = mixes.choose_types({p.name: (p.shape, p.type) for p in planned}, ftype, shape, matrix is not None)
            for p in planned:
                p.type = chosen[p.name]

        def unchanged(p: Planned) -> bool:
            return p.type == source.tensors[p.name].dtype.name

        if ftype not in FLOAT_FTYPES:
            apply_imatrix(planned, ftype, matrix, keep=unchanged)
        for p in planned:   # tensors llama-quantize leaves alone keep their bytes (F16 norms stay F16)
            if unchanged(p):
                p.load = source.tensors[p.name].read
        meta = llama_quantize_metadata(meta, ftype, matrix, imatrix)
        errors: dict[str, float] = {}

        def check(path: Path) -> None:
            if verify:
                report_phase(progress, "verifying", len(planned))
                errors.update(verify_gguf(planned, path, progress))

        report_phase(progress, writing_phase(planned), len(planned))
        written = write_gguf_output(to_refs(planned, source=source.path), dst, meta, force=force, progress=progress, split=split,
                                    check=check)
        files = [str(p) for p in written]
        if modelfile:
            mf = modelfile_path(dst)
            write_modelfile(mf, written[0], meta)
            files.append(str(mf))
        nbytes = sum(dtypes.DTYPES[p.type].nbytes(int(np.prod(p.shape))) for p in planned)
        return ConvertResult(str(source.path), str(written[0]), "gguf", files, len(planned), nbytes, verified=verify,
                             errors=errors)


class GgufRequantize:
    """A GGUF source, a GGUF output and `--quant`: llama-quantize's job. Without `--quant` a GGUF → GGUF
    copy falls to the weights route."""
    name = "gguf-requantize"

    def matches(self, source: ModelSource, request: Request) -> bool:
        return source.format == "gguf" and request.wants_gguf and request.quant is not None

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        return requantize(source, request.dst, request.quant, force=request.force, progress=request.progress,
                          verify=request.verify, split=request.split,
                          imatrix=request.imatrix)
