"""Hugging Face model → GGUF (`convert HF_DIR out.gguf --quant T`): an atomic GGUF plus an Ollama Modelfile.

The plan (names, types, metadata, vocabulary) comes from `gguf.convert.plan_hf`, built from headers and
side files and checked before the output is created; `--verify` re-reads the file and compares every
tensor with its source (`gguf.convert.verify_gguf`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import dtypes
from ..core.errors import UnsupportedError
from ..core.source import ModelSource, own_file
from ..gguf import imatrix as imx
from ..gguf.convert import load_config, parse_ftype, plan_hf, to_refs, verify_gguf
from ..gguf.modelfile import modelfile_path, write_modelfile
from ..gguf.tokenizer import TOKENIZER_FILES
from ..writing import ConvertResult, GgufSplit, check_output_name, report_phase, write_gguf_output
from .route import Request, writing_phase

NEEDS_CONFIG = "converting to GGUF needs the model's config.json (beside the weights, or --config)"


def config_file(source: ModelSource, config_path: Path | None) -> Path | None:
    """Where a config comes from when the source has none of its own: `--config`, or config.json beside a bare
    weights file (found, not read)."""
    if config_path is not None or source.config is not None or not source.path.is_file():
        return config_path
    beside = source.path.parent / "config.json"
    return beside if beside.is_file() else None


def model_config(source: ModelSource, config_path: Path | None) -> tuple[dict | None, dict[str, Path]]:
    """The config and tokenizer files for a GGUF: `--config` (and the tokenizer beside it), the source's own,
    or the config.json beside a bare weights file."""
    config_path = config_file(source, config_path)
    side = dict(source.side_files)
    if config_path is None:
        return source.config, side
    folder = Path(config_path).parent
    for name in TOKENIZER_FILES:
        if name not in side and own_file(folder / name):
            side[name] = folder / name
    return load_config(config_path), side


def write_hf_as_gguf(source: ModelSource, dst: Path, *, quant: str | None = None, config_path: Path | None = None,
                     force: bool = False, progress=None, modelfile: bool = True, verify: bool = False,
                     split: GgufSplit | None = None, imatrix: Path | None = None) -> ConvertResult:
    """`source` (an opened HF model) as the GGUF file `dst` (or a split set), `quant` (default F16), with a
    Modelfile beside it; `imatrix` (a file) weighs the quantizers as llama-quantize's --imatrix does."""
    config, side = model_config(source, config_path)
    if config is None:
        raise UnsupportedError(NEEDS_CONFIG, source.path)
    check_output_name(dst, "gguf")
    matrix = imx.read(imatrix) if imatrix is not None else None
    plan = plan_hf(source, parse_ftype(quant), config, side, imatrix=matrix, imatrix_path=imatrix)
    errors: dict[str, float] = {}

    def check(path: Path) -> None:
        if verify:
            report_phase(progress, "verifying", len(plan.tensors))
            errors.update(verify_gguf(plan.tensors, path, progress))

    report_phase(progress, writing_phase(plan.tensors), len(plan.tensors))
    written = write_gguf_output(to_refs(plan.tensors, source=source.path), dst, plan.metadata, force=force, progress=progress,
                                split=split, check=check)
    files = [str(p) for p in written]
    if modelfile:
        mf = modelfile_path(dst)
        write_modelfile(mf, written[0], plan.metadata)
        files.append(str(mf))
    nbytes = sum(dtypes.DTYPES[p.type].nbytes(int(np.prod(p.shape))) for p in plan.tensors)
    return ConvertResult(str(source.path), str(written[0]), "gguf", files, len(plan.tensors), nbytes, verified=verify,
                         errors=errors, details={"tokenizer": plan.vocab.summary()})


class HfToGguf:
    """Any non-GGUF source with a config (its own, `--config`, or config.json beside it) to a GGUF output.
    Without a config, `--quant` is an error and a plain GGUF copy of the tensors falls to the weights route."""
    name = "hf-to-gguf"

    def matches(self, source: ModelSource, request: Request) -> bool:
        if source.format == "gguf" or not request.wants_gguf:
            return False
        has_config = source.config is not None or config_file(source, request.config) is not None
        if not has_config and request.quant is not None:
            raise UnsupportedError(NEEDS_CONFIG, source.path)
        return has_config

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        return write_hf_as_gguf(source, request.dst, quant=request.quant if request.quant is not None else request.dtype,
                                config_path=request.config, force=request.force, progress=request.progress,
                                verify=request.verify, split=request.split,
                                imatrix=request.imatrix)
