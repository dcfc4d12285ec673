"""runtime.batching: several jobs on one engine give each the tokens it gets alone.

The oracle is the engine's own single-sequence path (`Engine.complete`, itself checked against
llama-cpp-python in test_llama.py): greedy tokens of a job run beside others, added at other ticks,
equal that job's tokens alone. llama.cpp on CPU computes each row of a batched matmul the same way
whatever the batch size (the activations are quantized per row, the dot products per row) and each
sequence attends over its own KV stream, so the equality is exact, token for token, not a prefix.
"""

from __future__ import annotations

import numpy as np
import pytest

import modelport
from modelport import runtime
from modelport.core.errors import UnsupportedError
from modelport.runtime import Sampling
from modelport.runtime.batching import Batcher, Job, PromptTooLongError
from modelport.runtime.conversation import ContextFullError
from modelport.samples import smollm2_gguf
from tests.factory import chat_model

pytest.importorskip("llama_cpp")

QUESTIONS = ["What is the capital of France? Answer in one sentence.", "Write a short poem about the sea.", "Name three colors.",
             "Explain gravity to a child in two sentences."]
N = 16


def run_all(batcher: Batcher, schedule: dict[int, list[Job]], cancel_at: dict[Job, int] | None = None):
    """Step until every job is done, adding jobs at the ticks `schedule` names and cancelling a job once
    it has the number of tokens `cancel_at` gives; returns the events each job saw, in order."""
    seen: dict[Job, list] = {job: [] for jobs in schedule.values() for job in jobs}
    cancel_at = dict(cancel_at or {})
    tick = 0
    while tick <= max(schedule) or batcher.active():
        for job in schedule.get(tick, []):
            batcher.add(job)
        for job, token in batcher.step():
            seen[job].append(token)
            if cancel_at.get(job) == len(job.result.tokens) and token is not None:
                batcher.cancel(job)
        tick += 1
        assert tick < 10_000
    return seen


def check_events(seen: dict[Job, list]) -> None:
    """Every job streamed exactly its result's tokens, then one None, and is done."""
    for job, events in seen.items():
        assert events == job.result.tokens + [None], job.result.stop_reason
        assert job.done and job.result.stop_reason in {"stop", "length", "context", "cancelled"}


@pytest.fixture(scope="module")
def smol():
    with runtime.load(smollm2_gguf(), ctx=512) as engine:
        yield engine


