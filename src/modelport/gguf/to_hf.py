"""GGUF -> Hugging Face folder: the GGUF export (`convert.py`) run backwards, one tensor at a time.

Every tensor is dequantized on read (gguf-py, any type it knows: legacy, K-quants, IQ), put back in HF
row order (the inverse transforms of `modelport.families`: Q/K un-permuted, Conv1D transposed, Gemma's norm
offset removed), renamed through the same family tables, cast, and streamed into (sharded) safetensors.
config.json comes from the `<arch>.*` keys (`Family.config_from_gguf`, the inverse of `hparams`), the
tokenizer from `tokenizer.ggml.*` (`hf_tokenizer`). Peak memory is about one tensor in float32 plus its cast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import families
from ..core import dtypes
from ..core.errors import FormatError, UnsupportedError
from ..core.tensor import TensorRef
from . import hf_tokenizer, quants

HF_DTYPES = dtypes.HF_DTYPE_NAMES


def default_dtype(source) -> dtypes.DType:
    """The GGUF's own float type for its weights (F16 / BF16 files stay so); quantized or mixed -> F32."""
    kinds = {ref.dtype.name for ref in source.values() if len(ref.shape) >= 2}
    return dtypes.DTYPES[kinds.pop()] if len(kinds) == 1 and kinds <= {"F16", "BF16"} else dtypes.F32


def plan(source, dtype: dtypes.DType | None = None) -> tuple[dict[str, Any], list[TensorRef], Any]:
    """(config.json, lazy HF tensors, HFTokenizer or None) for an opened GGUF; raises before anything is written."""
    meta = source.metadata
    arch_name = meta.get("general.architecture")
    if not isinstance(arch_name, str):
        raise FormatError("no general.architecture in the GGUF metadata", source.path)
    family = families.for_gguf_arch(arch_name, meta)
    tensors = source.tensors
    if "token_embd.weight" not in tensors:
        raise FormatError("no token_embd.weight in the GGUF", source.path)
    config = family.config_from_gguf(meta, tensors)
    arch = family(config)
    families.check_layers(arch, tensors, source.path)

    dtype = dtype or default_dtype(source)
    if not dtype.is_float or dtype.name not in HF_DTYPES:
        raise UnsupportedError(f"--dtype must be f32, f16 or bf16 for Hugging Face output, not {dtype.name}")
    groups: dict[str, list[TensorRef]] = {}     # HF name -> its GGUF tensors in HF orientation (the family's n -> 1)
    for ref in source.values():
        if ref.name in families.COMPUTED_TENSORS:
            continue        # folded into rope_parameters by config_from_gguf
        heads = arch.transform_of(ref.name).heads(arch)
        if heads is not None and (not heads or ref.shape[0] % (2 * heads)):
            raise FormatError(f"{ref.name} has {ref.shape[0]} rows, not a multiple of 2 x {heads} heads", source.path)
        groups.setdefault(arch.hf_name(ref.name), []).append(_in_hf_order(arch, ref))
    refs = [TensorRef(name, dtype, part.shape, _cast(part, dtype)) if part.dtype.is_float or part.dtype.is_quantized
            else part.derive(part.read, name=name)      # integer tensors a family made (gpt-oss's MXFP4 blocks): as is
            for hf_name, parts in groups.items()
            for name, part in arch.split_tensor(hf_name, arch.merge_tensors(hf_name, parts))]

    tok = None
    if meta.get("tokenizer.ggml.model") is not None:
        tok = hf_tokenizer.from_gguf(meta, source.path)
    rows = tensors["token_embd.weight"].shape[0]
    config["vocab_size"] = rows
    if "output.weight" not in tensors:
        config["tie_word_embeddings"] = True
    elif "tie_word_embeddings" not in family.hf_defaults:
        config["tie_word_embeddings"] = False
    ids = tok.special_ids if tok is not None else {}
    for key in ("bos", "eos", "pad"):
        config[f"{key}_token_id"] = ids.get(key)
    config["dtype"] = HF_DTYPES[dtype.name]
    return config, refs, tok


CHUNK_BYTES = 4 << 20


def read_float(ref: TensorRef) -> np.ndarray:
    """The tensor's values; block types dequantized a few rows at a time into one float32 array, so that
    gguf-py's temporaries stay small (a whole-tensor dequantize needs about three times the output)."""
    raw = ref.raw_loader
    if not ref.dtype.is_quantized or raw is None or len(ref.shape) < 2 or ref.nbytes <= CHUNK_BYTES // 4:
        return np.asarray(ref.read())
    rows = int(np.prod(ref.shape[:-1]))
    step = max(1, CHUNK_BYTES // (4 * ref.shape[-1]))
    return quants.dequantize(ref.read_raw().reshape(rows, -1), ref.dtype, rows_per_chunk=step).reshape(ref.shape)


def _in_hf_order(arch, ref: TensorRef) -> TensorRef:
    """`ref` lazily put back in HF values and shape (the inverse transform; arithmetic ones in float32)."""
    transform = arch.transform_of(ref.name)

    def load() -> np.ndarray:
        data = read_float(ref)
        if transform.changes_values and data.dtype != np.float32:
            data = data.astype(np.float32)
        return np.ascontiguousarray(transform.to_hf(data, arch))
    return ref.derive(load, shape=transform.shape(ref.shape), extra={})


def _cast(ref: TensorRef, dtype: dtypes.DType):
    target = dtype.numpy

    def load() -> np.ndarray:
        return np.asarray(ref.read()).astype(target, copy=False)
    return load


def generation_config(meta: dict, ids: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "bos" in ids:
        out["bos_token_id"] = ids["bos"]
    eos = [ids["eos"]] if "eos" in ids else []
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and int(eot) not in eos:
        eos.append(int(eot))
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if "pad" in ids:
        out["pad_token_id"] = ids["pad"]
    return out
