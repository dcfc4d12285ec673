"""Several generations on one engine at once: the server's slots.

A `Job` is one prompt (token ids) to answer; a `Batcher` holds up to `parallel` of them and `step()`
advances them a tick at a time, so one worker thread can serve many clients. Each job samples with its own
`Sampler` (its own seed), its own stop ids and its own constraint, exactly as `Engine.generate` does, so a
job's tokens do not depend on what runs beside it.

Two ways, chosen by the engine:
- batched (llama.cpp, `LlamaEngine.open_sequences`): every slot is a sequence of one multi-sequence context; a
  tick is one `llama_decode` holding one token per active job: the weights are read once for all rows. What that
  gains depends on the kernel: on a GPU, or on a CPU with weights memory-bound, nearly N×; on the 2-core test
  machine SmolLM2's Q4_1 matmuls are compute-bound (1 row 13.3 ms a token, 4 rows 39.8 ms), and llama.cpp's own
  llama-batched-bench tops out at 1.13-1.18x generated tokens/s for 2-4 sequences. A new prompt is prefilled in
  chunks of n_batch tokens, one chunk per tick in a decode of its own, so a long prompt delays the others by one
  chunk at a time. (In the same decode as the others' tokens would gain little: with one KV stream per sequence
  llama.cpp splits a batch into equal-length parts per sequence anyway.) A freed slot keeps its cache: the next
  prompt goes to the free slot holding its longest start (a system prompt, a conversation's earlier turns) and
  only the rest runs, as llama.cpp's server does (`Job.cached_tokens`).
- serialized (every other engine: transformers, onnxruntime): `parallel` slots are accepted, but jobs run
  one after another, each to its end, through the engine's own `prefill`/`step`; the others wait in their
  slot. Correct and simple; `batched` is False so the server can say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import UnsupportedError
from .base import Engine, Generation, Sampler, Sampling, TokenConstraint, is_integer
from .conversation import ContextFullError


class PromptTooLongError(ContextFullError):
    """A job's prompt does not fit one slot's context (a server answers 413)."""

    def __init__(self, tokens: int, n_ctx: int):
        super().__init__(tokens, n_ctx)
        self.message = f"the prompt ({tokens} tokens) does not fit the context of {n_ctx} tokens"
        self.args = (self.message,)


@dataclass(eq=False)
class Job:
    """One prompt to answer; `result` fills as it goes (tokens, stop_reason, prompt_tokens, timings)."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop_ids: set[int] | None = None      # extra stop tokens; the engine's end-of-generation ids apply unless ignore_eos
    ignore_eos: bool = False
    constraint: TokenConstraint | None = None
    result: Generation = field(default_factory=Generation)
    done: bool = False
    cached_tokens: int = 0                # prompt tokens found in the slot's cache, not run again (OpenAI's
                                          # usage.prompt_tokens_details.cached_tokens)
    error: Exception | None = None        # why it ended with stop_reason "error" (its constraint or sampler failed)


class _Slot:
    """A job's state while it holds a slot: where its prompt is, its sampler, the token waiting to be run."""

    def __init__(self, job: Job, seq: int, stops: set[int]):
        self.job = job
        self.seq = seq                    # its sequence id in the multi-sequence context
        self.sampler = Sampler(job.sampling)
        self.stops = stops
        self.prefilled = 0                # prompt tokens in the cache
        self.fed = 0                      # generated tokens run through the model (all but `pending`)
        self.pending: int | None = None   # sampled, yielded, not yet run through the model
        self.logits: np.ndarray | None = None
        self.cancelled = False
        self.started = 0.0                # when its prompt started to run
        self.prompt_done = 0.0

    @property
    def cached(self) -> int:
        """Positions in this job's cache now (the next token runs at this position)."""
        return self.prefilled + self.fed

    def held(self) -> list[int]:
        """The ids whose keys and values sit in the cache."""
        return (self.job.ids + self.job.result.tokens)[:self.cached]