@pytest.mark.slow
def test_four_prompts_together_equal_each_alone(smol):
    prompts = [smol.chat_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    alone = [smol.complete(ids, max_tokens=N).tokens for ids in prompts]
    batcher = Batcher(smol, parallel=4)
    assert batcher.batched and batcher.parallel == 4 and batcher.n_ctx == 512
    jobs = [Job(ids, N, Sampling()) for ids in prompts]
    seen = run_all(batcher, {0: jobs[:2], 3: [jobs[2]], 7: [jobs[3]]}, cancel_at={jobs[1]: 6})
    check_events(seen)
    assert jobs[1].result.stop_reason == "cancelled" and jobs[1].result.tokens == alone[1][:6]
    for i in (0, 2, 3):
        assert jobs[i].result.tokens == alone[i], i
        assert jobs[i].result.stop_reason == ("length" if len(alone[i]) == N else "stop")
        assert jobs[i].result.prompt_tokens == len(prompts[i]) and jobs[i].result.engine == "llama.cpp"
        assert jobs[i].result.prompt_seconds > 0 and jobs[i].result.generation_seconds > 0
    assert "Paris" in smol.detokenize(jobs[0].result.tokens)
    assert batcher.free() == 4 and batcher.active() == 0
    # a freed slot keeps its cache: the same prompt again starts from it (no token run) and gets the same
    # tokens; the next chat turn runs only what follows the cached part
    again = Job(prompts[2], N, Sampling())
    answer = smol.detokenize(alone[0])
    turn = smol.chat_ids([{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": answer},
                          {"role": "user", "content": "And of Italy?"}])
    follow = Job(turn, N, Sampling())
    run_all(batcher, {0: [again, follow]})
    assert again.cached_tokens == len(prompts[2]) and again.result.tokens == alone[2]
    assert len(prompts[0]) <= follow.cached_tokens < len(turn)
    assert follow.result.tokens == smol.complete(turn, max_tokens=N).tokens
    # and the engine's own single-sequence path is untouched by the second context
    assert smol.complete(prompts[0], max_tokens=N).tokens == alone[0]
    batcher.close()


@pytest.mark.slow
def test_a_seed_gives_the_same_tokens_alone_or_beside_others(smol):
    ids = smol.chat_ids([{"role": "user", "content": "Tell me a story about a cat."}])
    other = smol.chat_ids([{"role": "user", "content": QUESTIONS[1]}])
    sampling = Sampling(temperature=0.9, top_p=0.95, seed=7)
    reference = smol.complete(ids, max_tokens=12, sampling=sampling, ignore_eos=True).tokens
    batcher = Batcher(smol, parallel=3)
    alone = Job(ids, 12, Sampling(temperature=0.9, top_p=0.95, seed=7), ignore_eos=True)
    run_all(batcher, {0: [alone]})
    mixed = [Job(ids, 12, Sampling(temperature=0.9, top_p=0.95, seed=7), ignore_eos=True),
             Job(other, 12, Sampling(temperature=0.9, seed=1)), Job(ids, 12, Sampling(temperature=0.9, seed=8))]
    run_all(batcher, {0: mixed[1:], 2: mixed[:1]})
    assert alone.result.tokens == reference == mixed[0].result.tokens and len(reference) == 12
    assert mixed[2].result.tokens != reference         # another seed, another answer
    batcher.close()


def test_refusals_take_no_slot(smol):
    batcher = Batcher(smol, parallel=2)
    long = smol.tokenize("word " * 600)
    assert len(long) > 512
    with pytest.raises(PromptTooLongError, match=f"prompt \\({len(long)} tokens\\) does not fit the context of 512"):
        batcher.add(Job(long, 8, Sampling()))
    assert issubclass(PromptTooLongError, ContextFullError)
    with pytest.raises(UnsupportedError, match="empty"):
        batcher.add(Job([], 8, Sampling()))
    with pytest.raises(UnsupportedError, match="outside the vocabulary"):
        batcher.add(Job([1, 99999], 8, Sampling()))
    with pytest.raises(UnsupportedError, match="max_tokens must be at least 1"):
        batcher.add(Job([1, 2], 0, Sampling()))
    assert batcher.free() == 2 and batcher.active() == 0 and batcher.step() == []
    jobs = [Job([1, 2, 3], 2, Sampling()) for _ in range(3)]
    batcher.add(jobs[0])
    batcher.add(jobs[1])
    with pytest.raises(UnsupportedError, match="all 2 slots are busy"):
        batcher.add(jobs[2])
    batcher.cancel(jobs[0])
    assert batcher.free() == 0                           # freed at the next step, not before
    events = batcher.step()
    assert (jobs[0], None) in events and jobs[0].result.stop_reason == "cancelled" and jobs[0].result.tokens == []
    assert batcher.free() == 1
    with pytest.raises(UnsupportedError, match="parallel must be at least 1"):
        Batcher(smol, parallel=0)
    batcher.close()


class Broken:
    """A constraint that fails (as a grammar library might): the batcher must not be left holding slots."""

    def apply(self, logits):
        raise ValueError("grammar state corrupt")


def test_a_failure_inside_a_step_ends_every_job_and_frees_the_slots(smol):
    ids = smol.chat_ids([{"role": "user", "content": QUESTIONS[2]}])
    batcher = Batcher(smol, parallel=2)
    jobs = [Job(ids, 4, Sampling()), Job(ids, 4, Sampling(), constraint=Broken())]
    for job in jobs:
        batcher.add(job)
    with pytest.raises(ValueError, match="grammar state corrupt"):
        batcher.step()
    assert all(job.done and job.result.stop_reason == "error" for job in jobs)
    assert batcher.free() == 2 and batcher.active() == 0
    after = Job(ids, 4, Sampling())
    run_all(batcher, {0: [after]})
    assert after.cached_tokens == 0 and after.result.tokens == smol.complete(ids, max_tokens=4).tokens
    batcher.close()


class OnlyDigits:
    """A duck-typed constraint (what runtime/structured.py provides): only digit tokens, three of them."""

    def __init__(self, engine):
        vocab = engine.vocabulary()
        self.allowed = np.array([i for i, t in enumerate(vocab) if t.isdigit()])
        self.accepted: list[int] = []

    def apply(self, logits):
        mask = np.full(logits.shape, -np.inf, dtype=logits.dtype)
        mask[self.allowed] = 0
        logits += mask

    def accept(self, token):
        self.accepted.append(token)

    def finished(self):
        return len(self.accepted) == 3


def test_a_constraint_masks_each_job_and_ends_it(smol):
    ids = smol.chat_ids([{"role": "user", "content": "How many legs does a spider have?"}])
    constrained = Job(ids, 20, Sampling(), constraint=OnlyDigits(smol))
    free = Job(ids, 6, Sampling())
    batcher = Batcher(smol, parallel=2)
    check_events(run_all(batcher, {0: [constrained, free]}))
    assert constrained.result.stop_reason == "stop" and len(constrained.result.tokens) == 3
    assert constrained.constraint.accepted == constrained.result.tokens
    assert smol.detokenize(constrained.result.tokens).isdigit()
    assert free.result.tokens == smol.complete(ids, max_tokens=6).tokens   # its neighbour's mask is not its own
    batcher.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batching")
    chat_model(folder / "hf")
    modelport.convert(folder / "hf", folder / "tiny.gguf", quant="F16")
    return folder


def test_tiny_gguf_context_limit_and_stops_match_generate(tiny_gguf):
    with runtime.load(tiny_gguf / "tiny.gguf", ctx=64) as engine:
        prompts = [engine.tokenize(text) for text in ("hello world " * 40, "the cat", "def main(x):", "a b c d e")]
        prompts[0] = prompts[0][:engine.n_ctx - 10]            # llama.cpp may round the context up: ask it
        alone = [engine.complete(ids, max_tokens=40, ignore_eos=True) for ids in prompts]
        assert alone[0].stop_reason == "context"
        batcher = Batcher(engine, parallel=3)
        jobs = [Job(ids, 40, Sampling(), ignore_eos=True) for ids in prompts]
        check_events(run_all(batcher, {0: jobs[:3], 5: [], 30: [jobs[3]]}))
        for job, reference in zip(jobs, alone):
            assert (job.result.tokens, job.result.stop_reason) == (reference.tokens, reference.stop_reason)
        # stop ids end a job as they end generate: the first token each job made, as a stop
        first = alone[1].tokens[3]
        stopped = Job(prompts[1], 100, Sampling(), stop_ids={first}, ignore_eos=True)
        run_all(batcher, {0: [stopped]})
        assert stopped.result.stop_reason == "stop" and stopped.result.tokens == alone[1].tokens[:3]
        batcher.close()


def test_hf_engine_serializes_and_equals_generate(tiny_gguf):
    with runtime.load(tiny_gguf / "hf") as engine:
        prompts = [engine.tokenize(text) for text in ("the cat", "def main(x):", "hello world")]
        alone = [engine.complete(ids, max_tokens=8, ignore_eos=True).tokens for ids in prompts]
        batcher = Batcher(engine, parallel=3)
        assert not batcher.batched
        jobs = [Job(ids, 8, Sampling(), ignore_eos=True) for ids in prompts]
        order = []
        for job in jobs:
            batcher.add(job)
        assert batcher.free() == 0
        while batcher.active():
            order += [jobs.index(job) for job, token in batcher.step() if token is not None]
        assert order == [0] * 8 + [1] * 8 + [2] * 8           # one after another, each to its end
        assert [job.result.tokens for job in jobs] == alone
        sampled = [Job(prompts[0], 8, Sampling(temperature=1.0, seed=s)) for s in (3, 3)]
        run_all(batcher, {0: sampled})
        assert sampled[0].result.tokens == sampled[1].result.tokens == engine.complete(
            prompts[0], max_tokens=8, sampling=Sampling(temperature=1.0, seed=3)).tokens
