"""The one worker thread that owns the engine, and the bridge between it and the event loop.

An engine (and the Batcher over it) is not thread-safe, and decoding blocks: so one thread runs every
decode step, and HTTP handlers only hand it work and read what comes back. A request waits in a
bounded queue (`queue`), runs in one of the Batcher's `parallel` slots, and its tokens come back as
text events on an asyncio queue, already cut at stop strings. Beyond `parallel + queue` requests the
scheduler refuses at once (`Busy`: the server answers 503 with Retry-After) rather than let clients
wait without bound. A cancelled ticket (its client went away) leaves the queue or frees its slot at
the next step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..core.errors import ModelportError
from ..runtime import Engine, TextStream
from ..runtime.batching import Batcher, Job
from ..runtime.conversation import StopText


class Busy(Exception):
    """Every slot and every place in the queue is taken (or the server is stopping): try again later."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Event:
    kind: str                       # "admitted" (in a slot), "text", "done", "error"
    text: str = ""
    error: Exception | None = None


#: Batcher stop reasons as API finish reasons: a full context is a length limit to a client.
FINISH = {"stop": "stop", "length": "length", "context": "length", "cancelled": "cancelled"}


class Ticket:
    """One request's generation as the server follows it: the job, its stop strings, and the events for the
    handler (made in the event loop's thread; the worker puts events through `call_soon_threadsafe`)."""

    def __init__(self, job: Job, stop: tuple[str, ...] | list[str] = ()):
        self.job = job
        self.cut = StopText(tuple(s for s in stop if s))
        self.stream: TextStream | None = None
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.finish_reason: str | None = None
        self.submitted = time.perf_counter()
        self.first_token: float | None = None
        self.cancelled = False
        self.aborted = False          # ended by the server (shutdown): an error event was sent
        self.parts: list[str] = []

    def put(self, event: Event) -> None:
        if event.kind == "text":
            self.parts.append(event.text)
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:    # the event loop is closed: nobody is listening any more
            pass

    @property
    def text(self) -> str:
        """The answer so far, as sent."""
        return "".join(self.parts)

    def usage(self) -> dict[str, int]:
        r = self.job.result
        return {"prompt_tokens": len(self.job.ids), "completion_tokens": len(r.tokens),
                "total_tokens": len(self.job.ids) + len(r.tokens),
                "prompt_tokens_details": {"cached_tokens": self.job.cached_tokens}}   # reused from the slot's cache

    def timings(self) -> dict[str, float | None]:
        """llama.cpp server's figures: prompt time, generation time and its speed (tokens/s)."""
        r = self.job.result
        n = len(r.tokens)
        return {"prompt_n": len(self.job.ids), "prompt_ms": round(r.prompt_seconds * 1000, 2), "predicted_n": n,
                "predicted_ms": round(r.generation_seconds * 1000, 2),
                "predicted_per_second": round(n / r.generation_seconds, 2) if r.generation_seconds > 0 and n else None}


