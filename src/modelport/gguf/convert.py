"""Hugging Face model -> GGUF in one pass: read -> rename -> permute -> quantize -> write, one tensor at a time.

The plan (names, shapes, types, metadata, vocabulary) is built from headers and side files alone and
validated before the output is created. Tensors are then lazy `TensorRef`s whose loaders do the work when
the streaming writer (`formats.gguf.write_gguf`) pulls them, so peak memory is about the largest tensor in
float32 plus its quantized copy.

Quantized outputs follow llama-quantize: every tensor is taken as float32 (what llama-quantize does with an
F32 or F16 input), the per-tensor type comes from `mixes.choose_types`, the bytes from `quants.quantize`
(ggml's reference quantizers), and the KV set gets `general.file_type` and `general.quantization_version = 2`.
So the result equals running llama-quantize on our F32 GGUF, tensor for tensor.
Float outputs (F32/F16/BF16) follow llama.cpp's converter: 1-D tensors, norms and position embeddings stay F32.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import families
from ..core import dtypes
from ..core.errors import CheckFailed, FormatError, ModelportError, UnsupportedError
from ..core.source import ModelSource, read_json
from ..core.tensor import TensorRef, as_float32
from ..formats.gguf import open_gguf, write_gguf
from . import mixes, quants
from .imatrix import ImportanceMatrix
from .tokenizer import TOKENIZER_FILES, Vocab, load_vocab

FLOAT_FTYPES = ("F32", "F16", "BF16")
#: What `--quant` accepts (llama.cpp file types).
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
               "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
               "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE")
QUANTIZATION_VERSION = 2


def parse_ftype(text: str | None, default: str = "F16") -> str:
    if text is None:
        return default
    key = text.strip().upper().replace("-", "_")
    key = {"FP32": "F32", "FP16": "F16", "FLOAT32": "F32", "FLOAT16": "F16", "BFLOAT16": "BF16", "Q3_K": "Q3_K_M",
           "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(key, key)
    if key not in QUANT_TYPES:
        raise UnsupportedError(f"unknown quantization type {text!r}; supported: {', '.join(QUANT_TYPES)}")
    return key


#: Block types the converter copies as they are (gpt-oss's MXFP4 experts), whatever the output type, as llama.cpp's
#: converter does (and llama-quantize refuses to requantize them by default).
KEPT_AS_IS = ("MXFP4",)


@dataclass
class Planned:
    """One output tensor: where its float32 values come from and what type it is written as; `raw`: the stored
    blocks of a tensor kept as it is (a `KEPT_AS_IS` type), copied byte for byte."""
    name: str
    shape: tuple[int, ...]          # NumPy order (row length last)
    load: Callable[[], np.ndarray]  # float32 values in GGUF orientation
    type: str = "F32"
    raw: Callable[[], np.ndarray] | None = None
    importance: np.ndarray | None = None   # imatrix weights for the quantizer: (ncols,) or (n_expert, ncols)


#: Tensors llama.cpp's converter keeps in F32 whatever the outtype (MoE routers: the expert choice is sensitive).
_ALWAYS_F32 = ("position_embd.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def _float_type(name: str, shape, ftype: str) -> str:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name.endswith(_ALWAYS_F32):
        return "F32"
    return ftype


def assign_types(planned: list[Planned], ftype: str, shape: mixes.ModelShape,
                 imatrix: ImportanceMatrix | None = None) -> None:
    """Per-tensor types for `ftype`: the converter's rule for float files, llama-quantize's mix otherwise (some of
    its rules depend on whether an imatrix is given), then the importance weights (`apply_imatrix`)."""
    if ftype in FLOAT_FTYPES:
        for p in planned:
            p.type = p.type if p.raw is not None else _float_type(p.name, p.shape, ftype)
        return
    chosen = mixes.choose_types({p.name: (p.shape, "F32") for p in planned}, ftype, shape, imatrix is not None)
    for p in planned:
        p.type = p.type if p.raw is not None else chosen[p.name]
    apply_imatrix(planned, ftype, imatrix, keep=lambda p: p.raw is not None)


def apply_imatrix(planned: list[Planned], ftype: str, imatrix: ImportanceMatrix | None,
                  keep: Callable[[Planned], bool] = lambda p: False) -> None:
    """Give every quantized tensor its importance weights, as llama-quantize does: an entry of the wrong size is
    an error (but for the token embedding, which is then quantized without), a tensor of a type that needs
    weights and has none is refused with the reason; `keep(p)` marks tensors copied as they are (no weights)."""
    by_name = {p.name: p for p in planned if dtypes.DTYPES[p.type].is_quantized and not keep(p)}
    quantized = [by_name[n] for n in mixes.processing_order(by_name)]
    for p in quantized:
        weights = imatrix.importance(p.name) if imatrix is not None else None
        if weights is not None:
            n_expert = int(p.shape[-3]) if len(p.shape) >= 3 else 1
            if weights.size != int(p.shape[-1]) * n_expert:
                if p.name in ("token_embd.weight", "per_layer_token_embd.weight"):
                    weights = None
                else:
                    raise UnsupportedError(f"the imatrix has {weights.size} values for {p.name}, which has rows of "
                                           f"{p.shape[-1]} (x{n_expert} experts): it was made for another model")
        p.importance = weights
        if weights is None and mixes.requires_imatrix(p.name, p.type):
            how = ("the imatrix has no entry for it" if imatrix is not None else
                   "make one with 'modelport imatrix MODEL -o model.imatrix.gguf' and pass --imatrix")
            raise UnsupportedError(f"{ftype} needs an importance matrix: {p.name} would be {p.type}, which is garbage "
                                   f"without one ({how})")
    for p in quantized:
        if p.type not in quants.SUPPORTED:
            raise UnsupportedError(f"modelport cannot write {p.type} tensors yet ({ftype} puts {p.name} in {p.type})")


def imatrix_metadata(imatrix: ImportanceMatrix | None, path: str | os.PathLike | None) -> dict[str, Any]:
    """The keys llama-quantize adds when it is given an imatrix (quantize.imatrix.*)."""
    if imatrix is None:
        return {}
    meta: dict[str, Any] = {}
    if path is not None:
        meta["quantize.imatrix.file"] = os.fspath(path)[:127]
    if imatrix.datasets:
        meta["quantize.imatrix.dataset"] = imatrix.datasets[0][:127]
    meta["quantize.imatrix.entries_count"] = np.uint32(len(imatrix.entries))
    if imatrix.chunk_count > 0:
        meta["quantize.imatrix.chunks_count"] = np.uint32(imatrix.chunk_count)
    return meta


def llama_quantize_metadata(meta: dict[str, Any], ftype: str, imatrix: ImportanceMatrix | None = None,
                            path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The key/value set llama-quantize writes, in its order: the source's keys as they were (less the split keys),
    then `general.quantization_version` and `general.file_type` (its gguf_set_val removes a key and appends it), then
    the imatrix keys (`imatrix_metadata`, applied the same way as overrides)."""
    out = {k: v for k, v in meta.items() if k not in _SPLIT_KEYS}
    tail = {"general.quantization_version": np.uint32(QUANTIZATION_VERSION),
            "general.file_type": np.uint32(mixes.FTYPES[ftype]), **imatrix_metadata(imatrix, path)}
    for key, value in tail.items():
        out.pop(key, None)
        out[key] = value
    return out


