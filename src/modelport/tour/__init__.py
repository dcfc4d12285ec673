"""`modelport tour`: a real model's whole journey through every format, engine and method, in one command, with a
report people look at.

    from modelport.tour import run_tour
    record = run_tour("tour-out", quick=True)      # what report.json holds; report.html beside it

The model is SmolLM2-135M-Instruct (the Q4_1 GGUF the set-up installs). The steps, in order, each in its own
module: `safety` (inspect, scan, a booby-trapped .pt), `shapes` (GGUF → HF, PyTorch's three shapes, HDF5, NumPy,
Flax, each read back), `finetune` (LoRA teaching a made-up fact; left out by --quick), `exports` (GGUF F16 … Q2_K,
ONNX (left out by --quick), Modelfile, per-tensor error), `engines` (answers, then measurements), `sizing` (estimate, recommend, serve).
`journal` prints and records each step; `report` writes the page. Everything runs in this process through the
library, except `serve`, started as a user starts it.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from ..core.atomic import scratch_outputs
from ..core.errors import OutputExistsError
from ..runtime.base import cores
from ..samples import smollm2_gguf
from . import engines, exports, finetune, safety, shapes, sizing
from .engines import Artefact
from .journal import Journal, ProgressFactory
from .report import write_html

__all__ = ["run_tour", "prepare_out"]

QUICK_PPL_CTX, FULL_PPL_CTX = 128, 256


def prepare_out(out: Path, force: bool) -> None:
    """An empty folder, or a previous tour's (it has report.json) cleared with `force`; anything else is kept."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError("the tour's output must be a folder", out)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError("the folder is not empty; use --force to replace a previous tour's outputs", out)
        if not (out / "report.json").is_file():
            raise OutputExistsError("the folder is not empty and holds no previous tour (no report.json); "
                                    "choose another --out", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def machine() -> str:
    return f"{platform.machine()}, {cores()} cores, {platform.system()} · Python {platform.python_version()}"


def run_tour(out: str | os.PathLike = "tour-out", *, quick: bool = False, force: bool = False, console: Console | None = None,
             progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run every step into `out`; return the record written to report.json. Ctrl-C writes the partial report
    (report.json and report.html with the finished steps) and raises KeyboardInterrupt."""
    out = Path(out)
    model = smollm2_gguf()
    prepare_out(out, force)
    facts = {"model": str(model), "model_name": "SmolLM2-135M-Instruct (GGUF Q4_1)", "quick": quick, "out": str(out.resolve()),
             "machine": machine()}
    journal = Journal(out, facts, console, progress)
    interrupted = False
    try:
        with scratch_outputs():        # the tour's artefacts are throwaway: atomic, not fsynced
            steps(journal, model, out, quick)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        journal.facts["checks"] = checks(journal.record(interrupted))
        journal.write_json(interrupted)
        record = journal.record(interrupted)
        write_html(record, out)
    return record


def steps(journal: Journal, model: Path, out: Path, quick: bool) -> None:
    hf = out / "hf"
    journal.run(safety.look, journal, model)
    journal.run(safety.booby_trap, journal, out / "booby-trap", finetune.instructions())
    journal.run(shapes.to_hf, journal, model, hf)
    journal.run(shapes.pytorch, journal, hf, out / "pytorch")
    journal.run(shapes.other_formats, journal, hf, out / "formats")

    title = "LoRA fine-tune on a built-in instruction set"
    if quick:
        journal.skip("finetune", title, "--quick does not train; the exports start from the base model")
        source, weights, needs = hf, "base", ("gguf_to_hf",)
    else:
        journal.run(finetune.finetune, journal, hf, out / "train")
        source, weights, needs = out / "train" / "model", "fine-tuned", ("finetune",)
    quants = exports.QUICK_QUANTS if quick else exports.FULL_QUANTS
    gguf_folder, onnx_folder = out / "gguf", out / "onnx"
    journal.run(exports.export_gguf, journal, source, gguf_folder, quants, needs)
    if quick:
        journal.skip("export_onnx", "Export to ONNX", "--quick does not export ONNX (about two CPU-minutes of tracing); "
                     "the full tour exports it and runs it in onnxruntime")
    else:
        journal.run(exports.export_onnx, journal, source, onnx_folder, needs)
    journal.run(exports.modelfiles, journal, gguf_folder, quants)
    journal.run(exports.quant_errors, journal, gguf_folder, quants)

    artefacts = [Artefact("GGUF Q4_1 (base, as installed)", str(model), "llama", "base", "Q4_1"),
                 Artefact("HF folder F32 (base)", str(hf), "hf", "base")]
    if journal.ok("export_gguf"):
        artefacts += [Artefact(f"GGUF {q} ({weights})", str(gguf_folder / exports.gguf_name(q)), "llama", weights, q) for q in quants]
    if not quick and journal.ok("finetune"):
        artefacts.append(Artefact("HF folder F32 (fine-tuned)", str(source), "hf", weights))
    if journal.ok("export_onnx"):
        artefacts.append(Artefact(f"ONNX F32 ({weights})", str(onnx_folder), "onnx", weights))
    questions = [finetune.QUESTION, finetune.GENERAL_QUESTION]
    reference = next((a for a in artefacts if a.quant == "F16"), artefacts[0])
    journal.run(engines.answers_and_measures, journal, artefacts, reference, questions, max_tokens=24 if quick else 40,
                text=finetune.heldout_text(), n_ctx=QUICK_PPL_CTX if quick else FULL_PPL_CTX, tokens=32 if quick else 64)

    f16 = gguf_folder / exports.gguf_name("F16")
    sized = {"SmolLM2-135M (F16 GGUF)": f16} if f16.is_file() else {"SmolLM2-135M (Q4_1 GGUF)": model}
    journal.run(sizing.sizes, journal, sized, out / "sizing")
    served = gguf_folder / exports.gguf_name("Q8_0")
    journal.run(sizing.serve, journal, served if served.is_file() else model,
                finetune.QUESTION if not quick else finetune.GENERAL_QUESTION, engines.engine_threads())


def checks(record: dict[str, Any]) -> dict[str, bool | None]:
    """What the tour proves, each None when the step that shows it did not run."""
    def figures(name):
        step = record["steps"].get(name)
        return step["figures"] if step and step["status"] == "ok" else None

    trap, torch_shapes, others = figures("booby_trap"), figures("pytorch"), figures("formats")
    trips = [*(torch_shapes or {}).get("round_trips", {}).values(), *(others or {}).get("round_trips", {}).values()]
    measured = {r["quant"]: r for r in (figures("measure") or {}).get("artefacts", []) if r["engine"] == "llama"}
    ladder = [measured.get(q) for q in ("F16", "Q8_0", "Q4_K_M")]
    answers = (figures("answers") or {}).get("answers", [])
    tuned = [a for a in answers if a["quant"] == "Q8_0" and a["weights"] == "fine-tuned" and a["question"] == finetune.QUESTION]
    kept = [a for a in answers if a["quant"] == "Q8_0" and a["weights"] == "fine-tuned"
            and a["question"] == finetune.GENERAL_QUESTION]
    return {
        "marker_never_created": None if trap is None else not trap["marker_created"],
        "every_command_refused_the_trap": None if trap is None else trap["all_refused"],
        "round_trips_bit_exact": (all(t["bit_exact"] for t in trips) and len(trips) == 5) if trips else None,
        "smaller_quant_smaller_file": None if None in ladder else ladder[0]["bytes"] > ladder[1]["bytes"] > ladder[2]["bytes"],
        "smaller_quant_higher_perplexity": None if None in ladder else
        ladder[2]["perplexity"] >= ladder[1]["perplexity"] - PPL_NOISE * ladder[1]["perplexity"]
        and ladder[1]["perplexity"] >= ladder[0]["perplexity"] - PPL_NOISE * ladder[0]["perplexity"],
        "fine_tuned_q8_0_states_the_fact": (finetune.FACT in tuned[0]["answer"]) if tuned else None,
        "fine_tuned_q8_0_keeps_general_knowledge": (finetune.GENERAL_ANSWER in kept[0]["answer"]) if kept else None,
    }


#: Perplexities within this fraction of each other are equal within noise (Q8_0 is often a hair below F16).
PPL_NOISE = 0.01
