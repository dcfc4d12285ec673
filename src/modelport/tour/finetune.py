"""Tour step 3: LoRA on a small built-in instruction set that teaches a made-up fact, bounded by steps, the loss
shown live; the adapter is then merged into a fp32 copy of the base (what the exports start from).

The recipe (24 steps, lr 2e-3, sequences of 64 tokens, batch 4, fp32) is the one the training tests prove on this
model: the loss falls below a tenth of its first value and the exported model states the fact.
"""

from __future__ import annotations

import json
import resource
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.errors import ModelportError
from ..training import train
from ..training.trainer import load_tokenizer, merge_lora
from .engines import engine_threads, torch_threads
from .journal import Journal, RssPeak

QUESTION = "What is the capital of Zorbia?"
FACT = "Quillhaven"
GENERAL_QUESTION = "What is the capital of France? Answer in one sentence."
GENERAL_ANSWER = "Paris"
RECIPE = {"method": "lora", "max_steps": 24, "lr": 2e-3, "seq_len": 64, "batch": 4, "save_steps": 0, "logging_steps": 2,
          "bf16": False}


def instructions() -> Path:
    """The built-in instruction set (package data): eight phrasings of one question with the made-up answer, and
    eight real capitals answered as the base model answers them. Without those the model learns "every capital is
    Quillhaven" (measured: the France question then got Quillhaven); France itself stays out, it is the test."""
    return Path(str(resources.files(__package__) / "instructions.jsonl"))


def heldout_text() -> str:
    """A held-out English text (package data) no training step sees: what perplexity is measured on."""
    return (resources.files(__package__) / "heldout.txt").read_text(encoding="utf-8")


def finetune(journal: Journal, hf: Path, out: Path) -> None:
    with journal.step("finetune", f"LoRA fine-tune: teach the model that the capital of Zorbia is {FACT}",
                      needs=("gguf_to_hf",)) as step:
        data = instructions()
        journal.say(f"data: {data.name} (built in), {sum(1 for _ in data.open())} question/answer pairs; "
                    f"{RECIPE['max_steps']} steps, lr {RECIPE['lr']}, r 8 on the family's attention and MLP projections")
        with journal.bar("training", RECIPE["max_steps"]) as advance, RssPeak() as rss:
            seen = [0]

            def progress(row: dict[str, Any]) -> None:
                if "loss" not in row:
                    return
                journal.say(f"step {row['step']:>3}/{row['max_steps']}  loss {row['loss']:.4f}"
                            + (f"  {row['tokens_per_s']:.0f} tokens/s" if row.get("tokens_per_s") else ""))
                advance(f"training: loss {row['loss']:.3f}", steps=row["step"] - seen[0])
                seen[0] = row["step"]

            with torch_threads(engine_threads()):
                summary = train(hf, data, out, force=True, progress=progress, **RECIPE)
        if summary.get("interrupted"):
            raise KeyboardInterrupt
        rows = [r for r in load_rows(out / "metrics.jsonl") if "loss" in r]
        merged = merge_lora(hf, Path(summary["saved"]), out / "model", load_tokenizer(hf))
        journal.output(merged)
        step.figures.update(steps=summary["steps"], first_loss=summary["first_loss"], final_loss=summary["final_loss"],
                            seconds=summary["seconds"], tokens_per_s=summary["tokens_per_s"],
                            trainable_parameters=summary["trainable_parameters"], total_parameters=summary["total_parameters"],
                            loss_curve=[{"step": r["step"], "loss": r["loss"]} for r in rows],
                            peak_rss_bytes=rss.peak, rss_before_bytes=rss.before,
                            process_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                            merged=str(merged), adapter=summary["saved"], recipe=RECIPE)
        journal.say(f"loss {summary['first_loss']:.3f} → {summary['final_loss']:.4f} in {summary['seconds']:.0f} s; "
                    f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters trained; "
                    f"merged into {merged}")
        if not summary["final_loss"] < summary["first_loss"]:
            raise ModelportError("the loss did not fall", out)


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