_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


def llama_quantize_layout(planned: list[Planned]) -> list[Planned]:
    """The tensors as llama-quantize lists them: in its processing order, each with ggml_n_dims dimensions (trailing
    ne of 1 dropped, so a (1, 256) router of a shared expert is written 1-D)."""
    for p in planned:
        shape = tuple(p.shape)
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        p.shape = shape
    return mixes.ordered_refs(planned)


def to_refs(planned: list[Planned], threads: int | None = None, source: str | os.PathLike | None = None) -> list[TensorRef]:
    """Lazy refs for the writer: float types through `read()`, block types through `read_raw()`. Values the
    quantizer refuses (NaN, infinity, magnitudes its search overflows) are a FormatError naming the tensor and
    `source`, the file they came from."""
    refs = []
    for p in planned:
        dt = dtypes.DTYPES[p.type]
        if p.raw is not None:
            refs.append(TensorRef(p.name, dt, p.shape, loader=_no_read(p.name), raw_loader=p.raw,
                                  extra={"gguf_type": p.type}))
        elif dt.is_quantized:
            def raw(p=p):
                data = np.ascontiguousarray(p.load(), dtype=np.float32)
                try:
                    if p.importance is None:
                        return quants.quantize(data, p.type, threads=threads).reshape(-1)
                    return quants.quantize(data, p.type, threads=threads, imatrix=p.importance).reshape(-1)
                except ValueError as e:
                    raise FormatError(f"tensor {p.name}: {e}", source) from None
            refs.append(TensorRef(p.name, dt, p.shape, loader=_no_read(p.name), raw_loader=raw,
                                  extra={"gguf_type": p.type}))
        else:
            def load(p=p, np_type=dt.numpy):
                return np.asarray(p.load()).astype(np_type, copy=False).reshape(p.shape)
            refs.append(TensorRef(p.name, dt, p.shape, loader=load))
    return refs