class Batcher:
    """Runs up to `parallel` jobs together on one engine. NOT thread-safe: one worker thread owns it.

    `batched` is True when one decode advances every active job (llama.cpp's multi-sequence batches), False
    when the engine serializes (transformers, onnxruntime): jobs then run one after another, each to its end,
    while the others wait in their slots. Either way the tokens a job gets are the ones `Engine.generate`
    gives for the same prompt, sampling and seed.
    """

    def __init__(self, engine: Engine, parallel: int = 1):
        if not (is_integer(parallel) and parallel >= 1):
            raise UnsupportedError(f"--parallel must be at least 1, not {parallel}")
        self.engine = engine
        self.parallel = parallel
        open_sequences = getattr(engine, "open_sequences", None)
        self._sequences: Any = open_sequences(parallel) if open_sequences is not None else None
        self.batched = self._sequences is not None
        self.n_ctx = self._sequences.n_ctx if self.batched else engine.n_ctx    # per slot
        self._slots: list[_Slot] = []     # in the order they came (the serialized path runs the first)
        self._free_seqs = list(range(parallel))
        self._held: dict[int, list[int]] = {}      # what each free sequence still holds, for the next prompt
        self._prompt_logits: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}   # its last prompt's logits

    # --- what the server calls -------------------------------------------------------------------
    def free(self) -> int:
        """Slots free now (a cancelled job keeps its slot until the next step)."""
        return self.parallel - len(self._slots)

    def active(self) -> int:
        """Jobs holding a slot (running, waiting for their turn, or cancelled and not yet collected)."""
        return len(self._slots)

    def add(self, job: Job) -> None:
        """Take a slot for `job`; a prompt that cannot run (empty, over one slot's context, an unknown id, no
        free slot) raises a one-line error first, and no slot is taken."""
        ids = job.ids
        if not ids:
            raise UnsupportedError("the prompt is empty (no tokens)")
        if len(ids) > self.n_ctx:
            raise PromptTooLongError(len(ids), self.n_ctx)
        bad = next((i for i in ids if not (is_integer(i) and 0 <= i < self.engine.n_vocab)), None)
        if bad is not None:
            raise UnsupportedError(f"token id {bad} is outside the vocabulary of {self.engine.n_vocab}")
        if not (is_integer(job.max_tokens) and job.max_tokens >= 1):
            raise UnsupportedError(f"max_tokens must be at least 1, not {job.max_tokens}")
        if not self._free_seqs:
            raise UnsupportedError(f"all {self.parallel} slots are busy")
        if any(slot.job is job for slot in self._slots):
            raise UnsupportedError("this job is already running")
        stops = set(job.stop_ids or ()) | (set() if job.ignore_eos else set(self.engine.stop_ids))
        job.result.engine, job.result.prompt_tokens = self.engine.name, len(ids)
        job.done, job.cached_tokens, job.error = False, 0, None
        # the free sequence that already holds the longest start of this prompt (a system prompt, earlier turns)
        seq = max(self._free_seqs, key=lambda s: shared_prefix(self._held.get(s, []), ids))
        self._free_seqs.remove(seq)
        self._slots.append(_Slot(job, seq, stops))

    def cancel(self, job: Job) -> None:
        """The client is gone: the job ends with stop_reason "cancelled" and its slot is freed at the next step."""
        for slot in self._slots:
            if slot.job is job:
                slot.cancelled = True

    def step(self) -> list[tuple[Job, int | None]]:
        """One tick: (job, token) for each new token, then (job, None) for each job that ended this tick
        (result.stop_reason "stop", "length", "context" or "cancelled").

        A job whose own sampling fails (its constraint raises, or masks every token) ends alone with
        stop_reason "error" and `job.error` set; its neighbours go on. Should the engine itself fail (llama.cpp
        refusing a batch), every job ends with "error", all slots are free, and the exception propagates."""
        events: list[tuple[Job, int | None]] = []
        for slot in [s for s in self._slots if s.cancelled]:
            self._finish(slot, "cancelled", events)
        try:
            if self.batched:
                self._tick_batched()
            else:
                self._tick_serialized()
        except BaseException:
            for slot in list(self._slots):
                self._finish(slot, "error", events)
            self._held.clear()               # what the cache holds is unknown now: every prompt starts afresh
            self._prompt_logits.clear()
            raise
        for slot in [s for s in self._slots if s.logits is not None]:
            try:
                self._sample(slot, events)
            except Exception as exc:          # this job's constraint or sampler: the others are not concerned
                slot.job.error = exc
                slot.pending = None
                self._finish(slot, "error", events)
        return events

    def close(self) -> None:
        """Free the multi-sequence context (the engine also frees it when it closes)."""
        if self._sequences is not None:
            self._sequences.close()

    # --- the two ways to get logits ------------------------------------------------------------
    def _tick_batched(self) -> None:
        seqs = self._sequences
        running = [s for s in self._slots if s.pending is not None]
        if running:
            rows = [(s.seq, s.pending, s.cached) for s in running]
            logits = seqs.decode(rows)
            for slot, row in zip(running, logits):
                slot.logits, slot.pending = row, None
                slot.fed += 1
        for slot in [s for s in self._slots if s.prefilled < len(s.job.ids)]:
            if not slot.started:
                slot.started = time.perf_counter()
                if self._reuse(slot):
                    continue
            ids = slot.job.ids
            chunk = ids[slot.prefilled:slot.prefilled + seqs.n_batch]
            logits = seqs.prefill(slot.seq, chunk, slot.prefilled)
            slot.prefilled += len(chunk)
            if slot.prefilled == len(ids):
                slot.logits = logits
                self._prompt_logits[slot.seq] = (tuple(ids), logits.copy())
                self._prompt_done(slot)

    def _reuse(self, slot: _Slot) -> bool:
        """Keep what the slot's sequence already holds of this prompt (as `Engine.prefill` does across chat
        turns); True when the whole prompt was there, its logits the ones it got then (running its last token
        alone would round differently, and the same seed must give the same answer)."""
        ids, seqs = slot.job.ids, self._sequences
        common = shared_prefix(self._held.pop(slot.seq, []), ids)
        saved = self._prompt_logits.get(slot.seq)
        if common == len(ids) and saved is not None and saved[0] == tuple(ids):
            if seqs.keep(slot.seq, common) == common:
                slot.prefilled = slot.job.cached_tokens = common
                slot.logits = saved[1].copy()
                self._prompt_done(slot)
                return True
        slot.prefilled = slot.job.cached_tokens = seqs.keep(slot.seq, min(common, len(ids) - 1))   # one must run
        return False

    def _tick_serialized(self) -> None:
        if not self._slots:
            return
        slot = self._slots[0]            # the first job runs to its end; the others wait
        if slot.pending is not None:
            slot.logits, slot.pending = self.engine.step(slot.pending), None
            slot.fed += 1
        elif not slot.prefilled:
            slot.started = time.perf_counter()
            slot.logits = self.engine.prefill(slot.job.ids)
            slot.prefilled = len(slot.job.ids)
            self._prompt_done(slot)

    # --- per job, the same for both --------------------------------------------------------------
    @staticmethod
    def _prompt_done(slot: _Slot) -> None:
        slot.prompt_done = time.perf_counter()
        slot.job.result.prompt_seconds = slot.prompt_done - slot.started

    def _sample(self, slot: _Slot, events: list) -> None:
        """Pick the next token from `slot.logits` as `Engine.generate` does: mask, sample, stop or go on."""
        job, result = slot.job, slot.job.result
        logits, slot.logits = slot.logits, None
        if job.constraint is not None:
            job.constraint.apply(logits)
        token = slot.sampler(logits)
        if token in slot.stops:
            return self._finish(slot, "stop", events)
        result.tokens.append(token)
        result.generation_seconds = time.perf_counter() - slot.prompt_done
        events.append((job, token))
        if job.constraint is not None:
            job.constraint.accept(token)
            if job.constraint.finished():
                return self._finish(slot, "stop", events)
        if len(result.tokens) >= job.max_tokens:
            return self._finish(slot, "length", events)
        if slot.cached >= self.n_ctx:           # no room for this token's keys and values
            return self._finish(slot, "context", events)
        slot.pending = token

    def _finish(self, slot: _Slot, reason: str, events: list) -> None:
        job = slot.job
        job.result.stop_reason = reason
        if slot.prompt_done:
            job.result.generation_seconds = time.perf_counter() - slot.prompt_done
        job.done = True
        self._slots.remove(slot)
        if self.batched:
            self._held[slot.seq] = slot.held()      # kept in the cache for a prompt that starts the same way
        self._free_seqs.append(slot.seq)
        events.append((job, None))


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many ids `a` and `b` share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
