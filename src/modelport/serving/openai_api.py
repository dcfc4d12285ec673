"""OpenAI's request and response shapes: /v1/chat/completions, /v1/completions, /v1/models, errors.

Requests are pydantic models, strict about types (a string where a number goes is a 400, as OpenAI
answers) and tolerant of fields this server does not use (clients send many). What the server cannot
honour (n > 1, tools, logprobs, images) is refused with a message, never ignored in silence.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .scheduler import Ticket


class ApiError(Exception):
    """An error the client caused (or may retry): becomes `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(Request):
    type: str
    text: str | None = None


class Message(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"content parts of type {part.type!r} are not supported: this server takes text",
                               param="messages")
        return "".join(part.text for part in self.content)


class StreamOptions(Request):
    include_usage: bool = False


class JsonSchema(Request):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class Sampled(Request):
    """What both completion endpoints share: sampling, length, stop strings, streaming."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = None
    seed: int | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _supported(self):
        if self.n not in (None, 1):
            raise ValueError("n: only n=1 is supported (one answer per request)")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs: not supported by this server")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 stop sequences")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _no_tools(self):
        if self.tools:
            raise ValueError("tools: tool calls are not supported by this server")
        return self

    def length(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat template takes them (a developer message is a system message to a local model)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Sampled):
    prompt: str | list[str] | list[int]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ValueError("prompt: one prompt per request (a list of one string, or token ids)")
        if self.echo:
            raise ValueError("echo: not supported by this server")
        if self.suffix:
            raise ValueError("suffix: not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of: only 1 is supported")
        return self

    def length(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# ------------------------------------------------------------------------------------------ responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def model_list(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, created)]}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "modelport"}


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def completion_chunk(rid: str, model: str, created: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, model: str, created: int, ticket: Ticket, obj: str) -> dict[str, Any]:
    """The last chunk when `stream_options.include_usage`: no choices, the usage, and llama.cpp-style timings."""
    return {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": None, "choices": [],
            "usage": ticket.usage(), "timings": ticket.timings()}


def chat_response(rid: str, model: str, created: int, ticket: Ticket) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ticket.text, "refusal": None},
                         "logprobs": None, "finish_reason": ticket.finish_reason}],
            "usage": ticket.usage(), "timings": ticket.timings()}


def completion_response(rid: str, model: str, created: int, ticket: Ticket) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "text": ticket.text, "logprobs": None, "finish_reason": ticket.finish_reason}],
            "usage": ticket.usage(), "timings": ticket.timings()}


def now() -> int:
    return int(time.time())
