"""`modelport.train(model, data, out, ...)`: fine-tune (full or LoRA) with transformers' Trainer, watch it, export it.

The order is what makes it safe to start: settings, model and every line of the data are checked first (bad data
is one line naming the file and the line), then the run writes into `out`: checkpoints, `metrics.jsonl`, the
loss curve, `model/` (full, or LoRA merged into a fp32 base when exporting), `adapter/` (LoRA), and each
`--export` through modelport's own conversion routes. A GGUF model is converted to an HF folder first (the
GGUF → HF route), so a model people run can be trained too.
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from ..conversion import convert
from ..core.errors import ModelportError, OutputExistsError
from ..estimate.model import load_view
from ..estimate.training import default_lora_targets, lora_parameter_count, training_memory
from ..opening import open as open_model
from ..runtime.chat_template import folder_of, template_for
from .data import Dataset, tokenize
from .export import ExportSpec, parse_export, write_export
from .trainer import (
    METHODS,
    Settings,
    bitsandbytes_or_error,
    choose_bf16,
    fit,
    is_main_process,
    load_tokenizer,
    merge_lora,
    plot_loss,
    steps_for,
)

__all__ = ["train", "plan", "Settings", "METHODS", "parse_export", "launch_line", "resume_line", "train_arguments"]


def model_folder(model: str | os.PathLike, scratch: Path) -> tuple[Path, str]:
    """The HF folder transformers loads: the model's own, or, for a GGUF, one converted into `scratch`."""
    with open_model(model) as source:      # scanned once; a GGUF is converted from this same opened source
        if source.format != "gguf":
            return folder_of(source), source.format
        hf = scratch / "hf"
        convert(source, hf, to="hf")
        return hf, "gguf"


def _prepare(model, data, s: Settings, scratch: Path):
    folder, fmt = model_folder(model, scratch)
    view = load_view(folder)
    targets = list(s.target_modules) if s.target_modules else list(default_lora_targets(view))
    tokenizer = load_tokenizer(folder)
    with open_model(folder) as source:
        template = template_for(source)
    dataset = tokenize(data, tokenizer, template, s.seq_len)
    return folder, fmt, view, targets, tokenizer, dataset