class Scheduler:
    """Owns the engine's Batcher in one worker thread; `submit`, `cancel` and `close` are safe from any thread."""

    def __init__(self, engine: Engine, parallel: int = 1, queue: int = 16):
        self.engine = engine
        self.batcher = Batcher(engine, parallel)
        self.parallel = parallel
        self.n_ctx = self.batcher.n_ctx          # one slot's context
        self.queue = queue
        self.tokenizer_lock = threading.Lock()      # handlers tokenize while the worker detokenizes
        self.cond = threading.Condition()
        self.waiting: deque[Ticket] = deque()
        self.running: dict[int, Ticket] = {}
        self.cancels: list[Ticket] = []
        self.accepting = True
        self.deadline: float | None = None        # set by drain(): answers still running then are ended
        self.stopping = False
        self.thread = threading.Thread(target=self.run, name="modelport-scheduler", daemon=True)
        self.thread.start()

    # --- from the handlers -------------------------------------------------------------------------
    def submit(self, ticket: Ticket) -> None:
        with self.cond:
            if not self.accepting:
                raise Busy("the server is shutting down", retry_after=5)
            if len(self.waiting) + len(self.running) >= self.parallel + self.queue:
                raise Busy(f"the server is busy: {self.parallel} requests running and {self.queue} waiting; retry later")
            self.waiting.append(ticket)
            self.cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """The client is gone: drop the ticket from the queue or end its job at the next step."""
        with self.cond:
            if not ticket.cancelled:
                ticket.cancelled = True
                self.cancels.append(ticket)
                self.cond.notify()

    def load(self) -> dict[str, int]:
        with self.cond:
            return {"running": len(self.running), "waiting": len(self.waiting), "parallel": self.parallel, "queue": self.queue}

    def drain(self, grace: float) -> None:
        """Stop taking requests; answers in flight get `grace` seconds to finish, then end with an error event (a
        client is told the server stopped them, never left with a silently truncated answer)."""
        with self.cond:
            self.accepting = False
            if self.deadline is None:
                self.deadline = time.monotonic() + grace
            self.cond.notify_all()

    def close(self, grace: float = 10.0) -> None:
        """`drain`, wait for the answers to end, then stop the worker and free the Batcher."""
        self.drain(grace)
        with self.cond:
            while (self.waiting or self.running) and self.thread.is_alive():
                self.cond.wait(timeout=0.1)
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.batcher.close()

    # --- the worker thread -------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            with self.cond:
                while not (self.waiting or self.running or self.cancels or self.stopping):
                    self.cond.wait()
                if self.stopping:
                    return
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.abort_all("the server is shutting down: this answer was stopped")
                self.take_cancels()
                self.admit()
                if not self.running:
                    continue
            try:
                ticks = self.batcher.step()
            except Exception as exc:   # an engine failure ends the jobs in the batch (the Batcher freed their slots), not the server
                with self.cond:
                    for ticket in self.running.values():
                        if not ticket.aborted:
                            ticket.put(Event("error", error=exc))
                    self.running.clear()
                    self.cond.notify_all()
                continue
            for job, token in ticks:
                ticket = self.running.get(id(job))
                if ticket is None:
                    continue
                if token is None:
                    self.finish(ticket)
                elif not ticket.aborted:
                    self.feed(ticket, token)

    def take_cancels(self) -> None:
        for ticket in self.cancels:
            if ticket in self.waiting:
                self.waiting.remove(ticket)
                ticket.finish_reason = "cancelled"
                ticket.put(Event("done"))
            elif id(ticket.job) in self.running:
                self.batcher.cancel(ticket.job)
        self.cancels.clear()

    def admit(self) -> None:
        while self.waiting and self.batcher.free() > 0:
            ticket = self.waiting.popleft()
            try:
                self.batcher.add(ticket.job)
            except ModelportError as exc:
                ticket.put(Event("error", error=exc))
                continue
            ticket.stream = TextStream(self.detokenize)
            self.running[id(ticket.job)] = ticket
            ticket.put(Event("admitted"))

    def detokenize(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.engine.detokenize(ids)

    def feed(self, ticket: Ticket, token: int) -> None:
        if ticket.first_token is None:
            ticket.first_token = time.perf_counter()
        if ticket.cut.hit:
            return
        piece = ticket.cut.feed(ticket.stream.push(token))
        if piece:
            ticket.put(Event("text", piece))
        if ticket.cut.hit:           # a stop string: the answer is complete, free the slot
            ticket.finish_reason = "stop"
            self.batcher.cancel(ticket.job)

    def finish(self, ticket: Ticket) -> None:
        failed = ticket.job.result.stop_reason == "error" and not ticket.aborted
        if ticket.aborted or failed:  # an aborted ticket's client already has its error event
            with self.cond:
                self.running.pop(id(ticket.job), None)
                self.cond.notify_all()
            if failed:                # its own constraint or sampler failed: say so, never a silent "stop"
                ticket.put(Event("error", error=ticket.job.error or ModelportError("the generation failed")))
            return
        if not ticket.cut.hit:
            piece = ticket.cut.feed(ticket.stream.flush()) + ticket.cut.release()
            if piece:
                ticket.put(Event("text", piece))
        if ticket.finish_reason is None:
            ticket.finish_reason = FINISH.get(ticket.job.result.stop_reason, "stop")
        with self.cond:
            self.running.pop(id(ticket.job), None)
            self.cond.notify_all()
        ticket.put(Event("done"))

    def abort_all(self, message: str) -> None:
        """End every queued and running answer now with an error event (their jobs are cancelled)."""
        for ticket in self.waiting:
            ticket.put(Event("error", error=Busy(message, retry_after=5)))
        self.waiting.clear()
        for ticket in self.running.values():
            if not ticket.aborted:
                ticket.aborted = True
                ticket.put(Event("error", error=Busy(message, retry_after=5)))
                self.batcher.cancel(ticket.job)
