"""sentence-transformers pooling: what a model folder declares (`modules.json` → `1_Pooling/config.json`, a
`Normalize` module) and the pooling itself over token vectors, in NumPy, as sentence-transformers computes it.

Below `conversion` and `runtime` so that the ONNX export (which builds the pooling into the graph) and `embed`
(which pools the output of transformers or onnxruntime) read a folder's declaration the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.errors import FormatError, UnsupportedError
from .core.source import read_json, safe_member

#: sentence-transformers' pooling modes, in the order its Pooling module concatenates them.
POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")


@dataclass
class Pooling:
    """How token vectors become one vector: sentence-transformers modes (concatenated), then L2 normalization."""

    modes: tuple[str, ...] = ("mean_tokens",)
    normalize: bool = False
    origin: str = "mean of the tokens (no pooling declared)"

    def describe(self) -> str:
        return "+".join(m.removesuffix("_tokens").removesuffix("_token") for m in self.modes) + (
            ", normalized" if self.normalize else "")


def declared_pooling(folder: Path) -> Pooling:
    """The pooling a sentence-transformers folder declares in modules.json, else mean pooling."""
    modules_path = safe_member(folder, "modules.json", "sentence-transformers modules")
    if not modules_path.is_file():
        return Pooling()
    modules = read_json(modules_path)
    if not isinstance(modules, list):
        raise FormatError("is not a list of modules", modules_path)
    pooling = Pooling(origin="modules.json")
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""
        if kind == "Pooling":
            config_path = safe_member(folder, f"{module.get('path') or ''}/config.json".lstrip("/"), "pooling config")
            if not config_path.is_file():
                raise FormatError(f"declares a Pooling module but {config_path.relative_to(folder)} is missing",
                                  modules_path)
            config = read_json(config_path)
            if not isinstance(config, dict):
                raise FormatError("is not a JSON object", config_path)
            modes = tuple(m for m in POOLING_MODES if config.get(f"pooling_mode_{m}"))
            pooling.modes = modes or ("mean_tokens",)
            pooling.origin = f"{config_path.relative_to(folder)}"
        elif kind == "Normalize":
            pooling.normalize = True
        elif kind not in ("Transformer", ""):
            raise UnsupportedError(f"declares a sentence-transformers {kind} module; modelport runs Transformer, "
                                   "Pooling and Normalize modules only", modules_path)
    return pooling


def pool(hidden: np.ndarray, mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """sentence-transformers' Pooling over token vectors [batch, seq, dim] with attention mask [batch, seq]."""
    hidden = hidden.astype(np.float32)
    m = mask.astype(np.float32)[:, :, None]
    counts = np.maximum(m.sum(axis=1), 1e-9)
    out = []
    for mode in modes:
        if mode == "cls_token":
            out.append(hidden[:, 0])
        elif mode == "max_tokens":
            out.append(np.where(m > 0, hidden, -1e9).max(axis=1))
        elif mode == "mean_tokens":
            out.append((hidden * m).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            out.append((hidden * m).sum(axis=1) / np.sqrt(counts))
        elif mode == "weightedmean_tokens":
            w = m * np.arange(1, hidden.shape[1] + 1, dtype=np.float32)[None, :, None]
            out.append((hidden * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)
            out.append(hidden[np.arange(hidden.shape[0]), last])
        else:
            raise UnsupportedError(f"unknown pooling mode {mode!r}")
    return np.concatenate(out, axis=1)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
