"""Collect an importance matrix by running the model (`modelport imatrix`): transformers forward hooks on every
weight matrix llama.cpp would quantize, summing the squared input activations per input column and counting tokens.

What llama-imatrix does, in transformers: the text is tokenized once, cut into chunks of `ctx` tokens (the first
token of each replaced by BOS when the model adds one), each chunk run from an empty cache; only `blk.*` matrices are
collected (llama-imatrix leaves `output.weight` out by default and never sees the token embedding, a row lookup).
Names are the GGUF names the family gives (the ones `convert --quant` writes), so the file serves llama-quantize
and modelport alike. Stacked experts (`blk.N.ffn_{gate,up,down}_exps`) get one row of sums and one count per expert,
from the tokens routed to it, as llama-imatrix collects a MUL_MAT_ID; the MoE routers (never quantized) are left out.
A GGUF (or bare weights with a config) is first written as an HF folder in a temporary folder beside the output.
Sums are accumulated in float64 (llama.cpp adds in float32).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .. import families
from ..conversion.hf_to_onnx import hf_folder
from ..conversion.route import Request
from ..core.dtypes import F32
from ..core.errors import UnsupportedError
from ..core.source import ModelSource, read_json
from ..core.tensor import TensorRef
from ..gguf.imatrix import Entry, ImportanceMatrix
from ..gguf.mixes import allows_quantization
from ..opening import open as open_model
from .hf_engine import HFEngine

#: llama-imatrix's default context (-c).
DEFAULT_CTX = 512
CALIBRATION_NAME = "calibration.txt"


def calibration_text() -> str:
    """The calibration text shipped with modelport (prose, code, numbers, several languages), for when the user
    gives none."""
    return resources.files(__package__).joinpath(CALIBRATION_NAME).read_text("utf-8")


@dataclass
class Collected:
    """The matrix and how it was made."""
    imatrix: ImportanceMatrix
    tokens: int            # tokens in the whole text
    chunks: int            # chunks run
    ctx: int


def chunk_ids(engine, text: str, ctx: int, chunks: int | None) -> tuple[list[list[int]], int]:
    """The token chunks llama-imatrix would run: whole chunks of `ctx` tokens, BOS first when the model adds one."""
    if ctx < 16:
        raise UnsupportedError(f"--ctx must be at least 16 (llama.cpp ignores smaller batches), not {ctx}")
    tokens = engine.tokenize(text, add_special=True)
    available = len(tokens) // ctx
    if available < 1:
        raise UnsupportedError(f"the text gives {len(tokens)} tokens, less than one chunk of --ctx {ctx}")
    n = available if chunks is None or chunks <= 0 else min(chunks, available)
    out = []
    for i in range(n):
        chunk = tokens[i * ctx:(i + 1) * ctx]
        if engine.add_bos and engine.bos_id is not None:
            chunk = [engine.bos_id] + chunk[1:]
        out.append(chunk)
    return out, len(tokens)


def targets(model, family) -> dict[str, list[str]]:
    """HF module name -> the GGUF tensor names its weight becomes (one, or several when the family splits it), for
    the matrices llama-imatrix collects. Two modules that land in one GGUF tensor read the same input: the first
    one counts."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or getattr(weight, "ndim", 0) != 2 or not name:
            continue
        try:
            gname = family.gguf_name(name + ".weight")
        except UnsupportedError:     # a module transformers names its own way (an MoE router): nothing to quantize
            continue
        if gname is None:
            continue
        shape = tuple(int(s) for s in weight.shape)
        ref = TensorRef(gname, F32, shape, loader=_never)
        names = [n for n, _ in family.split_tensor(gname, ref)]
        names = [n for n in names if n.startswith("blk.") and n not in seen and allows_quantization(n, shape)]
        if names:
            out[name] = names
            seen.update(names)
    return out


#: The GGUF kinds of a layer's stacked experts: the gate and up matrices read the routed hidden state, down reads the
#: gated product.
EXPERT_GATE_UP = ("ffn_gate_exps.weight", "ffn_up_exps.weight")
EXPERT_DOWN = "ffn_down_exps.weight"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def expert_targets(model) -> dict[str, int]:
    """HF experts module name -> its layer, for transformers 5's stacked experts (`gate_up_proj` and `down_proj` of
    shape (n_expert, ...), the gating in `_apply_gate`): Mixtral, Qwen2/3-MoE, OLMoE, gpt-oss."""
    out = {}
    for name, module in model.named_modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if getattr(gate_up, "ndim", 0) != 3 or getattr(down, "ndim", 0) != 3 or not hasattr(module, "_apply_gate"):
            continue
        m = _LAYER.search(name + ".")
        if m:
            out[name] = int(m.group(1))
    return out