def _settings(method: str, settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    s = settings or Settings()
    s.method = method or s.method
    for key, value in overrides.items():
        if not hasattr(s, key):
            raise TypeError(f"train() got an unexpected keyword argument {key!r}")
        setattr(s, key, value)
    if s.method not in METHODS:
        raise ModelportError(f"unknown training method {s.method!r}; use one of {', '.join(METHODS)}")
    if s.batch < 1 or s.grad_accum < 1 or s.seq_len < 2:
        raise ModelportError("--batch and --grad-accum must be at least 1, --seq-len at least 2")
    return s


def train_arguments(model, data, out, s: Settings, exports: list[str]) -> list[str]:
    """`modelport train`'s arguments for these settings (every one that differs from the default, and the ones
    people read: method, batch, steps, learning rate, seed): what the launch and resume lines repeat."""
    args = ["train", str(model), str(data), "--method", s.method, "--out", str(out), "--batch", str(s.batch),
            "--grad-accum", str(s.grad_accum), "--seq-len", str(s.seq_len), "--lr", str(s.learning_rate()),
            "--seed", str(s.seed)]
    args += ["--max-steps", str(s.max_steps)] if s.max_steps and s.max_steps > 0 else ["--epochs", str(s.epochs)]
    if s.method in ("lora", "qlora"):
        args += ["--lora-r", str(s.lora_r), "--lora-alpha", str(s.alpha()), "--lora-dropout", str(s.lora_dropout)]
        if s.target_modules:
            args += ["--target-modules", ",".join(s.target_modules)]
    if s.bf16 is not None:
        args.append("--bf16" if s.bf16 else "--fp32")
    defaults = Settings()
    for option, key in (("--eval-split", "eval_split"), ("--save-steps", "save_steps"),
                        ("--logging-steps", "logging_steps"), ("--warmup-steps", "warmup_steps")):
        if getattr(s, key) != getattr(defaults, key):
            args += [option, str(getattr(s, key))]
    for e in exports:
        args += ["--export", e]
    return args


def launch_line(model, data, out, s: Settings, exports: list[str], processes: int = 2) -> str:
    """The command that runs the same training on `processes` processes (DDP through accelerate; on CPU it
    needs --multi_gpu too, which then uses gloo: `--cpu` alone silently runs one process). Each process takes
    `--batch` sequences a step, so the global batch is `processes` times larger."""
    return shlex.join(["accelerate", "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "modelport",
                       *train_arguments(model, data, out, s, exports)])


def resume_line(model, data, out, s: Settings, exports: list[str]) -> str:
    """The command that continues this run from its last checkpoint (the same launcher for a multi-process run)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    args = [*train_arguments(model, data, out, s, exports), "--resume"]
    if world > 1:
        return launch_line(model, data, out, s, exports, world) + " --resume"
    return shlex.join(["modelport", *args])


def plan(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike = "out", *, method: str = "lora",
         export: list[str] | tuple[str, ...] = (), settings: Settings | None = None, **overrides) -> dict[str, Any]:
    """What `train` would do, without training: trainable parameters, memory, tokens, steps, a multi-process line.
    The data is read and tokenized in full, so a plan that comes back means the data is good."""
    s = _settings(method, settings, overrides)
    specs = [parse_export(e) for e in export]
    with tempfile.TemporaryDirectory(prefix="modelport-train-") as scratch:
        folder, fmt, view, targets, tokenizer, dataset = _prepare(model, data, s, Path(scratch))
    memory = training_memory(view, s.method, lora_r=s.lora_r, targets=targets, seq_len=s.seq_len, batch=s.batch,
                             bf16=choose_bf16(s.bf16))
    trainable = lora_parameter_count(view, s.lora_r, targets) if s.method != "full" else view.parameter_count
    steps = steps_for(len(dataset), s)
    per_step = s.batch * s.grad_accum
    return {"model": str(model), "format": fmt, "data": str(data), "out": str(out), "method": s.method,
            "examples": len(dataset), "data_kind": dataset.kind, "tokens_per_epoch": dataset.tokens,
            "trained_tokens_per_epoch": dataset.trained_tokens, "steps": steps,
            "epochs": round(steps * per_step / max(1, len(dataset)), 3) if s.max_steps and s.max_steps > 0 else s.epochs,
            "trainable_parameters": trainable, "total_parameters": view.parameter_count,
            "lora_targets": targets if s.method != "full" else None, "memory": memory,
            "learning_rate": s.learning_rate(), "batch": s.batch, "grad_accum": s.grad_accum, "seq_len": s.seq_len,
            "export": [sp.label for sp in specs], "accelerate": launch_line(model, data, out, s, list(export))}


def _check_out(out: Path, resume: bool, force: bool) -> None:
    if resume or not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError("the output must be a folder", out)
    if any(out.iterdir()) and not force:
        raise OutputExistsError("the output folder is not empty; use --resume to continue a run or --force to start over",
                                out)


def train(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *, method: str = "lora",
          export: list[str] | tuple[str, ...] = (), force: bool = False, settings: Settings | None = None,
          progress=None, **overrides) -> dict[str, Any]:
    """Train `model` on `data` into the folder `out`; returns the summary (first/final loss, steps, tokens/s,
    paths). Keywords are `Settings` fields (max_steps, epochs, lr, batch, grad_accum, seq_len, lora_r, lora_alpha,
    lora_dropout, target_modules, seed, bf16, eval_split, save_steps, logging_steps, resume, quiet).
    `progress(row)` gets each logged step (default: a line on stderr). Ctrl-C saves a checkpoint and returns
    early with `interrupted` True (no merge, no exports); `resume=True` continues it."""
    s = _settings(method, settings, overrides)
    specs: list[ExportSpec] = [parse_export(e) for e in export]
    out = Path(out)
    if is_main_process():        # the other ranks of a multi-process run find rank 0's folder being filled
        _check_out(out, s.resume, force)
    if s.method == "qlora":
        bitsandbytes_or_error()     # before anything is converted or written
    with tempfile.TemporaryDirectory(prefix="modelport-train-") as scratch:
        folder, fmt, view, targets, tokenizer, dataset = _prepare(model, data, s, Path(scratch))
        out.mkdir(parents=True, exist_ok=True)
        if not s.resume and is_main_process():
            (out / "metrics.jsonl").unlink(missing_ok=True)
        summary = fit(folder, tokenizer, dataset, out, s, targets, progress)
        rows = summary.pop("rows")
        if not summary["main_process"]:     # under accelerate/torchrun: rank 0 plots, merges, exports and reports
            return summary
        png = plot_loss(_all_rows(out, rows), out / "loss.png")
        merged = Path(summary["saved"]) if s.method == "full" and not summary["interrupted"] else None
        exports = []
        if specs and not summary["interrupted"]:
            gc.collect()                    # the trained model (Trainer holds cycles) goes before the fp32 base loads
            if merged is None:
                merged = merge_lora(folder, Path(summary["saved"]), out / "model", tokenizer)
            exports = [write_export(merged, out, spec) for spec in specs]
    summary.update(model=str(model), format=fmt, data=str(data), out=str(out), examples=len(dataset),
                   tokens_per_epoch=dataset.tokens, metrics=str(out / "metrics.jsonl"),
                   loss_plot=str(png) if png else None, merged=str(merged) if merged else None, exports=exports,
                   lora_targets=targets if s.method != "full" else None)
    if summary["interrupted"]:
        summary["resume"] = resume_line(model, data, out, s, list(export))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _all_rows(out: Path, rows: list[dict]) -> list[dict]:
    """Every logged row in metrics.jsonl (a resumed run's earlier steps included)."""
    try:
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return rows


def describe(d: Dataset) -> str:
    return f"{len(d)} examples, {d.tokens:,} tokens ({d.kind})"
