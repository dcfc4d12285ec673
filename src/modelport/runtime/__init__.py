"""Running models: engines behind one interface, the chat template rendered once.

    from modelport import runtime
    with runtime.load("model.gguf") as engine:     # llama.cpp for GGUF, onnxruntime for ONNX exports, else transformers
        ids = engine.chat_ids([{"role": "user", "content": "Hi"}])
        print(engine.complete(ids, max_tokens=32).text)
        chat = runtime.Conversation(engine, system="Be brief.", on_text=lambda piece: print(piece, end=""))
        chat.send("What is the capital of France?")
    vectors = runtime.embed("bge-small/", ["a text", "another"]).vectors   # encoders: transformers, onnxruntime, llama.cpp
"""

from __future__ import annotations

import os

from ..check import load_failure
from ..core.errors import FormatError, ModelportError, UnsupportedError
from ..core.source import ModelSource
from ..opening import open as open_model
from .base import Engine, Generation, Sampler, Sampling, TextStream
from .chat_template import ChatTemplate, template_for
from .conversation import ContextFullError, Conversation, GenerationSettings, stream_answer
from .embedding import Embeddings, Encoder, architecture, embed, model_config
from .hf_engine import HFEngine
from .llama_engine import LlamaEngine
from .onnx_engine import OnnxEngine

ENGINES = ("auto", "llama", "hf", "onnx")


def check_generates(source: ModelSource, needs_template: bool) -> None:
    """Refuse, before any engine loads, a model that cannot answer: an encoder, a vocabulary-only GGUF, or
    (when the chat template is asked for) a model without one. Each says what would work instead."""
    kind, encoder = architecture(source)
    if encoder:
        raise UnsupportedError(f"is an encoder ({kind}): it turns text into vectors and does not generate text; "
                               "run and chat need a causal language model", source.path)
    if source.format == "gguf" and not source.tensors:
        raise UnsupportedError("holds only a vocabulary (no weights): a tokenizer file for tests, not a model to run",
                               source.path)
    if needs_template and template_for(source) is None:
        raise UnsupportedError("has no chat template; use 'modelport run --raw' to send a prompt as plain text", source.path)


def load(path: str | os.PathLike, engine: str = "auto", ctx: int | None = None, threads: int | None = None,
         trust: bool = False, needs_template: bool = False) -> Engine:
    """Open `path` (scanned first, as `modelport.open` does) and start the engine its format calls for.

    `needs_template`: the caller will render chats, so a model without a chat template is refused before
    it loads (as are encoders and vocabulary-only files, always)."""
    if engine not in ENGINES:
        raise UnsupportedError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if ctx is not None and ctx < 1:
        raise UnsupportedError(f"--ctx must be positive, not {ctx}")
    source = open_model(path, trust=trust)
    try:
        check_generates(source, needs_template)
        trained = model_config(source).get("max_position_embeddings")
        if ctx is not None and isinstance(trained, int) and ctx > trained:
            raise UnsupportedError(f"--ctx {ctx} is larger than the {trained} positions the model was trained for", path)
        try:
            if engine == "llama" or (engine == "auto" and source.format == "gguf"):
                return LlamaEngine(source, ctx=ctx, threads=threads)
            if engine == "onnx" or (engine == "auto" and source.format == "onnx"):
                return OnnxEngine(source, ctx=ctx, threads=threads)
            return HFEngine(source, ctx=ctx)
        except Exception as exc:   # the library's traceback or "could not load": say why, from `check`
            if isinstance(exc, ModelportError) and not isinstance(exc, FormatError):
                raise
            raise load_failure(path, exc, trust=trust) from exc
    finally:
        source.close()


__all__ = ["load", "check_generates", "Engine", "Generation", "Sampler", "Sampling", "TextStream", "ChatTemplate",
           "template_for", "ENGINES", "Conversation", "ContextFullError", "GenerationSettings", "stream_answer", "HFEngine", "LlamaEngine",
           "OnnxEngine", "embed", "Embeddings", "Encoder"]
