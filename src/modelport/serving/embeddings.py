"""Serving an encoder: OpenAI's `/v1/embeddings` and Ollama's `/api/embed` (and its older `/api/embeddings`).

An embedding model is served by the same app as a chat model (same key check, errors, access log, model list);
`create_app` builds this server instead of a generating one when the model encodes (runtime.embedding decides).
The encoder is loaded once and runs one request at a time on a worker thread: encoders are fast and batch the texts
of one request themselves, so a queue of requests gains little from interleaving.

Vectors are L2-normalized, as OpenAI's are and as Ollama's /api/embed returns them (clients take the dot product
as the cosine); Ollama's older /api/embeddings returns them as the model makes them, as Ollama does.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import numpy as np
from pydantic import field_validator

from ..core.errors import ModelportError
from ..runtime.embedding import Embeddings, Encoder
from .ollama_api import Request as OllamaShape
from .openai_api import ApiError

MAX_INPUTS = 2048      # OpenAI's own limit on texts per request


class EmbedRequest(OllamaShape):
    """Ollama's POST /api/embed."""

    model: str | None = None
    input: str | list[str]
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: str | int | None = None


class LegacyEmbedRequest(OllamaShape):
    """Ollama's older POST /api/embeddings: one prompt, one vector."""

    model: str | None = None
    prompt: str
    options: dict[str, Any] | None = None
    keep_alive: str | int | None = None

    @field_validator("prompt")
    @classmethod
    def not_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("prompt: the text to embed is empty")
        return v


class EmbeddingServer:
    """What the routes of an encoder share: the loaded encoder (one caller at a time), its name and description."""

    def __init__(self, encoder: Encoder, name: str, info: dict[str, Any], api_key: str | None):
        self.encoder, self.name, self.info = encoder, name, info
        self.api_key = api_key.encode() if api_key else None
        self.created = int(time.time())
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        return {"model": self.name, "engine": self.encoder.engine_name, "ctx": self.encoder.max_tokens, "parallel": 1,
                "batched": False, "embeds": True}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.name, "engine": self.encoder.engine_name, "embeds": True,
                "ctx": self.encoder.max_tokens}

    def drain(self, grace: float) -> None:
        """Nothing streams from an encoder: the answer being computed finishes within uvicorn's own grace."""

    def close(self, grace: float = 0) -> None:
        with self.lock:
            self.encoder.close()

    def encode(self, texts: list[str], normalize: bool, truncate: bool = True) -> Embeddings:
        """Vectors for `texts` (run on a worker thread; callers share the encoder through the lock)."""
        if not texts:
            raise ApiError(400, "input: no text to embed", param="input")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input: {len(texts)} texts is more than the {MAX_INPUTS} one request may hold", param="input")
        if any(not isinstance(t, str) or not t for t in texts):
            raise ApiError(400, "input: every text must be a non-empty string", param="input")
        try:
            with self.lock:
                result = self.encoder.encode(texts, normalize=normalize)
        except ModelportError as exc:
            raise ApiError(400, exc.message, param="input") from None
        if not truncate and any(n >= self.encoder.max_tokens for n in result.tokens):
            raise ApiError(400, f"input: a text is longer than the model's {self.encoder.max_tokens} tokens "
                                "(send truncate: true to cut it)", param="input")
        return result


def openai_texts(value: str | list) -> list[str]:
    """OpenAI's `input` as texts; token ids are refused (they would be another tokenizer's ids: tiktoken's)."""
    if isinstance(value, str):
        return [value]
    if value and not all(isinstance(v, str) for v in value):
        raise ApiError(400, "input: token ids are not accepted (they would be ids of another tokenizer): send the text",
                       param="input")
    return list(value)


def openai_response(result: Embeddings, name: str, encoding_format: str, dimensions: int | None) -> dict[str, Any]:
    """OpenAI's embedding list; base64 is the little-endian float32 bytes, as OpenAI's own clients decode it."""
    if dimensions is not None and dimensions != result.dimensions:
        raise ApiError(400, f"dimensions: this model's vectors have {result.dimensions} dimensions, not {dimensions}",
                       param="dimensions")

    def encoded(v: np.ndarray):
        return base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding_format == "base64" else v.tolist()

    used = int(sum(result.tokens))
    return {"object": "list", "model": name,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(result.vectors)],
            "usage": {"prompt_tokens": used, "total_tokens": used}}


def ollama_embed_response(result: Embeddings, name: str, started: float) -> dict[str, Any]:
    return {"model": name, "embeddings": result.vectors.tolist(), "total_duration": int((time.perf_counter() - started) * 1e9),
            "load_duration": 0, "prompt_eval_count": int(sum(result.tokens))}
