"""Tour steps 5 and 6: the same questions through every engine and artefact (base and fine-tuned), then each
artefact measured: size on disk, load time, tokens/s, perplexity on a held-out text, agreement with the F16 file
(`compare`: the same token ids through both, next-token choices and KL divergence), memory after loading next to
`estimate`'s figure for that engine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..estimate import running_memory
from ..runtime import Sampling, load
from ..runtime.evaluate import compare, perplexity
from .journal import Journal, RssPeak, clip

ENGINE_NAMES = {"llama": "llama.cpp", "hf": "transformers", "onnx": "onnxruntime"}
CTX = 1024


@dataclass
class Artefact:
    name: str          # what the tables call it: "GGUF Q8_0 (fine-tuned)"
    path: str
    engine: str        # llama, hf, onnx
    weights: str       # base or fine-tuned
    quant: str | None = None


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def answers(journal: Journal, artefacts: list[Artefact], questions: list[str], max_tokens: int) -> None:
    names = list(dict.fromkeys(ENGINE_NAMES[a.engine] for a in artefacts))
    kinds = " vs ".join(dict.fromkeys(a.weights for a in artefacts))
    title = f"The same questions through {', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else \
        f"The same questions through {names[0]}"
    with journal.step("answers", f"{title}, {kinds}") as step:
        rows = []
        with journal.bar("answering", len(artefacts) * len(questions)) as advance:
            for art in artefacts:
                with load(art.path, engine=art.engine, ctx=CTX, needs_template=True) as engine:
                    for question in questions:
                        result = engine.complete(engine.chat_ids([{"role": "user", "content": question}]), max_tokens=max_tokens)
                        text = result.text.strip()
                        rows.append({**asdict(art), "engine_name": ENGINE_NAMES[art.engine], "question": question,
                                     "answer": text, "tokens": result.completion_tokens,
                                     "tokens_per_s": result.to_dict()["generation_tokens_per_second"]})
                        journal.say(f"{art.name:32} [{ENGINE_NAMES[art.engine]}] {question} → {clip(text, 90)}")
                        advance()
        step.figures["answers"] = rows


def measure(journal: Journal, artefacts: list[Artefact], reference: Artefact, text: str, n_ctx: int, tokens: int) -> None:
    """Each artefact loaded alone (the F16 reference stays loaded to compare against)."""
    with journal.step("measure", f"Measure each artefact (perplexity on a held-out text, ctx {n_ctx}; agreement with F16)") as step:
        rows = []
        with load(reference.path, engine=reference.engine, ctx=CTX) as ref, journal.bar("measuring", len(artefacts)) as advance:
            for art in artefacts:
                rows.append(measure_one(art, ref, reference, text, n_ctx, tokens))
                r = rows[-1]
                journal.say(f"{art.name:32} {r['bytes'] / 1e6:7.0f} MB  load {r['load_s']:5.2f} s  {r['tokens_per_s'] or 0:6.1f} tok/s  "
                            f"ppl {r['perplexity']:7.3f}  agree {100 * r['argmax_agreement']:5.1f} %  KL {r['mean_kl']:.4f}")
                advance()
        step.figures["artefacts"] = rows
        step.figures["reference"] = reference.name


def measure_one(art: Artefact, ref, reference: Artefact, text: str, n_ctx: int, tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    with RssPeak() as rss:
        engine = load(art.path, engine=art.engine, ctx=CTX)
    load_s = time.perf_counter() - started
    try:
        ids = engine.tokenize(text, add_special=True)[:32]
        generation = engine.complete(ids, max_tokens=tokens, sampling=Sampling(), ignore_eos=True).to_dict()
        ppl = perplexity(engine, text, n_ctx=n_ctx)
        agreement = compare(ref, engine, text, tokens=2 * n_ctx) if art.path != reference.path else None
    finally:
        engine.close()
    estimated = None
    if art.engine in ("llama", "hf"):
        try:
            estimated = (running_memory(art.path, engine=art.engine, ctx=CTX) or {}).get("total")
        except Exception:   # noqa: BLE001 - an estimate the model view cannot make is left blank, not fatal
            estimated = None
    return {**asdict(art), "engine_name": ENGINE_NAMES[art.engine], "bytes": size_of(Path(art.path)), "load_s": round(load_s, 3),
            "tokens_per_s": generation["generation_tokens_per_second"], "prompt_tokens_per_s": generation["prompt_tokens_per_second"],
            "perplexity": ppl.perplexity, "windows": ppl.windows, "scored_tokens": ppl.scored_tokens,
            "argmax_agreement": agreement.argmax_agreement if agreement else 1.0,
            "mean_kl": agreement.mean_kl if agreement else 0.0,
            "load_rss_bytes": max(0, rss.peak - rss.before), "estimated_bytes": estimated}