def _no_read(name):
    def read():
        raise UnsupportedError(f"tensor {name!r} is written from its quantized blocks")
    return read


def file_metadata(ftype: str, quantized: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"general.file_type": np.uint32(mixes.FTYPES[ftype])}
    if quantized:
        meta["general.quantization_version"] = np.uint32(QUANTIZATION_VERSION)
    return meta


# --- HF -> GGUF -----------------------------------------------------------------------------------

@dataclass
class Plan:
    arch: families.Family
    vocab: Vocab
    tensors: list[Planned]
    metadata: dict[str, Any]
    ftype: str


@contextmanager
def _naming(path):
    """A ModelportError raised without a file gets `path`, so the one-line error says which model it is about."""
    try:
        yield
    except ModelportError as exc:
        if exc.path is None:
            exc.path = os.fspath(path)
        raise


def plan_hf(source: ModelSource, ftype: str, config: dict | None = None, side_files: dict[str, Path] | None = None,
            imatrix: ImportanceMatrix | None = None, imatrix_path: str | os.PathLike | None = None) -> Plan:
    """Everything about the output, from headers and side files only; raises before anything is written.
    With `imatrix`, quantized tensors get its importance weights (as llama-quantize on our F32 file would)."""
    config = config if config is not None else source.config
    arch = families.for_config(config, source.path)
    groups: dict[str, list[TensorRef]] = {}     # output name -> the HF tensors it is made of (the family's n -> 1)
    for ref in source.values():
        gname = arch.gguf_name(ref.name)
        if gname is None:
            continue
        groups.setdefault(gname, []).append(ref)
    planned: list[Planned] = []
    with _naming(source.path):    # config checks in the family know no file: name the model
        for gname, refs in groups.items():
            for name, part in arch.split_tensor(gname, arch.merge_tensors(gname, refs)):
                if part.dtype.name in KEPT_AS_IS:        # blocks the family repacked for llama.cpp: copied as they are
                    planned.append(Planned(name, tuple(part.shape), part.read, part.dtype.name, raw=part.read_raw))
                    continue
                if not (part.dtype.is_float or part.dtype.is_quantized):
                    raise UnsupportedError(f"tensor {refs[0].name!r} is {refs[0].dtype.name}, not a float tensor")
                planned.append(Planned(name, arch.gguf_shape(name, part.shape), _loader(arch, name, part)))
        extra = arch.extra_tensors()
        hparams = arch.hparams()
    seen = {p.name for p in planned}
    planned[0:0] = [Planned(name, values.shape, lambda v=values: v) for name, values in extra.items()]
    if "token_embd.weight" not in seen:
        raise FormatError(f"no token embedding among the tensors (expected {arch.hf_name('token_embd.weight')!r})",
                          source.path)
    families.check_layers(arch, seen, source.path)
    n_rows = next(p.shape[0] for p in planned if p.name == "token_embd.weight")
    files = dict(side_files if side_files is not None else source.side_files)
    files = {k: v for k, v in files.items() if k in TOKENIZER_FILES}
    vocab = load_vocab(files, config, n_rows, source.path)
    if "output.weight" in seen:
        out_rows = next(p.shape[0] for p in planned if p.name == "output.weight")
        if out_rows != n_rows:
            raise FormatError(f"output.weight has {out_rows} rows but the embedding has {n_rows}", source.path)

    shape = mixes.ModelShape(n_layer=arch.n_layer, n_head=arch.n_head, n_head_kv=arch.n_head_kv,
                             n_expert=getattr(arch, "n_expert", 0), arch=arch.name)
    assign_types(planned, ftype, shape, imatrix if ftype not in FLOAT_FTYPES else None)
    meta: dict[str, Any] = {"general.architecture": arch.name, "general.type": "model"}
    name = config.get("_name_or_path") or source.path.stem
    if isinstance(name, str) and name:
        meta["general.name"] = Path(name).name or name
    meta.update(hparams)
    meta.update(file_metadata(ftype, ftype not in FLOAT_FTYPES))
    meta.update(vocab.metadata())
    meta.update(imatrix_metadata(imatrix, imatrix_path))
    if ftype not in FLOAT_FTYPES:      # as llama-quantize writes a quantized file: its tensor and key orders
        planned = llama_quantize_layout(planned)
        meta = llama_quantize_metadata(meta, ftype, imatrix, imatrix_path)
    return Plan(arch, vocab, planned, meta, ftype)


