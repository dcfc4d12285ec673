"""GGUF → Hugging Face folder (`convert model.gguf OUT_DIR --to hf`): weights, config, tokenizer that
transformers loads offline. The tensors and config come from `gguf.to_hf.plan` (dequantized, un-permuted,
renamed); `--verify` re-opens the folder and checks every tensor bit for bit against the plan.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core import dtypes
from ..core.errors import UnsupportedError
from ..core.sizes import parse_size
from ..core.source import ModelSource
from ..formats import registry
from ..gguf.to_hf import generation_config, plan
from ..writing import ConvertResult, verify_written, write_tensors
from .route import Request


def write_gguf_as_hf(source: ModelSource, dst: Path, *, dtype: str | None = None, shard_size: str | int | None = None,
                     force: bool = False, progress=None, verify: bool = False) -> ConvertResult:
    """An opened GGUF as the HF folder `dst`: (sharded) safetensors, config.json, generation_config.json, tokenizer."""
    try:
        target = dtypes.parse(dtype) if dtype else None
    except ValueError as exc:
        raise UnsupportedError(f"{exc}; use f32, f16 or bf16") from None
    config, refs, tok = plan(source, target)

    def side_files(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = generation_config(source.metadata, tok.special_ids if tok else {})
        if gen:
            (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tok is not None:
            tok.save(folder)
        if verify:
            verify_written(folder, refs, progress)

    files = write_tensors(refs, dst, registry.get("safetensors"), folder=True, max_size=parse_size(shard_size),
                          metadata={"format": "pt"}, force=force, progress=progress, fill_folder=side_files)
    return ConvertResult(str(source.path), str(dst), "hf", files, len(refs), sum(r.nbytes for r in refs),
                         verified=verify)


class GgufToHf:
    """A GGUF file to an HF folder: `--to hf`, or a destination without extension."""
    name = "gguf-to-hf"

    def matches(self, source: ModelSource, request: Request) -> bool:
        return source.format == "gguf" and source.path.is_file() and request.wants_hf

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        if request.quant is not None or request.config is not None:
            raise UnsupportedError("--quant and --config apply to GGUF output (give DST a .gguf extension or --to gguf)",
                                   request.dst)
        return write_gguf_as_hf(source, request.dst, dtype=request.dtype, shard_size=request.shard_size,
                                force=request.force, progress=request.progress, verify=request.verify)
