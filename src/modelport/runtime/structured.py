"""Structured output: an answer that is JSON and follows a JSON schema, enforced while it is generated.

A `Constraint` masks the logits before modelport's own sampler picks a token: every token the grammar
forbids at this point gets -inf, so whichever engine produced the logits (llama.cpp, transformers) and
whatever the temperature, the text can only be a prefix of valid JSON, and end-of-turn is allowed only
once the JSON is complete. The grammar and the mask come from llguidance (Rust, no torch): it compiles
the schema and walks a trie of the engine's vocabulary (token bytes) for each mask, about a third of a
millisecond per token on a 49k vocabulary. The vocabulary is built once per engine and kept while the
engine lives.

    constraint = json_constraint(engine, schema)        # schema None: any JSON object
    for token in engine.generate(ids, constraint=constraint): ...
"""

from __future__ import annotations

import json
import threading
import warnings
import weakref
from typing import Any

import numpy as np

from ..core.errors import MissingDependencyError, UnsupportedError
from .base import Engine
from .llama_engine import LlamaEngine

#: Whitespace allowed between JSON tokens: what pretty-printed JSON needs (a newline or two and the indent),
#: but bounded, so a model cannot loop on blanks until max_tokens runs out (llama.cpp's JSON grammars
#: bound it the same way).
WHITESPACE = r"[ \t]{0,20}|\r?\n(\r?\n)?[ \t]{0,20}"

#: What "any JSON object" means (OpenAI's response_format {"type": "json_object"}).
ANY_OBJECT: dict[str, Any] = {"type": "object"}

_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # engine -> its llguidance tokenizer
_tokenizers_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise MissingDependencyError("llguidance", "serve", "structured output (--json-schema, response_format)") from None
    return llguidance


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        raise MissingDependencyError("jsonschema", "serve", "checking JSON against a schema") from None
    return jsonschema


class Constraint:
    """A grammar over one engine's tokens, advanced token by token: one per answer (it keeps state).

    `apply(logits)` sets the forbidden tokens to -inf in place, `accept(token)` moves the grammar past
    the sampled token, `finished()` says the JSON is complete (nothing more may follow)."""

    def __init__(self, matcher, schema: dict[str, Any]):
        self.matcher = matcher
        self.schema = schema          # what the answer must validate against (check_json after)

    def apply(self, logits: np.ndarray) -> None:
        allowed = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        self._check()
        n = min(logits.shape[-1], allowed.shape[0])
        logits[..., :n][..., allowed[:n] == 0] = -np.inf
        logits[..., n:] = -np.inf       # ids past the tokenizer's vocabulary (padded output layers) never fit

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise UnsupportedError(f"structured output: token {token} does not fit the JSON schema "
                                   f"({self.matcher.get_error() or 'not allowed here'})")

    def finished(self) -> bool:
        return self.matcher.is_stopped()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise UnsupportedError(f"structured output failed: {self.matcher.get_error()}")


def check_schema(schema: Any) -> dict[str, Any]:
    """`schema` as a JSON schema modelport can enforce, or one-line UnsupportedError saying why not.

    Checked against its JSON Schema draft's meta-schema (jsonschema) and compiled by llguidance, without
    any model, so a request with a bad schema is refused before a token is generated."""
    if not isinstance(schema, dict):
        raise UnsupportedError(f"a JSON schema is a JSON object, not {type(schema).__name__}")
    jsonschema = _jsonschema()
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise UnsupportedError(f"invalid JSON schema{f' at {where}' if where else ''}: "
                               f"{one_line(exc.message)}") from None
    grammar(schema)
    return schema


def grammar(schema: dict[str, Any]) -> str:
    """The llguidance grammar for `schema` (JSON with bounded whitespace); UnsupportedError if it cannot be built."""
    llg = _llguidance()
    try:
        text = llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": WHITESPACE})
    except (ValueError, TypeError) as exc:
        raise UnsupportedError(f"cannot enforce this JSON schema: {one_line(str(exc))}") from None
    problem = llg.LLMatcher.validate_grammar(text)
    if problem and not problem.startswith("WARNING"):
        raise UnsupportedError(f"cannot enforce this JSON schema: {one_line(problem)}")
    return text


def json_constraint(engine: Engine, schema: dict[str, Any] | None) -> Constraint:
    """A fresh constraint making `engine`'s next answer JSON that validates against `schema` (None: any
    JSON object, as OpenAI's `json_object` response format). A bad schema raises one-line UnsupportedError."""
    schema = ANY_OBJECT if schema is None else check_schema(schema)
    llg = _llguidance()
    matcher = llg.LLMatcher(tokenizer_for(engine), grammar(schema), log_level=0)
    if matcher.is_error():
        raise UnsupportedError(f"cannot enforce this JSON schema: {one_line(matcher.get_error())}")
    return Constraint(matcher, schema)


def tokenizer_for(engine: Engine):
    """The engine's vocabulary as llguidance sees it (token bytes, specials marked), built once per engine
    (about a second for a 49k vocabulary). The engine's end-of-turn ids are the grammar's end tokens."""
    with _tokenizers_lock:
        tok = _tokenizers.get(engine)
        if tok is None:
            tok = _tokenizers[engine] = _build_tokenizer(engine)
        return tok


def _build_tokenizer(engine: Engine):
    eos = sorted(engine.stop_ids) or None
    if isinstance(engine, LlamaEngine):
        import llama_cpp
        _llguidance()
        from llguidance.llamacpp import lltokenizer_from_vocab

        vocab = llama_cpp.llama_model_get_vocab(engine.llm.model)
        with warnings.catch_warnings():      # it asks each token's attributes by a name llama-cpp-python deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(vocab, n_vocab=engine.n_vocab, eos_token=eos)
    hf_tokenizer = getattr(engine, "tokenizer", None)
    if hf_tokenizer is not None and getattr(hf_tokenizer, "is_fast", False):
        _llguidance()
        from llguidance.hf import from_tokenizer

        try:
            return from_tokenizer(hf_tokenizer, n_vocab=engine.n_vocab, eos_token=eos)
        except ValueError as exc:
            raise UnsupportedError(f"structured output cannot use this tokenizer ({one_line(str(exc))})") from None
    raise UnsupportedError(f"structured output needs the token bytes of the vocabulary, which the {engine.name} "
                           "engine does not give (a llama.cpp GGUF or a fast Hugging Face tokenizer does)")


def check_json(text: str, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """(the parsed value, None) when `text` is JSON that validates against `schema` (None: any object),
    else (None, the first problem in one line): the oracle an answer is checked with after generation."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    jsonschema = _jsonschema()
    try:
        jsonschema.validate(value, ANY_OBJECT if schema is None else schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return None, f"does not follow the schema{f' at {where}' if where else ''}: {one_line(exc.message)}"
    return value, None


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