def _loader(arch, gname: str, ref: TensorRef) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = as_float32(ref.read())     # a mapped bf16/f16 source is let go block by block: peak = the float32 copy
        return np.ascontiguousarray(arch.to_gguf(gname, data))
    return load


def hf_to_gguf(source: ModelSource, dst: str | os.PathLike, quant: str | None = None, *, config: dict | None = None,
               side_files: dict[str, Path] | None = None, progress=None, threads: int | None = None) -> Plan:
    """Write `source` (an opened HF model) to the GGUF file `dst` as `quant` (default F16), streaming."""
    ftype = parse_ftype(quant)
    plan = plan_hf(source, ftype, config, side_files)
    write_gguf(to_refs(plan.tensors, threads, source.path), Path(dst), metadata=plan.metadata, progress=progress)
    return plan


#: Relative RMS error (|dequantized - source| over |source|) a tensor of each type may show before `--verify`
#: calls the file broken: about three times what the type gives on Gaussian weights, and far below the ~1.4 of a
#: tensor scrambled by a wrong permutation or transpose. Capped at 1.0, which anything uncorrelated with its source
#: exceeds (sqrt(1 + |y|^2/|x|^2)); the ternary types never exceed it (each value goes to the nearer of 0 and
#: +-absmax, no farther than 0 is), and the grid types were measured with importance weights (ggml's, via ctypes).
VERIFY_BOUNDS = {"Q8_0": 0.02, "Q6_K": 0.06, "Q5_K": 0.12, "Q5_0": 0.15, "Q5_1": 0.15, "Q4_K": 0.25,
                 "Q4_0": 0.3, "Q4_1": 0.3, "Q3_K": 0.5, "Q2_K": 0.9,
                 # measured on N(0, 0.02) 256x2048 (no imatrix / lognormal imatrix): 0.076/0.075, 0.077/0.076, 0.114
                 "IQ4_NL": 0.25, "IQ4_XS": 0.25, "MXFP4": 0.35, "TQ1_0": 1.0, "TQ2_0": 1.0,    # ternary: 0.81
                 # with all-one / lognormal weights: IQ3_S 0.137/0.146, IQ3_XXS 0.182/0.198, IQ2_S 0.249/0.263,
                 # IQ2_XS 0.300/0.320, IQ2_XXS 0.344/0.362, IQ1_M 0.452/0.492, IQ1_S 0.486/0.519
                 "IQ3_S": 0.45, "IQ3_XXS": 0.6, "IQ2_S": 0.8, "IQ2_XS": 0.95, "IQ2_XXS": 1.0, "IQ1_M": 1.0,
                 "IQ1_S": 1.0}