def _never():
    raise UnsupportedError("shape-only tensor")


@contextlib.contextmanager
def _hooks(model, wanted: dict[str, list[str]], experts: dict[str, int], sums: dict, counts: dict) -> Iterator[None]:
    import torch

    handles = []

    def hook(names):
        def record(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            sq = (x * x).sum(dim=0).numpy()
            for n in names:
                if n in sums:
                    sums[n] += sq
                else:
                    sums[n] = sq.copy()
                counts[n] = counts.get(n, 0) + x.shape[0]
        return record

    modules = dict(model.named_modules())
    for name, names in wanted.items():
        handles.append(modules[name].register_forward_pre_hook(hook(names)))
    for name, layer in experts.items():
        handles.append(modules[name].register_forward_pre_hook(_expert_hook(layer, sums, counts), with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _expert_hook(layer: int, sums: dict, counts: dict):
    """What llama-imatrix collects for MUL_MAT_ID: per expert, the squared inputs of the tokens routed to it and
    their count (one row of `sums` and one count per expert). The gate/up input is the routed hidden state; down's
    input, the gated product, is recomputed here from the expert's own weights (the forward keeps it inside)."""
    import torch

    gate_up_names = [f"blk.{layer}.{k}" for k in EXPERT_GATE_UP]
    down_name = f"blk.{layer}.{EXPERT_DOWN}"

    def record(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        hidden, index = list(bound.values())[:2]
        x = hidden.detach().reshape(-1, hidden.shape[-1])
        index = index.detach().reshape(x.shape[0], -1)
        n_expert = int(module.gate_up_proj.shape[0])
        transposed = bool(getattr(module, "is_transposed", False))
        bias = getattr(module, "gate_up_proj_bias", None) if getattr(module, "has_bias", False) else None
        for n, ncols in [(n, x.shape[-1]) for n in gate_up_names] + [(down_name, int(module.down_proj.shape[
                -2 if transposed else -1]))]:
            if n not in sums:
                sums[n] = np.zeros((n_expert, ncols), np.float64)
                counts[n] = np.zeros(n_expert, np.int64)
        for e in range(n_expert):
            rows = torch.nonzero((index == e).any(dim=-1)).reshape(-1)
            if rows.numel() == 0:
                continue
            xe = x[rows]
            sq = (xe.to(torch.float64) ** 2).sum(dim=0).numpy()
            w = module.gate_up_proj[e]
            h = xe @ w if transposed else xe @ w.T
            if bias is not None:
                h = h + bias[e]
            h = module._apply_gate(h)
            down_sq = (h.to(torch.float64) ** 2).sum(dim=0).numpy()
            for n in gate_up_names:
                sums[n][e] += sq
                counts[n][e] += rows.numel()
            sums[down_name][e] += down_sq
            counts[down_name][e] += rows.numel()
    return record


def collect(source: ModelSource, text: str, *, ctx: int = DEFAULT_CTX, chunks: int | None = None,
            dataset: str = "", workdir: str | os.PathLike | None = None,
            progress: Callable[[int, int], None] | None = None) -> Collected:
    """The importance matrix of `source` (an opened model) over `text`. `workdir` is where a GGUF source is staged
    as an HF folder (a temporary folder inside it, removed after); `progress(done, total)` is called per chunk."""
    import torch

    workdir = Path(workdir) if workdir is not None else source.path.parent
    with hf_folder(source, Request(workdir / f"{source.path.name}.imatrix")) as folder:
        config = read_json(folder / "config.json")
        family = families.for_config(config, source.path)
        with open_model(folder) as staged:
            engine = HFEngine(staged, ctx=ctx)
        model = engine.model
        pieces, n_tokens = chunk_ids(engine, text, ctx, chunks)
        wanted = targets(model, family)
        experts = expert_targets(model)
        if not wanted and not experts:
            raise UnsupportedError("found no weight matrix to collect (no blk.* tensor in the family's names)",
                                   source.path)
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        if progress is not None:
            progress(0, len(pieces))
        with _hooks(model, wanted, experts, sums, counts), torch.inference_mode():
            for i, ids in enumerate(pieces):
                model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
                if progress is not None:
                    progress(i + 1, len(pieces))
    entries = {}
    for n in sorted(sums):
        c = np.asarray(counts[n], np.int64).reshape(-1)
        if c.any():                                  # llama-imatrix skips an entry that saw no token at all
            entries[n] = Entry(np.asarray(sums[n]).astype(np.float32).reshape(c.size, -1), c)
    m = ImportanceMatrix(entries, [dataset] if dataset else [], chunk_count=len(pieces), chunk_size=ctx)
    return Collected(m, n_tokens, len(pieces), ctx)
