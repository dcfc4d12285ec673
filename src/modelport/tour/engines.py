"""Tour steps 5 and 6: the same questions through every engine and artefact (base and fine-tuned), then each
artefact measured: size on disk, load time, tokens/s, perplexity on a held-out text, agreement with the F16 file
(`compare`: the same token ids through both, next-token choices and KL divergence), memory after loading next to
`estimate`'s figure for that engine.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from ..estimate import running_memory
from ..runtime import Sampling, load
from ..runtime.base import Engine, cores
from ..runtime.evaluate import compare, perplexity
from .journal import Journal, RssPeak, clip

ENGINE_NAMES = {"llama": "llama.cpp", "hf": "transformers", "onnx": "onnxruntime"}
CTX = 1024


def engine_threads() -> int:
    """The threads every engine of the tour runs on: all the cores on an otherwise quiet machine, half of them (at
    least one) when other work is running (the 1-minute load average, less the tour's own thread). llama.cpp's and
    OpenMP's threads spin while they wait for each other: with every core asked for and another process on one,
    they burn many times the CPU (measured on the 2-core box at load 13: 24 tokens of llama.cpp cost 0.8 CPU-s on
    1 thread, 22 CPU-s on 2)."""
    n = cores()
    others = os.getloadavg()[0] - 1
    return n if others < 0.75 else max(1, n // 2)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op thread count (transformers' engine has no other) set to `n` for the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Artefact:
    name: str          # what the tables call it: "GGUF Q8_0 (fine-tuned)"
    path: str
    engine: str        # llama, hf, onnx
    weights: str       # base or fine-tuned
    quant: str | None = None


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def answers_and_measures(journal: Journal, artefacts: list[Artefact], reference: Artefact, questions: list[str],
                         max_tokens: int, text: str, n_ctx: int, tokens: int) -> None:
    """Steps 5 and 6 on one load of each artefact: it answers the questions, then is measured (the reference
    stays loaded throughout, to compare against). The measurements are the `measure` step's; it prints them."""
    names = list(dict.fromkeys(ENGINE_NAMES[a.engine] for a in artefacts))
    kinds = " vs ".join(dict.fromkeys(a.weights for a in artefacts))
    title = f"The same questions through {', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else \
        f"The same questions through {names[0]}"
    threads = engine_threads()
    measured: list[dict[str, Any]] = []
    with journal.step("answers", f"{title}, {kinds} (each artefact then measured, on the same load)") as step, \
            torch_threads(threads):
        rows = []
        journal.say(f"every engine on {threads} thread{'s' if threads > 1 else ''} of {cores()} cores "
                    f"(1-minute load average {os.getloadavg()[0]:.1f})")
        ref, ref_loaded = open_timed(reference, threads)
        remembered = Remembered(ref)
        try:
            with journal.bar("answering, measuring", len(artefacts)) as advance:
                for art in artefacts:
                    engine, loaded = (ref, ref_loaded) if art == reference else open_timed(art, threads)
                    try:
                        for question in questions:
                            result = engine.complete(engine.chat_ids([{"role": "user", "content": question}]),
                                                     max_tokens=max_tokens)
                            answer = result.text.strip()
                            rows.append({**asdict(art), "engine_name": ENGINE_NAMES[art.engine], "question": question,
                                         "answer": answer, "tokens": result.completion_tokens,
                                         "tokens_per_s": result.to_dict()["generation_tokens_per_second"]})
                            journal.say(f"{art.name:32} [{ENGINE_NAMES[art.engine]}] {question} → {clip(answer, 90)}")
                        measured.append(measure_one(art, engine, loaded, None if art == reference else remembered,
                                                    text, n_ctx, tokens))
                    finally:
                        if engine is not ref:
                            engine.close()
                    advance()
        finally:
            ref.close()
        step.figures.update(answers=rows, threads=threads)

    with journal.step("measure", f"Measure each artefact (perplexity on a held-out text, ctx {n_ctx}; agreement with F16)",
                      needs=("answers",)) as step:
        for r in measured:
            journal.say(f"{r['name']:32} {r['bytes'] / 1e6:7.0f} MB  load {r['load_s']:5.2f} s  {r['tokens_per_s'] or 0:6.1f} tok/s  "
                        f"ppl {r['perplexity']:7.3f}  agree {100 * r['argmax_agreement']:5.1f} %  KL {r['mean_kl']:.4f}")
        step.figures.update(artefacts=measured, reference=reference.name, threads=threads)


class Remembered:
    """The reference engine, its logits for each id sequence computed once: every artefact is compared with it on
    the same ids."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.seen: dict[tuple[int, ...], Any] = {}

    def logits(self, ids: list[int]):
        key = tuple(ids)
        if key not in self.seen:
            self.seen[key] = self.engine.logits(ids)
        return self.seen[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def open_timed(art: Artefact, threads: int) -> tuple[Engine, dict[str, float]]:
    """`art` loaded for chat, with the seconds it took and the resident memory it added."""
    started = time.perf_counter()
    with RssPeak() as rss:
        engine = load(art.path, engine=art.engine, ctx=CTX, threads=threads, needs_template=True)
    return engine, {"load_s": time.perf_counter() - started, "rss": max(0, rss.peak - rss.before)}


def measure_one(art: Artefact, engine: Engine, loaded: dict[str, float], ref: Engine | Remembered | None, text: str, n_ctx: int,
                tokens: int) -> dict[str, Any]:
    """Speed (greedy, `tokens` past a 32-token prompt), perplexity, and agreement with `ref` (None: this is it)."""
    ids = engine.tokenize(text, add_special=True)[:32]
    generation = engine.complete(ids, max_tokens=tokens, sampling=Sampling(), ignore_eos=True).to_dict()
    ppl = perplexity(engine, text, n_ctx=n_ctx)
    agreement = compare(ref, engine, text, tokens=2 * n_ctx) if ref is not None else None
    estimated = None
    if art.engine in ("llama", "hf"):
        try:
            estimated = (running_memory(art.path, engine=art.engine, ctx=CTX) or {}).get("total")
        except Exception:   # noqa: BLE001 - an estimate the model view cannot make is left blank, not fatal
            estimated = None
    return {**asdict(art), "engine_name": ENGINE_NAMES[art.engine], "bytes": size_of(Path(art.path)),
            "load_s": round(loaded["load_s"], 3),
            "tokens_per_s": generation["generation_tokens_per_second"], "prompt_tokens_per_s": generation["prompt_tokens_per_second"],
            "perplexity": ppl.perplexity, "windows": ppl.windows, "scored_tokens": ppl.scored_tokens,
            "argmax_agreement": agreement.argmax_agreement if agreement else 1.0,
            "mean_kl": agreement.mean_kl if agreement else 0.0,
            "load_rss_bytes": loaded["rss"], "estimated_bytes": estimated}
