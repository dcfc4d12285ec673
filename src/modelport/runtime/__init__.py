"""Running models: engines behind one interface, the chat template rendered once.

    from modelport import runtime
    with runtime.load("model.gguf") as engine:     # llama.cpp for GGUF, onnxruntime for ONNX exports, else transformers
        ids = engine.chat_ids([{"role": "user", "content": "Hi"}])
        print(engine.complete(ids, max_tokens=32).text)
        chat = runtime.Conversation(engine, system="Be brief.", on_text=lambda piece: print(piece, end=""))
        chat.send("What is the capital of France?")
"""

from __future__ import annotations

import os

from ..check import load_failure
from ..core.errors import FormatError, ModelportError, UnsupportedError
from ..core.source import ModelSource
from ..opening import open as open_model
from .base import Engine, Generation, Sampler, Sampling, TextStream
from .chat_template import ChatTemplate, folder_of, template_for
from .conversation import ContextFullError, Conversation, GenerationSettings, stream_answer
from .hf_engine import HFEngine
from .llama_engine import LlamaEngine
from .onnx_engine import OnnxEngine, export_info, folder_config

ENGINES = ("auto", "llama", "hf", "onnx")

#: Model types and GGUF architectures that encode text into vectors and cannot generate it.
ENCODERS = {"bert", "nomic-bert", "jina-bert-v2", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet",
            "deberta", "deberta-v2", "albert", "camembert", "t5encoder", "modernbert", "new"}
GENERATOR_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def model_config(source: ModelSource) -> dict:
    """The model's config.json (an ONNX export's too when its graph file is given alone), or {}."""
    return folder_config(source) if source.format == "onnx" else source.config or {}


def check_generates(source: ModelSource, needs_template: bool) -> None:
    """Refuse, before any engine loads, a model that cannot answer: an encoder, a vocabulary-only GGUF, or
    (when the chat template is asked for) a model without one. Each says what would work instead."""
    config = model_config(source)
    arch = source.metadata.get("general.architecture") if source.format == "gguf" else config.get("model_type")
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    encoder = arch in ENCODERS or (source.format == "gguf" and f"{arch}.pooling_type" in source.metadata)
    if names and not any(n.endswith(GENERATOR_SUFFIXES) for n in names):
        encoder = True
    if source.format == "onnx" and export_info(folder_of(source)).get("kind") == "encoder":
        encoder = True
    if encoder:
        kind = names[0] if names else arch
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
           "OnnxEngine"]
