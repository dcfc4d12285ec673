"""A chat as the runtime keeps it, and the one way an answer is generated, streamed and cut at stop strings.

`chat` and `run` drive this, and an HTTP server can drive it the same way: nothing here touches a
terminal. Text goes to an `on_text` callback piece by piece as soon as it is safe to show: while the
text ends with what may be the start of a stop string, that part is held back, so nothing shown is
ever taken back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..core.errors import UnsupportedError
from .base import Engine, Generation, Sampling, TextStream, TokenConstraint, is_integer

OnText = Callable[[str], None]
Cancel = Callable[[], bool]      # asked after each token: True ends the answer there (a UI's Ctrl-C, a closed socket)


@dataclass
class GenerationSettings:
    """What one answer may do: how long it may grow, how tokens are picked, and what ends it.

    Checked when made (as `Sampling` is), so a bad value is refused before any model is loaded."""

    max_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()       # the answer ends where one of these first appears (not part of it)
    ignore_eos: bool = False         # go on past end-of-turn tokens (benchmarks)

    def __post_init__(self):
        if not (is_integer(self.max_tokens) and self.max_tokens >= 1):
            raise UnsupportedError(f"--max-tokens must be at least 1, not {self.max_tokens}")
        self.stop = tuple(s for s in self.stop if s)      # an empty stop string would end every answer at once


class ContextFullError(UnsupportedError):
    """The conversation, with the new message, no longer fits the engine's context window."""

    def __init__(self, tokens: int, n_ctx: int):
        super().__init__(f"the conversation ({tokens} tokens) fills the context of {n_ctx}; /reset to start over")
        self.tokens = tokens
        self.n_ctx = n_ctx


class StopText:
    """Text that ends at the first stop string: `feed` returns what is safe to show (never the start of a stop
    string that may still complete), `hit` says one appeared, `text` is the answer so far without it."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = list(stops)
        self.text = ""               # everything received, up to a stop string once one is found
        self.shown = 0
        self.hit = False

    def feed(self, piece: str) -> str:
        if not self.stops or self.hit:
            return piece
        self.text += piece
        start = max(0, self.shown - max(map(len, self.stops)) + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            self.text = self.text[:min(found)]
            return self.show(len(self.text))
        held = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
        return self.show(len(self.text) - held)

    def release(self) -> str:
        """At the end: what was held back was not a stop string after all."""
        return self.show(len(self.text)) if self.stops else ""

    def show(self, upto: int) -> str:
        """The text not shown yet, up to `upto`; marks it shown."""
        piece = self.text[self.shown:upto]
        self.shown = max(self.shown, upto)
        return piece


def stream_answer(engine: Engine, ids: list[int], settings: GenerationSettings,
                  on_text: OnText | None = None, cancel: Cancel | None = None,
                  constraint: TokenConstraint | None = None) -> Generation:
    """Generate the answer to the prompt `ids`, streaming its text to `on_text`; the full result.

    It ends at a stop token, a stop string (`result.stop_reason` "stop" for both), `max_tokens`
    ("length"), a full context ("context") or when `cancel()` says so ("cancelled": the text so far).
    `constraint` (runtime.structured) limits the answer to what a grammar allows; "stop" once it is complete."""
    result = Generation()
    stream = TextStream(engine.detokenize)
    cut = StopText(settings.stop)
    cancelled = False

    def emit(piece: str) -> None:
        if piece and on_text:
            on_text(piece)

    for token in engine.generate(ids, max_tokens=settings.max_tokens, sampling=settings.sampling,
                                 ignore_eos=settings.ignore_eos, result=result, constraint=constraint):
        emit(cut.feed(stream.push(token)))
        if cut.hit:
            break
        if cancel is not None and cancel():
            cancelled = True
            break
    if not cut.hit:
        emit(cut.feed(stream.flush()) + cut.release())
    if cut.hit:
        result.stop_reason = "stop"
    elif cancelled:
        result.stop_reason = "cancelled"
    result.text = cut.text if cut.stops else engine.detokenize(result.tokens)
    return result


class Conversation:
    """One chat with an engine: the system prompt, the turns so far, and how each answer is made.

    Each `send` renders the whole conversation with the model's chat template; the engine reuses the
    cached prefix, so earlier turns are not recomputed. A turn that does not fit the context raises
    `ContextFullError` and leaves the conversation as it was."""

    def __init__(self, engine: Engine, settings: GenerationSettings | None = None, system: str | None = None,
                 on_text: OnText | None = None):
        self.engine = engine
        self.settings = settings or GenerationSettings()
        self.system = system or None     # an empty system prompt is none: the template's own default applies
        self.on_text = on_text
        self.history: list[dict[str, str]] = []     # user and assistant turns, in order

    def messages(self, user_text: str | None = None) -> list[dict[str, str]]:
        """What the template renders: the system prompt (when set), the turns so far, then `user_text`."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += self.history
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    def send(self, text: str, cancel: Cancel | None = None) -> Generation:
        """Answer `text` as the next user turn (streamed to `on_text`) and remember both turns; an answer
        cut short by `cancel` is remembered as far as it went (what the user saw)."""
        ids = self.engine.chat_ids(self.messages(text))
        room = self.engine.n_ctx - len(ids)
        if room < 1:
            raise ContextFullError(len(ids), self.engine.n_ctx)
        settings = replace(self.settings, max_tokens=min(self.settings.max_tokens, room))
        result = stream_answer(self.engine, ids, settings, self.on_text, cancel)
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
        return result

    def reset(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.history.clear()

    def set_system(self, system: str | None) -> None:
        """A new system prompt starts the conversation over (earlier answers were made under the old one)."""
        self.system = system or None
        self.reset()
