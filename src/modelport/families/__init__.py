"""The model families modelport knows, one module each; this registry finds them by itself.

Every module of this package other than `base` defines `FAMILY`, its `Family` subclass; adding a family is adding
one file. Lookups: by an HF config (`for_config`, what conversion to GGUF accepts), by llama.cpp's arch name
(`for_gguf_arch`, the way back), and leniently for `estimate` (`find`, None when unknown).
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

import numpy as np

from ..core.errors import UnsupportedError
from .base import (
    COMPUTED_TENSORS,
    EXPERT_COUNT_KEYS,
    EXPERT_KINDS,
    EXPERT_USED_KEYS,
    Dims,
    Experts,
    Family,
    Transform,
    check_layers,
    first,
    permute_qk,
    unpermute_qk,
)


def _discover() -> tuple[type[Family], ...]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if not (isinstance(family, type) and issubclass(family, Family)):
            raise TypeError(f"{module.__name__} defines no FAMILY (a Family subclass)")
        found.append(family)
    return tuple(found)


#: Every family, in module-name order.
REGISTRY: tuple[type[Family], ...] = _discover()


def supported() -> list[str]:
    """The HF architectures conversion accepts."""
    return sorted({a for cls in REGISTRY for a in cls.hf_architectures})


def for_config(config: dict | None, path=None) -> Family:
    """The family of an HF config (by `architectures`, then `model_type`), or UnsupportedError naming the supported ones."""
    if not config:
        raise UnsupportedError("no config.json: converting to GGUF needs the model's Hugging Face config "
                               "(put config.json beside the weights or pass --config)", path)
    archs = config.get("architectures") or []
    for cls in REGISTRY:
        if any(a in cls.hf_architectures for a in archs):
            return cls(config)
    for cls in REGISTRY:
        if config.get("model_type") in cls.model_types:
            return cls(config)
    what = archs[0] if archs else config.get("model_type") or "unknown"
    near = nearest(config)
    raise UnsupportedError(f"architecture {what!r} is not supported for GGUF conversion; the nearest supported family "
                           f"is {near.hf_architectures[0]} (llama.cpp arch {near.name}); `modelport inspect "
                           f"--families` describes each; supported: {', '.join(supported())}", path)


def _stem(name: str) -> str:
    return name.lower().replace("_", "").removesuffix("forcausallm").removesuffix("lmheadmodel")


#: Where no family's name is close (similarity below this), the nearest is the common base of its kind.
_CLOSE = 0.7
_SHARED_EXPERT_KEYS = ("shared_expert_intermediate_size", "n_shared_experts", "num_shared_experts")


def nearest(config: dict) -> type[Family]:
    """The supported family most like an unsupported config: among the families of its kind (dense, mixture of
    experts, MoE with shared experts), the one whose architecture or model_type name is closest (Phi3Small ->
    Phi-3 by prefix, Qwen3Next -> Qwen3-MoE); with no close name, the kind's common base (Llama, Mixtral, Qwen2-MoE)."""
    names = [_stem(str(n)) for n in (config.get("architectures") or []) + [config.get("model_type") or ""] if n]
    moe = bool(first(config, *EXPERT_COUNT_KEYS, default=0))
    shared = moe and any(config.get(k) for k in _SHARED_EXPERT_KEYS)

    def kind(cls: type[Family]) -> tuple[bool, bool]:
        return issubclass(cls, Experts), any("_shexp." in gg for _, gg in cls.tensors)

    def similarity(cls: type[Family]) -> float:
        keys = [_stem(k) for k in cls.hf_architectures + cls.model_types + (cls.name,)]
        return max((0.9 + len(k) / 1000 if len(k) >= 4 and n.startswith(k) else difflib.SequenceMatcher(None, n, k).ratio()
                    for n in names for k in keys), default=0.0)

    same_kind = [cls for cls in REGISTRY if kind(cls) == (moe, shared)] or list(REGISTRY)
    best = max(same_kind, key=similarity)
    if similarity(best) >= _CLOSE:
        return best
    base = {(False, False): "LlamaForCausalLM", (True, False): "MixtralForCausalLM",
            (True, True): "Qwen2MoeForCausalLM"}[(moe, shared)]
    return next((cls for cls in REGISTRY if base in cls.hf_architectures), best)


def catalog() -> list[dict]:
    """Every family that converts, for `inspect --families`: its HF architectures and model types, llama.cpp's
    arch name, whether it is a mixture of experts, and the first line of its module's description."""
    out = []
    for cls in REGISTRY:
        doc = (importlib.import_module(cls.__module__).__doc__ or "").strip().split("\n\n")[0]
        sentence = " ".join(doc.split()).split(". ")[0].rstrip(".")
        out.append({"family": cls.__name__, "llama_cpp_arch": cls.name, "hf_architectures": list(cls.hf_architectures),
                    "model_types": list(cls.model_types), "mixture_of_experts": issubclass(cls, Experts),
                    "description": sentence})
    return out


def for_gguf_arch(arch_name: str, meta: dict | None = None) -> type[Family]:
    """The family for a GGUF `general.architecture` (the reverse direction). Where two families share an arch
    (llama and Mixtral), the file's `<arch>.expert_count` picks the mixture-of-experts one."""
    candidates = [cls for cls in REGISTRY if cls.name == arch_name]
    if len(candidates) > 1 and meta is not None:
        moe = bool(int(np.max(meta.get(f"{arch_name}.expert_count", 0) or 0)))
        candidates = [cls for cls in candidates if issubclass(cls, Experts) == moe] or candidates
    if candidates:
        return candidates[0]
    raise UnsupportedError(f"GGUF architecture {arch_name!r} is not supported; supported: "
                           f"{', '.join(c.name for c in REGISTRY)}")


def find(config: dict | None) -> Family | None:
    """The family that can lay out a config's tensors (what conversion accepts, plus each family's
    `layout_model_types`; a GGUF's config names llama.cpp's arch as its model_type); None when unknown."""
    if not config:
        return None
    try:
        return for_config(config)
    except UnsupportedError:
        pass
    model_type = config.get("model_type")
    gguf = not config.get("architectures")
    moe = bool(first(config, *EXPERT_COUNT_KEYS, default=0))
    for cls in sorted(REGISTRY, key=lambda c: issubclass(c, Experts) != moe):   # a GGUF's MoE variant first
        if model_type in cls.layout_model_types or (gguf and model_type == cls.name):
            return cls(config)
    return None


__all__ = ["REGISTRY", "COMPUTED_TENSORS", "catalog", "nearest", "EXPERT_COUNT_KEYS", "EXPERT_KINDS", "EXPERT_USED_KEYS", "Dims", "Experts",
           "Family", "Transform", "check_layers", "find", "for_config",
           "for_gguf_arch", "permute_qk", "supported", "unpermute_qk"]
