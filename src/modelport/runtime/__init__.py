"""Running models: engines behind one interface, the chat template rendered once.

    from modelport import runtime
    with runtime.load("model.gguf") as engine:                 # llama.cpp for GGUF, transformers otherwise
        ids = engine.chat_ids([{"role": "user", "content": "Hi"}])
        print(engine.complete(ids, max_tokens=32).text)
        chat = runtime.Conversation(engine, system="Be brief.", on_text=lambda piece: print(piece, end=""))
        chat.send("What is the capital of France?")
"""

from __future__ import annotations

import os

from ..core.errors import UnsupportedError
from ..opening import open as open_model
from .base import Engine, Generation, Sampler, Sampling, TextStream
from .chat_template import ChatTemplate, template_for
from .conversation import ContextFullError, Conversation, GenerationSettings, stream_answer
from .hf_engine import HFEngine
from .llama_engine import LlamaEngine

ENGINES = ("auto", "llama", "hf")


def load(path: str | os.PathLike, engine: str = "auto", ctx: int | None = None, threads: int | None = None,
         trust: bool = False) -> Engine:
    """Open `path` (scanned first, as `modelport.open` does) and start the engine its format calls for."""
    if engine not in ENGINES:
        raise UnsupportedError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if ctx is not None and ctx < 1:
        raise UnsupportedError(f"--ctx must be positive, not {ctx}")
    source = open_model(path, trust=trust)
    try:
        trained = (source.config or {}).get("max_position_embeddings")
        if ctx is not None and isinstance(trained, int) and ctx > trained:
            raise UnsupportedError(f"--ctx {ctx} is larger than the {trained} positions the model was trained for", path)
        if engine == "llama" or (engine == "auto" and source.format == "gguf"):
            return LlamaEngine(source, ctx=ctx, threads=threads)
        return HFEngine(source, ctx=ctx)
    finally:
        source.close()


__all__ = ["load", "Engine", "Generation", "Sampler", "Sampling", "TextStream", "ChatTemplate", "template_for", "ENGINES",
           "Conversation", "ContextFullError", "GenerationSettings", "stream_answer", "HFEngine", "LlamaEngine"]
