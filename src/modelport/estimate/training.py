"""Training memory: the peak resident memory of a `modelport train` process (transformers Trainer, peft, AdamW).

- Runtime: what the process holds with nothing to train: Python, torch, transformers, peft, accelerate and the
  library code the forward and backward passes touch (measured: the peak RSS of a LoRA run on a 44 K-parameter
  model, where weights and activations are negligible).
- Weights: fp32 master weights for full fine-tuning (bf16 is autocast; autocast also caches a bf16 copy of each
  trainable weight); LoRA keeps its frozen base in fp32, or in bf16 when the run is bf16; QLoRA quantizes every
  nn.Linear but the output layer to NF4 with double quantization, the rest in fp32
  (`prepare_model_for_kbit_training`). Adapters, their gradients and the optimizer states are fp32: AdamW two
  states (8 bytes/param), 8-bit AdamW 2, SGD without momentum none. The default LoRA targets are the family's.
- Activations, per token of `seq_len` x `batch` (SDPA attention, which stores no score matrix): a llama block saves
  about 8*h + 3*h_kv + 4*ff values (norm inputs, q/k/v, attention output, MLP gate/up/act/product) plus the LoRA
  down-projections, in fp32 (4 bytes) or under bf16 autocast (2); with gradient checkpointing only each layer's
  input plus one layer being recomputed. The loss adds 16 bytes per vocabulary entry: fp32 logits, their
  log-softmax (saved for backward) and the two gradients backward makes of them.
- The allocator: glibc keeps the blocks freed between steps and the backward pass's gradients of the activations
  (allocated while the saved ones are still held), so the process's peak is ACTIVATION_PEAK times the activations
  above (measured on SmolLM2-135M and narrow deep llamas, 128 to 4096 tokens a step; tests/training/test_memory.py).
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
#: Peak RSS of a training process with nothing to train (see the module docstring), Linux x86-64, torch CPU build.
TRAINING_RUNTIME_BYTES = 510 * 10**6
#: Peak bytes the process reaches per byte of `activation_bytes` (the allocator; module docstring), measured.
ACTIVATION_PEAK = 1.5


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
                     lora_modules: int = 0, bf16: bool = True) -> int:
    """What backward needs kept, and the loss's fp32 logits (see the module docstring); before the allocator."""
    tokens = seq_len * batch
    size = 2 if bf16 else 4
    kv = hp.n_head_kv * hp.head_dim
    ff = hp.n_ff_expert if hp.n_expert else hp.n_ff
    per_layer = size * (8 * hp.n_embd + 3 * kv + 4 * ff + lora_r * lora_modules // max(1, hp.n_layer))
    if grad_checkpointing:
        layers = size * hp.n_embd * hp.n_layer + per_layer
    else:
        layers = per_layer * hp.n_layer
    return tokens * (layers + 16 * hp.n_vocab)


def training_memory(view: ModelView, method: str = "lora", *, lora_r: int = 8, targets=None,
                    seq_len: int = 512, batch: int = 1, optimizer: str = "adamw",
                    grad_checkpointing: bool = False, bf16: bool = True) -> dict[str, Any]:
    """Bytes of a training process's peak: runtime, weights, adapters, gradients, optimizer states, activations
    (module docstring). `targets`: LoRA target module names, or None for the family's. `bf16`: autocast (as on a
    GPU, or a CPU with avx512_bf16) or fp32."""
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
        weights = 4 * params + (2 * params if bf16 else 0)      # + autocast's bf16 copies of trainable weights
        grads, opt, adapters = 4 * trainable, state * trainable, 0
    else:
        trainable = lora
        if method == "lora":
            weights = (2 if bf16 else 4) * params
        else:  # bitsandbytes quantizes every nn.Linear except the output layer; the rest stays fp32
            linear = sum(math.prod(s) for n, (s, _) in view.tensors.items()
                         if len(s) >= 2 and n.startswith("blk.") and allows_quantization(n, s))
            weights = int(NF4_BYTES * linear) + 4 * (params - linear)
        adapters, grads, opt = 4 * lora, 4 * lora, state * lora
    acts = (int(ACTIVATION_PEAK * activation_bytes(view.hyper, seq_len, batch, grad_checkpointing,
                                                   lora_r if modules else 0, len(modules), bf16))
            if view.hyper else None)
    total = TRAINING_RUNTIME_BYTES + weights + adapters + grads + int(opt) + (acts or 0)
    return {"method": method, "optimizer": optimizer, "seq_len": seq_len, "batch": batch, "bf16": bf16,
            "grad_checkpointing": grad_checkpointing, "lora_r": lora_r if method != "full" else None,
            "lora_targets": list(targets) if method != "full" else None,
            "trainable_parameters": trainable, "total_parameters": params + (lora if method != "full" else 0),
            "runtime": TRAINING_RUNTIME_BYTES, "weights": weights, "lora_parameters": adapters, "gradients": grads,
            "optimizer_states": int(opt), "activations": acts, "total": total}
