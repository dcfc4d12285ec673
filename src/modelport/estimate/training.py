"""Training memory (HF Trainer conventions): full fine-tuning, LoRA and QLoRA.

- Full fine-tuning keeps F32 weights and gradients, AdamW two F32 states (8 bytes/param), 8-bit AdamW two 1-byte
  states, SGD without momentum none. LoRA/QLoRA freeze the base (BF16 for LoRA; NF4 with double quantization for
  QLoRA's linear layers, BF16 for embeddings/norms/lm_head) and train F32 adapters (peft upcasts them), with the
  same per-parameter optimizer costs. The default LoRA targets are the family's (`Family.lora_targets`).
- Activations (approximation, 16-bit autocast, SDPA attention that stores no score matrix): per layer and token
  a llama block keeps about 8*h + 3*h_kv + 4*ff values (norm inputs, q/k/v, attention output, MLP gate/up/act/product);
  with gradient checkpointing only each layer's input (h values) plus one layer being recomputed. Logits add
  about 8 bytes per vocabulary entry and token (F32 logits and their softmax for the loss).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import families
from ..core.errors import UnsupportedError
from ..gguf.mixes import allows_quantization
from .model import Hyper, ModelView

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = {"adamw": 8.0, "adamw8bit": 2.0, "sgd": 0.0}       # optimizer-state bytes per trainable parameter
#: The guide's LoRA targets (q, k, v, o, gate, up, down), as Llama-style families name them: the default for
#: models no family claims.
LORA_TARGETS = families.Family.lora_targets
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)   # 4-bit codes + 8-bit absmax per 64 + F32 per 256 absmax (double quant)


def default_lora_targets(view: ModelView) -> tuple[str, ...]:
    """The model's family's LoRA targets (Llama-style names for models no family claims)."""
    return (view.family or families.Family).lora_targets


def _lora_modules(view: ModelView, targets) -> list[tuple[int, int]]:
    """(in, out) of every matrix a LoRA with these target module names wraps (peft's suffix match)."""
    targets = tuple(targets)
    all_linear = targets == ("all-linear",)
    wanted_gguf = (view.family or families.Family).lora_gguf_kinds(targets)
    dims = []
    for name, (shape, _) in view.tensors.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        original = view.original_names.get(name)
        if all_linear:
            hit = name.startswith("blk.") and "norm" not in name
        elif original is not None:
            module = original[: -len(".weight")]
            hit = any(module == t or module.endswith("." + t) for t in targets)
        else:
            m = re.match(r"blk\.\d+\.(\w+)\.weight$", name)
            hit = bool(m) and m.group(1) in wanted_gguf
        if hit:
            dims.append((shape[1], shape[0]))
    return dims


def lora_parameter_count(view: ModelView, r: int = 8, targets=None) -> int:
    """Trainable LoRA parameters: r * (in + out) per wrapped matrix (peft, bias="none")."""
    return sum(r * (i + o) for i, o in _lora_modules(view, targets or default_lora_targets(view)))


def activation_bytes(hp: Hyper, seq_len: int, batch: int, grad_checkpointing: bool, lora_r: int = 0,
                     lora_modules: int = 0) -> int:
    """Approximation (see the module docstring), 16-bit activations."""
    tokens = seq_len * batch
    kv = hp.n_head_kv * hp.head_dim
    ff = hp.n_ff_expert if hp.n_expert else hp.n_ff
    per_layer = 2 * (8 * hp.n_embd + 3 * kv + 4 * ff) + 2 * lora_r * lora_modules // max(1, hp.n_layer)
    if grad_checkpointing:
        layers = 2 * hp.n_embd * hp.n_layer + per_layer
    else:
        layers = per_layer * hp.n_layer
    return tokens * (layers + 8 * hp.n_vocab)


def training_memory(view: ModelView, method: str = "lora", *, lora_r: int = 8, targets=None,
                    seq_len: int = 512, batch: int = 1, optimizer: str = "adamw",
                    grad_checkpointing: bool = False) -> dict[str, Any]:
    """Bytes for weights, gradients, optimizer states, LoRA adapters and activations (module docstring).
    `targets`: LoRA target module names, or None for the family's."""
    method, optimizer = method.lower(), optimizer.lower()
    if method not in METHODS:
        raise UnsupportedError(f"unknown training method {method!r}; use one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise UnsupportedError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    targets = targets or default_lora_targets(view)
    state = OPTIMIZERS[optimizer]
    params = view.parameter_count
    modules = _lora_modules(view, targets) if method != "full" else []
    lora = sum(lora_r * (i + o) for i, o in modules)
    if method == "full":
        trainable = params
        weights, grads, opt, adapters = 4 * params, 4 * trainable, state * trainable, 0
    else:
        trainable = lora
        if method == "lora":
            weights = 2 * params
        else:  # bitsandbytes quantizes every nn.Linear except the output layer; the rest stays BF16
            linear = sum(math.prod(s) for n, (s, _) in view.tensors.items()
                         if len(s) >= 2 and n.startswith("blk.") and allows_quantization(n, s))
            weights = int(NF4_BYTES * linear) + 2 * (params - linear)
        adapters, grads, opt = 4 * lora, 4 * lora, state * lora
    acts = (activation_bytes(view.hyper, seq_len, batch, grad_checkpointing, lora_r if modules else 0, len(modules))
            if view.hyper else None)
    total = weights + adapters + grads + int(opt) + (acts or 0)
    return {"method": method, "optimizer": optimizer, "seq_len": seq_len, "batch": batch,
            "grad_checkpointing": grad_checkpointing, "lora_r": lora_r if method != "full" else None,
            "lora_targets": list(targets) if method != "full" else None,
            "trainable_parameters": trainable, "total_parameters": params + (lora if method != "full" else 0),
            "weights": weights, "lora_parameters": adapters, "gradients": grads, "optimizer_states": int(opt),
            "activations": acts, "total": total}
