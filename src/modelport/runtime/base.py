"""The one small interface every engine offers, and what is shared above it.

An engine only knows how to tokenize, detokenize and run token ids through the model
(`_decode`, with a cache it can cut back with `_truncate`). Everything else lives here, once, so
llama.cpp and transformers behave the same: the generation loop (stop tokens, context limit,
timings), sampling (our own, over the engine's logits, so a seed gives the same tokens whichever
engine produced the logits), prompt-prefix reuse across chat turns, and streaming text that never
splits a UTF-8 character or a word's leading space.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from ..core.errors import UnsupportedError
from .chat_template import ChatTemplate


@dataclass
class Sampling:
    """How to choose the next token. temperature 0 is greedy (argmax).

    Checked when made, so a bad value (from the CLI or any other caller) is one clear error before a model
    is loaded, never a NumPy error in the middle of sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        if not (is_number(self.temperature) and math.isfinite(self.temperature)):
            raise UnsupportedError(f"temperature must be a finite number, not {self.temperature}")
        if self.temperature < 0:
            raise UnsupportedError(f"temperature must be >= 0, not {self.temperature}")
        if not (is_number(self.top_p) and 0 < self.top_p <= 1):
            raise UnsupportedError(f"top-p must be in (0, 1], not {self.top_p}")
        if not (is_integer(self.top_k) and self.top_k >= 0):
            raise UnsupportedError(f"top-k must be >= 0, not {self.top_k}")
        if self.seed is not None and not (is_integer(self.seed) and self.seed >= 0):
            raise UnsupportedError(f"seed must be a whole number >= 0, not {self.seed}")


def cores() -> int:
    """The CPU cores this process may use (the engines' thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_integer(value: Any) -> bool:
    """An int that is not a bool (True is an int to Python, not a count to a person)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_integer(value) or isinstance(value, float)


class Sampler:
    """Temperature, top-k and top-p (nucleus) over a logits vector, with its own seeded generator."""

    def __init__(self, sampling: Sampling):
        self.s = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """A token id. Tokens at -inf (masked by a `Constraint`) are never picked, whatever the settings."""
        s = self.s
        best = int(np.argmax(logits))
        if logits[best] == -np.inf:
            raise UnsupportedError("every token is masked: nothing may be generated here")
        if s.temperature == 0:
            return best
        x = logits.astype(np.float64) / s.temperature
        n = x.shape[0]
        k = min(s.top_k, n) if s.top_k else n
        if k < n:
            keep = np.argpartition(-x, k - 1)[:k]
        else:
            keep = None
        cand = x if keep is None else x[keep]
        p = np.exp(cand - cand.max())
        p /= p.sum()
        if s.top_p < 1.0:
            # The nucleus is usually small: sort a growing top slice instead of the whole vocabulary.
            m = min(64, p.shape[0])
            while True:
                top = np.argpartition(-p, m - 1)[:m] if m < p.shape[0] else np.arange(p.shape[0])
                top = top[np.argsort(-p[top], kind="stable")]
                cum = np.cumsum(p[top])
                if cum[-1] >= s.top_p or m == p.shape[0]:
                    cut = int(np.searchsorted(cum, s.top_p)) + 1
                    top = top[:cut]
                    break
                m = min(m * 16, p.shape[0])
            cum = np.cumsum(p[top])
            choice = top[min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), len(top) - 1)]
        else:
            cum = np.cumsum(p)
            choice = min(int(np.searchsorted(cum, self.rng.random() * cum[-1], side="right")), len(p) - 1)
        return int(choice if keep is None else keep[choice])


class TokenConstraint(Protocol):
    """What `generate` asks of a constraint on the tokens (runtime.structured's JSON grammar is one)."""

    def apply(self, logits: np.ndarray) -> None: ...      # in place: forbidden tokens become -inf
    def accept(self, token: int) -> None: ...             # the token sampled
    def finished(self) -> bool: ...                       # nothing more may follow