def verify_gguf(planned: list[Planned], dst: Path, progress: Callable[[TensorRef], None] | None = None) -> dict[str, float]:
    """Re-open a written GGUF and compare every tensor with what it was made from, one at a time: float types
    bit for bit, quantized ones within `VERIFY_BOUNDS`. Returns the worst relative RMS error per quantized type.
    `progress` is called with each output tensor once it is checked."""
    worst: dict[str, float] = {}
    with open_gguf(dst) as out:
        for p in planned:
            got = out.tensors.get(p.name)
            if progress is not None and got is not None:
                progress(got)
            if got is None or got.dtype.name != p.type or tuple(got.shape) != tuple(p.shape):
                found = "missing" if got is None else f"{got.dtype.name}{list(got.shape)}"
                raise CheckFailed(f"verify: tensor {p.name!r} is {found}, expected {p.type}{list(p.shape)}", dst)
            if p.raw is not None:
                if not np.array_equal(np.asarray(got.read_raw()).reshape(-1), np.asarray(p.raw()).reshape(-1)):
                    raise CheckFailed(f"verify: tensor {p.name!r} ({p.type}, copied as is) differs from its source", dst)
                continue
            want = np.asarray(p.load())
            if p.type in FLOAT_FTYPES:
                have = np.asarray(got.read())
                if not np.array_equal(want.astype(have.dtype).view(np.uint8), have.view(np.uint8)):
                    raise CheckFailed(f"verify: tensor {p.name!r} differs from its source", dst)
                continue
            err = _relative_error(np.asarray(got.read_raw()), p.type, want)
            if not err <= VERIFY_BOUNDS[p.type]:
                raise CheckFailed(f"verify: tensor {p.name!r} ({p.type}) is {err:.3f} away from its source (relative "
                                  f"RMS error; {p.type} stays under {VERIFY_BOUNDS[p.type]})", dst)
            worst[p.type] = max(worst.get(p.type, 0.0), err)
    return worst


def _relative_error(raw: np.ndarray, qtype: str, want: np.ndarray, rows_per_step: int = 4096) -> float:
    """sqrt(sum((dequantized - want)^2) / sum(want^2)), dequantizing a few thousand rows at a time, so that
    checking costs little memory beyond the source tensor itself."""
    want = np.ascontiguousarray(want, dtype=np.float32)
    want = want.reshape(-1, want.shape[-1]) if want.ndim > 1 else want.reshape(1, -1)
    blocks = raw.reshape(want.shape[0], -1)
    err = ref = 0.0
    for r, got in quants.dequantize_chunks(blocks, qtype, rows_per_step):
        w = want[r:r + len(got)]
        diff = got.reshape(w.shape)
        diff -= w
        err += float(np.dot(diff.reshape(-1), diff.reshape(-1)))
        ref += float(np.dot(w.reshape(-1), w.reshape(-1)))
    return float(np.sqrt(err / max(ref, 1e-30)))


def load_config(path: str | os.PathLike) -> dict:
    cfg = read_json(Path(path))
    if not isinstance(cfg, dict):
        raise FormatError("config is not a JSON object", path)
    return cfg


# --- GGUF -> GGUF re-quantization -------------------------------------------------------------------

def model_shape(meta: dict) -> mixes.ModelShape:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError("no general.architecture in the GGUF metadata")

    def first(v, default=0):
        if v is None:
            return default
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):
            return int(v[0]) if v else default
        return int(v)

    n_head = first(meta.get(f"{arch}.attention.head_count"))
    n_kv = first(meta.get(f"{arch}.attention.head_count_kv"), n_head)
    return mixes.ModelShape(n_layer=first(meta.get(f"{arch}.block_count")), n_head=n_head, n_head_kv=n_kv,
                            n_expert=first(meta.get(f"{arch}.expert_count")), arch=arch)
