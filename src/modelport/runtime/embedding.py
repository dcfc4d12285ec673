"""Text → vectors with an encoder, in the engine that has the model's embeddings: transformers (a Hugging Face
folder), onnxruntime (a `convert --to onnx` export) or llama.cpp (an embedding GGUF).

Pooling is the model's own: a sentence-transformers folder declares it (`modules.json` → `1_Pooling/config.json`,
a `Normalize` module), an ONNX export may carry it in the graph (`sentence_embedding`), a GGUF in its
`<arch>.pooling_type`; otherwise the mean over the text's tokens, as sentence-transformers does for a plain
encoder. The same folder in transformers and in its ONNX export gives the same vectors (to ~1e-5).

Also here: which models are encoders (`architecture`), used by `runtime.load` to refuse them for run/chat and
by `embed` to refuse causal language models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import FormatError, MissingDependencyError, UnsupportedError
from ..core.source import ModelSource, read_json, safe_member
from ..opening import open as open_model
from ..pooling import Pooling, declared_pooling, l2_normalize, pool
from .base import cores
from .chat_template import folder_of
from .llama_engine import install_log_callback
from .onnx_engine import export_info, folder_config, graph_path, session
from .tokenizer import import_transformers, library_logs, load_tokenizer

#: Model types and GGUF architectures that encode text into vectors and cannot generate it.
ENCODERS = {"bert", "nomic-bert", "jina-bert-v2", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet",
            "deberta", "deberta-v2", "albert", "camembert", "t5encoder", "modernbert", "new"}
GENERATOR_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
EMBED_ENGINES = ("auto", "hf", "onnx", "llama")
#: llama.cpp's LLAMA_POOLING_TYPE_* values.
GGUF_POOLING = {0: "none", 1: "mean_tokens", 2: "cls_token", 3: "lasttoken", 4: "rank"}
BATCH = 16   # texts per forward pass: bounds the activations


def model_config(source: ModelSource) -> dict[str, Any]:
    """The model's config.json (an ONNX export's too when its graph file is given alone), or {}."""
    return folder_config(source) if source.format == "onnx" else source.config or {}


def architecture(source: ModelSource) -> tuple[str, bool]:
    """(the model's architecture name, whether it is an encoder), from its config, GGUF header or export description."""
    config = model_config(source)
    arch = source.metadata.get("general.architecture") if source.format == "gguf" else config.get("model_type")
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    encoder = arch in ENCODERS or (source.format == "gguf" and f"{arch}.pooling_type" in source.metadata)
    if names and not any(n.endswith(GENERATOR_SUFFIXES) for n in names):
        encoder = True
    if source.format == "onnx":
        kind = export_info(folder_of(source)).get("kind")
        encoder = encoder if kind is None else kind == "encoder"
    return str(names[0] if names else arch), encoder


@dataclass
class Embeddings:
    """Vectors for `texts` (one row each), with how they were made."""

    texts: list[str]
    vectors: np.ndarray
    tokens: list[int] = field(default_factory=list)
    engine: str = ""
    pooling: str = ""
    model: str = ""

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    def similarity(self) -> np.ndarray:
        """Cosine similarity of every pair of texts."""
        unit = l2_normalize(self.vectors.astype(np.float64))
        return unit @ unit.T

    def to_dict(self) -> dict[str, Any]:
        norms = np.linalg.norm(self.vectors, axis=1)
        return {"model": self.model, "engine": self.engine, "pooling": self.pooling, "dimensions": self.dimensions,
                "embeddings": [{"text": t, "tokens": n, "norm": float(norm), "vector": v.tolist()}
                               for t, n, norm, v in zip(self.texts, self.tokens, norms, self.vectors)],
                "similarity": self.similarity().round(6).tolist()}


def embed(path: str | os.PathLike, texts: list[str], engine: str = "auto", normalize: bool = False,
          trust: bool = False, threads: int | None = None) -> Embeddings:
    """Embed `texts` with the encoder at `path` (scanned first, as `modelport.open` does).

    engine: auto (llama.cpp for GGUF, onnxruntime for ONNX exports, transformers otherwise), hf, onnx or llama.
    normalize: L2-normalize the vectors (a declared Normalize module always applies)."""
    if not texts:
        raise UnsupportedError("no text to embed")
    with Encoder.load(path, engine=engine, trust=trust, threads=threads) as encoder:
        return encoder.encode(texts, normalize=normalize)


class Encoder:
    """An encoder loaded once in one engine, for many `encode` calls (`embed` for one call, `serve` for many).

    Not thread-safe: callers that share one serialize their calls."""

    def __init__(self, source: ModelSource, arch: str, engine: str, pooling: Pooling, run, close, limit: int):
        self.source, self.arch, self.engine, self.pooling = source, arch, engine, pooling
        self.run, self.release, self.max_tokens = run, close, limit
        self.path = str(source.path)

    @classmethod
    def load(cls, path: str | os.PathLike, engine: str = "auto", trust: bool = False,
             threads: int | None = None) -> Encoder:
        """Open `path` (scanned), refuse a model that does not encode, and load it in `engine`."""
        if engine not in EMBED_ENGINES:
            raise UnsupportedError(f"unknown engine {engine!r} for embed (choose from {', '.join(EMBED_ENGINES)})")
        source = open_model(path, trust=trust)
        try:
            arch, encoder = architecture(source)
            if not encoder:
                raise UnsupportedError(f"is a causal language model ({arch}), not an encoder: embed needs an embedding "
                                       "model (BERT-style, sentence-transformers, or an embedding GGUF)", source.path)
            if engine == "auto":
                engine = {"gguf": "llama", "onnx": "onnx"}.get(source.format, "hf")
            loader = {"llama": llama_runner, "onnx": onnx_runner, "hf": hf_runner}[engine]
            run, close, pooling, limit = loader(source, threads)
        except BaseException:
            source.close()
            raise
        return cls(source, arch, engine, pooling, run, close, limit)

    @property
    def engine_name(self) -> str:
        return {"llama": "llama.cpp", "onnx": "onnxruntime", "hf": "transformers"}[self.engine]

    def encode(self, texts: list[str], normalize: bool = False) -> Embeddings:
        """One vector per text (texts longer than the model's window are cut to it, as sentence-transformers does)."""
        if not texts:
            raise UnsupportedError("no text to embed")
        vectors, tokens, graph_pooled = self.run(list(texts))
        pooling = self.pooling
        if graph_pooled:
            pooling = Pooling(origin="the graph's sentence_embedding output", modes=pooling.modes, normalize=pooling.normalize)
        if normalize and not pooling.normalize:
            vectors = l2_normalize(vectors)
            pooling = Pooling(pooling.modes, True, pooling.origin)
        return Embeddings(list(texts), np.asarray(vectors, dtype=np.float32), tokens, self.engine_name,
                          pooling.describe(), self.path)

    def close(self) -> None:
        self.release()
        self.source.close()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def max_length(tokenizer, config: dict[str, Any], folder) -> int:
    """Longest input: sentence-transformers' max_seq_length, else the tokenizer's limit within the model's positions."""
    st_path = safe_member(folder, "sentence_bert_config.json", "sentence-transformers config")
    st = read_json(st_path) if st_path.is_file() else {}
    limits = [v for v in (st.get("max_seq_length") if isinstance(st, dict) else None, tokenizer.model_max_length,
                          config.get("max_position_embeddings")) if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else 512


def batches(tokenizer, texts: list[str], limit: int):
    """Padded NumPy batches of BATCH texts: the tokenizer's own encoding (specials, token types) as the model saw it."""
    for start in range(0, len(texts), BATCH):
        yield tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=limit, return_tensors="np")


def hf_runner(source: ModelSource, threads: int | None):
    """transformers' AutoModel (the bare encoder) on a safetensors folder; pooled here."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError("torch", "torch", "embedding with transformers") from None
    tf = import_transformers()
    folder = folder_of(source)
    if source.format != "safetensors" or not safe_member(folder, "config.json", "config").is_file():
        raise UnsupportedError("embed with transformers reads a Hugging Face folder of safetensors with its config.json "
                               "(convert other weights with 'modelport convert')", source.path)
    pooling = declared_pooling(folder)
    tokenizer = load_tokenizer(folder)
    try:
        with library_logs(tf):
            model = tf.AutoModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"transformers could not load this encoder ({str(exc).splitlines()[0]})", folder) from None
    if threads:
        torch.set_num_threads(threads)
    limit = max_length(tokenizer, model_config(source), folder)

    def run(texts: list[str]):
        rows, tokens = [], []
        for enc in batches(tokenizer, texts, limit):
            with torch.inference_mode():
                out = model(**{k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in enc.items()})
            mask = np.asarray(enc["attention_mask"])
            rows.append(pool(out.last_hidden_state.float().numpy(), mask, pooling.modes))
            tokens += mask.sum(axis=1).astype(int).tolist()
        vectors = np.concatenate(rows)
        return (l2_normalize(vectors) if pooling.normalize else vectors), tokens, False

    return run, lambda: None, pooling, limit


def onnx_runner(source: ModelSource, threads: int | None):
    """onnxruntime on an encoder export: its `sentence_embedding` output when it has one, else `last_hidden_state`
    pooled here."""
    folder = folder_of(source)
    pooling = declared_pooling(folder)
    sess = session(graph_path(source), threads)
    inputs = {i.name for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    graph_pooled = "sentence_embedding" in outputs
    wanted = "sentence_embedding" if graph_pooled else "last_hidden_state"
    if wanted not in outputs or "input_ids" not in inputs:
        raise FormatError("is not an encoder graph (needs input_ids and a last_hidden_state or sentence_embedding "
                          "output)", graph_path(source))
    tokenizer = load_tokenizer(folder)
    limit = max_length(tokenizer, model_config(source), folder)

    def run(texts: list[str]):
        rows, tokens = [], []
        for enc in batches(tokenizer, texts, limit):
            ids = np.asarray(enc["input_ids"], dtype=np.int64)
            mask = np.asarray(enc["attention_mask"], dtype=np.int64)
            feeds = {"input_ids": ids}
            if "attention_mask" in inputs:
                feeds["attention_mask"] = mask
            if "token_type_ids" in inputs:
                feeds["token_type_ids"] = np.asarray(enc.get("token_type_ids", np.zeros_like(ids)), dtype=np.int64)
            try:
                (out,) = sess.run([wanted], feeds)
            except Exception as exc:   # onnxruntime's own error types
                raise UnsupportedError(f"onnxruntime failed to run the texts ({str(exc).splitlines()[0]})") from None
            rows.append(out if graph_pooled else pool(out, mask, pooling.modes))
            tokens += mask.sum(axis=1).astype(int).tolist()
        vectors = np.concatenate(rows).astype(np.float32)
        return (l2_normalize(vectors) if pooling.normalize and not graph_pooled else vectors), tokens, graph_pooled

    return run, lambda: None, pooling, limit


def llama_runner(source: ModelSource, threads: int | None):
    """llama.cpp in embedding mode, pooled as the GGUF declares (per-token output is mean-pooled here)."""
    if source.format != "gguf":
        raise UnsupportedError(f"llama.cpp embeds GGUF files, not {source.format}", source.path)
    try:
        import llama_cpp
    except ImportError:
        raise MissingDependencyError("llama-cpp-python", "llama", "embedding with llama.cpp") from None
    install_log_callback(llama_cpp)
    arch = source.metadata.get("general.architecture")
    kind = GGUF_POOLING.get(int(source.metadata.get(f"{arch}.pooling_type", 0)), "none")
    if kind == "rank":
        raise UnsupportedError("is a reranker (pooling type rank): it scores text pairs, it does not embed texts",
                               source.path)
    n_ctx = int(source.metadata.get(f"{arch}.context_length") or 512)
    threads = threads or cores()
    try:
        llm = llama_cpp.Llama(model_path=str(source.path), embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                              n_threads=threads, n_threads_batch=threads, verbose=False)
    except ValueError as exc:
        raise FormatError(f"llama.cpp could not load this file ({exc})", source.path) from None
    pooling = Pooling(("mean_tokens",) if kind == "none" else (kind,), False, f"{arch}.pooling_type")

    def run(texts: list[str]):
        rows, tokens = [], []
        try:
            for text in texts:
                out, count = llm.embed(text, truncate=True, return_count=True)
                vector = np.asarray(out, dtype=np.float32)
                rows.append(vector.mean(axis=0) if vector.ndim == 2 else vector)
                tokens.append(int(count))
        except (RuntimeError, ValueError) as exc:
            raise UnsupportedError(f"llama.cpp failed to embed the texts ({exc})", source.path) from None
        return np.stack(rows), tokens, False

    return run, llm.close, pooling, n_ctx