class TextStream:
    """Token ids in, printable text out: a token's text is released once it is complete.

    Decodes a short window (the previous piece plus the new tokens) and releases what the new
    tokens added, holding back while the tail is an unfinished UTF-8 sequence.
    """

    def __init__(self, detokenize: Callable[[list[int]], str]):
        self.detokenize = detokenize
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.detokenize(self.ids[self.prefix:self.read])
        after = self.detokenize(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before = self.detokenize(self.ids[self.prefix:self.read])
        after = self.detokenize(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


@dataclass
class Generation:
    """What one `generate` produced, with the figures `run --json` prints."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    stop_reason: str = ""            # "stop" (a stop token), "length" (max tokens), "context" (window full)
    engine: str = ""

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["completion_tokens"] = self.completion_tokens
        d["prompt_tokens_per_second"] = round(self.prompt_tokens / self.prompt_seconds, 2) if self.prompt_seconds else None
        d["generation_tokens_per_second"] = (round(self.completion_tokens / self.generation_seconds, 2)
                                             if self.generation_seconds else None)
        return d


class Engine:
    """Base class: subclasses set the attributes below and implement the four underscore methods."""

    name = "engine"
    n_ctx: int = 0
    n_vocab: int = 0
    add_bos: bool = False            # does the tokenizer add BOS to plain text by default
    bos_id: int | None = None
    stop_ids: frozenset[int] = frozenset()
    template: ChatTemplate | None = None

    def __init__(self):
        self._cached: list[int] = []   # ids whose keys/values sit in the engine's cache
        self._prompts: dict[tuple[int, ...], np.ndarray] = {}   # recent prompts' last logits, see prefill

    # --- what an engine implements -------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Ids for `text`; special tokens written in the text become their ids; BOS only with add_special."""
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> str:
        """Text for `ids`, control tokens left out."""
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Token strings by id (to tell whether two tokenizers are the same)."""
        raise NotImplementedError

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        """Run `ids` after the cached ones; logits of the last position (1-D) or of all (2-D)."""
        raise NotImplementedError

    def _truncate(self, n: int) -> int:
        """Keep only the first `n` cached positions; returns how many it could keep (0 after a full reset)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # --- shared -----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            raise UnsupportedError("this model has no chat template; use --raw to send the prompt as plain text")
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt ids for a conversation: the rendered template, tokenized without added specials."""
        return self.tokenize(self.render(messages), add_special=False)

    def _check_ids(self, ids: list[int]) -> None:
        if not ids:
            raise UnsupportedError("the prompt is empty (no tokens)")
        if len(ids) > self.n_ctx:
            raise UnsupportedError(f"{len(ids)} tokens do not fit the context of {self.n_ctx} (use --ctx)")
        bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise UnsupportedError(f"token id {bad} is outside the vocabulary of {self.n_vocab}")

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Last-position logits after `ids`, reusing the cache for a shared prefix (chat turns).

        A prompt seen before whose positions are still cached gets the logits it got then: running
        its last token alone would round differently from the batch that first ran it (llama.cpp
        and torch pick kernels by batch size), and the same seed must give the same answer.
        """
        self._check_ids(ids)
        key = tuple(ids)
        if key in self._prompts and self._cached[:len(ids)] == ids and self._keep(len(ids)) == len(ids):
            self._cached = list(ids)
            return self._prompts[key].copy()
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        common = self._keep(min(common, len(ids) - 1))   # at least one token must run to get logits
        logits = self._decode(ids[common:], all_logits=False)
        self._cached = list(ids)
        self._prompts[key] = logits.copy()
        while len(self._prompts) > 4:
            self._prompts.pop(next(iter(self._prompts)))
        return logits

    def _keep(self, n: int) -> int:
        """Cut the cache back to `n` positions (fewer if the engine cannot); forget prompts that lost theirs."""
        kept = self._truncate(n)
        self._cached = self._cached[:kept]
        self._prompts = {k: v for k, v in self._prompts.items() if len(k) <= kept}
        return kept

    def step(self, token: int) -> np.ndarray:
        logits = self._decode([token], all_logits=False)
        self._cached.append(token)
        return logits

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids`, from an empty cache: shape (len(ids), n_vocab), float32."""
        self._check_ids(ids)
        self._keep(0)
        out = self._decode(list(ids), all_logits=True)
        self._cached = list(ids)
        return np.asarray(out, dtype=np.float32)

    def generate(self, ids: list[int], max_tokens: int = 256, sampling: Sampling | None = None,
                 stop_ids: set[int] | None = None, ignore_eos: bool = False,
                 result: Generation | None = None, constraint: TokenConstraint | None = None) -> Iterator[int]:
        """Yield new token ids as they come; fills `result` (timings, stop reason) as it goes.

        `constraint` (runtime.structured) masks the logits before each token is sampled and is told each
        token after; the answer ends ("stop") once it is finished (the JSON is complete)."""
        result = result if result is not None else Generation()
        result.engine, result.prompt_tokens = self.name, len(ids)
        sampler = Sampler(sampling or Sampling())
        stops = set(stop_ids or ()) | (set() if ignore_eos else set(self.stop_ids))
        start = time.perf_counter()
        logits = self.prefill(ids)
        prompt_done = time.perf_counter()
        result.prompt_seconds = prompt_done - start
        result.stop_reason = "length"
        try:
            for i in range(max_tokens):
                if constraint is not None:
                    constraint.apply(logits)
                token = sampler(logits)
                if token in stops:
                    result.stop_reason = "stop"
                    break
                result.tokens.append(token)
                result.generation_seconds = time.perf_counter() - prompt_done
                if constraint is not None:
                    constraint.accept(token)
                    if constraint.finished():
                        result.stop_reason = "stop"
                        yield token
                        break
                yield token
                if i + 1 == max_tokens:
                    break
                if len(self._cached) >= self.n_ctx:
                    result.stop_reason = "context"
                    break
                logits = self.step(token)
        finally:
            result.generation_seconds = time.perf_counter() - prompt_done

    def complete(self, ids: list[int], **kwargs) -> Generation:
        """Run `generate` to the end; the full result (text unstreamed: see `conversation.stream_answer`)."""
        result = Generation()
        for _ in self.generate(ids, result=result, **kwargs):
            pass
        result.text = self.detokenize(result.tokens)
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
