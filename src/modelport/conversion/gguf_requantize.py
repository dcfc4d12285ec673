"""GGUF → GGUF re-quantization (`quantize in.gguf out.gguf --type T`, or `convert in.gguf out.gguf --quant T`).

An F32/F16/BF16 GGUF to any llama.cpp file type, with llama-quantize's per-tensor types and bytes; tensors
it leaves alone keep their bytes (F16 norms stay F16).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import dtypes
from ..core.atomic import atomic_file
from ..core.errors import UnsupportedError
from ..core.source import ModelSource
from ..core.tensor import TensorRef
from ..formats.gguf import write_gguf
from ..gguf import imatrix as imx
from ..gguf import mixes
from ..gguf.convert import (
    FLOAT_FTYPES,
    Planned,
    apply_imatrix,
    file_metadata,
    imatrix_metadata,
    model_shape,
    parse_ftype,
    to_refs,
    verify_gguf,
)
from ..gguf.modelfile import modelfile_path, write_modelfile
from ..writing import ConvertResult, check_output_name, report_phase
from .route import Request, opened, writing_phase


def as_float32(ref: TensorRef):
    def load():
        return np.asarray(ref.read()).astype(np.float32)
    return load


def requantize(src: ModelSource | str | os.PathLike, dst: str | os.PathLike, qtype: str, *, force: bool = False,
               progress=None, modelfile: bool = True, trust: bool = False, verify: bool = False,
               imatrix: str | os.PathLike | None = None) -> ConvertResult:
    """An F32/F16/BF16 GGUF (a path, or an opened source) to the llama.cpp file type `qtype` at `dst`; `imatrix`
    (an imatrix file, GGUF or .dat) weighs the quantizers and changes some of the mix's types, as in llama-quantize."""
    dst = Path(dst)
    ftype = parse_ftype(qtype, default="Q4_K_M")
    check_output_name(dst, "gguf")
    matrix = imx.read(imatrix) if imatrix is not None else None
    with opened(src, trust) as source:
        if dst.exists() and dst.resolve() == source.path.resolve():
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
            planned.append(Planned(ref.name, ref.shape, as_float32(ref), ref.dtype.name))
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
        meta.update(file_metadata(ftype, ftype not in FLOAT_FTYPES))
        meta.update(imatrix_metadata(matrix, imatrix))
        with atomic_file(dst, force) as tmp:
            report_phase(progress, writing_phase(planned), len(planned))
            write_gguf(to_refs(planned), tmp, metadata=meta, progress=progress)
            if verify:
                report_phase(progress, "verifying", len(planned))
            errors = verify_gguf(planned, tmp, progress) if verify else {}
        files = [str(dst)]
        if modelfile:
            mf = modelfile_path(dst)
            write_modelfile(mf, dst, meta)
            files.append(str(mf))
        nbytes = sum(dtypes.DTYPES[p.type].nbytes(int(np.prod(p.shape))) for p in planned)
        return ConvertResult(str(source.path), str(dst), "gguf", files, len(planned), nbytes, verified=verify,
                             errors=errors)


class GgufRequantize:
    """A GGUF source, a GGUF output and `--quant`: llama-quantize's job. Without `--quant` a GGUF → GGUF
    copy falls to the weights route."""
    name = "gguf-requantize"

    def matches(self, source: ModelSource, request: Request) -> bool:
        return source.format == "gguf" and request.wants_gguf and request.quant is not None

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        return requantize(source, request.dst, request.quant, force=request.force, progress=request.progress,
                          verify=request.verify, imatrix=request.imatrix)
