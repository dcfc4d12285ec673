"""onnxruntime, for folders written by `modelport convert --to onnx` (and any causal-LM graph with the same names).

The graph is the optimum / onnxruntime-genai layout (docs/DESIGN.md, "ONNX export"): inputs `input_ids`,
`attention_mask`, `position_ids` and `past_key_values.{i}.key/.value`, outputs `logits` and
`present.{i}.key/.value`. The KV cache lives here as NumPy arrays between calls: each run takes the past
and returns the present (past + new positions), which becomes the next past; cutting the cache back for a
shared chat prefix is a slice. Tokenizer, stop tokens and chat template are the folder's own, through
transformers (`tokenizer.TokenizerEngine`), so the same prompt gives the same ids as the transformers engine.

Which graph: a folder runs its `model.onnx`; give a `.onnx` file (`model_int8.onnx`) to run that one.
Threads: all cores this process may use (intra-op), all graph optimizations on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import FormatError, MissingDependencyError, UnsupportedError
from ..core.source import ModelSource, read_json, safe_member
from .base import cores
from .chat_template import folder_of
from .tokenizer import TokenizerEngine, load_tokenizer, token_ids

INFO = "modelport_onnx.json"
GRAPH = "model.onnx"
PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
CHUNK = 512   # prompt tokens per run: bounds the logits and attention memory of a long prompt
NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "running an ONNX model") from None
    return onnxruntime


def export_info(folder: Path) -> dict[str, Any]:
    """The folder's `modelport_onnx.json` (kind, layers, ...), or {} for a graph modelport did not write."""
    path = safe_member(folder, INFO, "export description")
    if not path.is_file():
        return {}
    info = read_json(path)
    if not isinstance(info, dict):
        raise FormatError("is not a JSON object", path)
    return info


def graph_path(source: ModelSource) -> Path:
    """The graph to run: the file given, or the folder's float graph (`model` in its description, else `model.onnx`)."""
    if not source.path.is_dir():
        return source.path
    name = export_info(source.path).get("model") or GRAPH
    path = safe_member(source.path, str(name), "ONNX graph")
    if not path.is_file():
        raise FormatError(f"no {name} in this folder (give the .onnx file to run)", source.path)
    return path


def folder_config(source: ModelSource) -> dict[str, Any]:
    """config.json of the model, also when a lone .onnx file inside its folder is given."""
    if source.config:
        return source.config
    path = safe_member(folder_of(source), "config.json", "config")
    config = read_json(path) if path.is_file() else {}
    return config if isinstance(config, dict) else {}


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session on `path`: intra-op threads = cores (or `threads`), every graph optimization on,
    onnxruntime's own log lines off. A graph it cannot load is one FormatError."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:   # onnxruntime raises its own Fail/InvalidGraph/... types
        raise FormatError(f"onnxruntime could not load this graph ({str(exc).splitlines()[0]})", path) from None


class OnnxEngine(TokenizerEngine):
    name = "onnxruntime"

    def __init__(self, source: ModelSource, ctx: int | None = None, threads: int | None = None):
        super().__init__()
        if source.format != "onnx":
            raise UnsupportedError(f"onnxruntime runs ONNX exports, not {source.format} "
                                   "(export with 'modelport convert MODEL OUT --to onnx')", source.path)
        folder = folder_of(source)
        path = graph_path(source)
        info = export_info(folder)
        if info.get("kind") == "encoder":
            raise UnsupportedError("is an encoder export: it turns text into vectors (use 'modelport embed')", path)
        config = folder_config(source)
        self.threads = threads or cores()
        self.session = session(path, self.threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "input_ids" not in inputs or "logits" not in outputs:
            raise FormatError("is not a causal language model graph (needs an input_ids input and a logits output)",
                              path)
        self._feeds_mask = "attention_mask" in inputs
        self._feeds_positions = "position_ids" in inputs
        past = sorted((int(m.group(1)), m.group(2) == "value", name)
                      for name in inputs if (m := PAST.fullmatch(name)))
        self._past_names = [name for *_, name in past]
        self._present_names = [name.replace("past_key_values.", "present.") for name in self._past_names]
        missing = [n for n in self._present_names if n not in outputs]
        if missing:
            raise FormatError(f"has no output {missing[0]!r} for its cache input", path)
        self._empty = [self._empty_past(inputs[name], info, config, path) for name in self._past_names]
        self._cache = list(self._empty)
        self._length = 0                   # positions held in the cache
        logits_width = outputs["logits"].shape[-1]
        self.n_vocab = int(logits_width if isinstance(logits_width, int) else config.get("vocab_size") or 0)
        if self.n_vocab <= 0:
            raise FormatError("the vocabulary size is neither in the graph nor in config.json", path)
        trained = config.get("max_position_embeddings") or config.get("n_positions")
        self.n_ctx = int(ctx or trained or 2048)
        tokenizer = load_tokenizer(folder)
        generation = safe_member(folder, "generation_config.json", "generation config")
        eos = read_json(generation).get("eos_token_id") if generation.is_file() else config.get("eos_token_id")
        self.use_tokenizer(tokenizer, source, token_ids(eos))

    @staticmethod
    def _empty_past(spec, info: dict[str, Any], config: dict[str, Any], path: Path) -> np.ndarray:
        """A zero-length past for one cache input: [1, kv_heads, 0, head_dim], sizes from the graph or the export info."""
        shape = list(spec.shape)
        if len(shape) != 4:
            raise FormatError(f"cache input {spec.name!r} has {len(shape)} dimensions, not 4", path)
        heads = shape[1] if isinstance(shape[1], int) else info.get("num_key_value_heads")
        width = shape[3] if isinstance(shape[3], int) else info.get("head_dim")
        if not (isinstance(heads, int) and isinstance(width, int)):
            raise FormatError(f"the shape of cache input {spec.name!r} is not fixed and {INFO} does not give it", path)
        return np.zeros((1, heads, 0, width), dtype=NUMPY_TYPES.get(spec.type, np.float32))

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        rows = []
        for start in range(0, len(ids), CHUNK):
            logits = self._run(ids[start:start + CHUNK])
            if all_logits:
                rows.append(logits)
        if all_logits:
            return np.concatenate(rows).astype(np.float32, copy=False)
        return np.asarray(logits[-1], dtype=np.float32).copy()

    def _run(self, ids: list[int]) -> np.ndarray:
        """One run of the graph over `ids` after the cached positions; their logits, the cache grown by them."""
        n, past = len(ids), self._length
        feeds: dict[str, np.ndarray] = {"input_ids": np.array([ids], dtype=np.int64)}
        if self._feeds_mask:
            feeds["attention_mask"] = np.ones((1, past + n), dtype=np.int64)
        if self._feeds_positions:
            feeds["position_ids"] = np.arange(past, past + n, dtype=np.int64)[None]
        feeds.update(zip(self._past_names, self._cache))
        try:
            logits, *present = self.session.run(["logits", *self._present_names], feeds)
        except Exception as exc:   # onnxruntime's own error types
            raise UnsupportedError(f"onnxruntime failed to run the tokens ({str(exc).splitlines()[0]})") from None
        self._cache, self._length = present, past + n
        return logits[0]

    def _truncate(self, n: int) -> int:
        if n >= self._length:
            return self._length
        if n == 0 or any(a.shape[2] != self._length for a in self._cache):   # a sliding-window layer keeps fewer
            self._cache, self._length = list(self._empty), 0
            return 0
        self._cache = [np.ascontiguousarray(a[:, :, :n]) for a in self._cache]
        self._length = n
        return n

    def close(self) -> None:
        self.session = None
        self._cache = []
