"""Ollama's request and response shapes: /api/chat, /api/generate (NDJSON streams by default), /api/tags,
/api/show, /api/version.

Ollama's defaults differ from OpenAI's and are kept: streaming unless `stream: false`, temperature 0.8,
top_p 0.9, top_k 40, `num_predict` -1 (until the context is full). Durations are nanoseconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .scheduler import Ticket

DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "top_k": 40}


class Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Options(Request):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    num_predict: int | None = None
    stop: list[str] | None = None


class Message(Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Any] | None = None


class Generating(Request):
    model: str = Field(min_length=1)
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: float | int | str | None = None


class ChatRequest(Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Any] | None = None


class GenerateRequest(Generating):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[Any] | None = None
    template: str | None = None
    context: list[int] | None = None


class ShowRequest(Request):
    model: str | None = None
    name: str | None = None


def created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def stats(ticket: Ticket, started: float) -> dict[str, Any]:
    """Ollama's closing figures, in nanoseconds."""
    r = ticket.job.result
    return {"total_duration": int((time.perf_counter() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": len(ticket.job.ids), "prompt_eval_duration": int(r.prompt_seconds * 1e9),
            "eval_count": len(r.tokens), "eval_duration": int(r.generation_seconds * 1e9)}


def chat_piece(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "created_at": created_at(), "message": {"role": "assistant", "content": text}, "done": False}


def generate_piece(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "created_at": created_at(), "response": text, "done": False}


def chat_done(model: str, text: str, ticket: Ticket, started: float) -> dict[str, Any]:
    return {"model": model, "created_at": created_at(), "message": {"role": "assistant", "content": text}, "done": True,
            "done_reason": ticket.finish_reason, **stats(ticket, started)}


def generate_done(model: str, text: str, ticket: Ticket, started: float) -> dict[str, Any]:
    return {"model": model, "created_at": created_at(), "response": text, "done": True, "done_reason": ticket.finish_reason,
            **stats(ticket, started)}


def details(info: dict[str, Any]) -> dict[str, Any]:
    return {"parent_model": "", "format": info["format"], "family": info["family"], "families": [info["family"]],
            "parameter_size": info["parameter_size"], "quantization_level": info["quantization"]}


def tags(info: dict[str, Any]) -> dict[str, Any]:
    return {"models": [{"name": info["name"], "model": info["name"], "modified_at": info["modified_at"], "size": info["size"],
                        "digest": info["digest"], "details": details(info)}]}


def show(info: dict[str, Any]) -> dict[str, Any]:
    return {"modelfile": f"FROM {info['path']}\n", "parameters": "", "template": info["template"] or "",
            "details": details(info), "model_info": info["model_info"], "capabilities": ["completion"],
            "modified_at": info["modified_at"]}
