"""One training run with transformers' `Trainer` (and peft for LoRA), watched: a line per logging step on stderr,
`metrics.jsonl` and a loss-curve PNG in the output folder, checkpoints that `resume` continues from.

transformers 5 (see the training notes): `use_cpu=True` on CPU, `eval_strategy`, `processing_class=`,
`report_to=[]`. Precision: fp32 unless the CPU has avx512_bf16 or amx_bf16, where bf16 autocast is ~1.5x faster;
elsewhere bf16 autocast on a CPU is several times *slower* than fp32.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ModelportError, UnsupportedError
from ..estimate.devices import cpu_has_fast_bf16
from .data import Dataset, collate

METHODS = ("full", "lora", "qlora")


@dataclass
class Settings:
    """What a run needs besides the model and the data (the CLI's options, the API's keywords)."""

    method: str = "lora"
    max_steps: int = -1
    epochs: float = 1.0
    lr: float | None = None                 # None: 2e-5 full, 2e-4 LoRA and QLoRA
    batch: int = 4
    grad_accum: int = 1
    seq_len: int = 512
    lora_r: int = 8
    lora_alpha: int | None = None           # None: 2 * r
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's
    seed: int = 0
    bf16: bool | None = None                # None: from the CPU's flags (or CUDA's support)
    eval_split: float = 0.0
    save_steps: int = 500
    logging_steps: int | None = None        # None: about 50 lines per run
    warmup_steps: int = 0
    resume: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-5 if self.method == "full" else 2e-4)

    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r


def choose_bf16(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def steps_for(n_examples: int, s: Settings) -> int:
    """Optimizer steps the run takes: `max_steps`, else epochs over the data in batches of batch * grad_accum."""
    if s.max_steps and s.max_steps > 0:
        return s.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_examples / s.batch) / s.grad_accum))
    return max(1, math.ceil(per_epoch * s.epochs))



def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise UnsupportedError(f"transformers cannot load the tokenizer: {exc}".splitlines()[0], folder) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def load_model(folder: Path, dtype: str = "float32"):
    """The model in `dtype`: fp32 for full training (fp32 master weights; bf16 is autocast) and for merging LoRA;
    a LoRA run in bf16 keeps its frozen base in bf16 (half the memory; peft keeps the adapters in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    except Exception as exc:
        raise UnsupportedError(f"transformers cannot load the model: {exc}".splitlines()[0], folder) from None


def bitsandbytes_or_error():
    """bitsandbytes, importable and able to quantize on this machine, or one line saying why QLoRA cannot run."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:    # missing, or a build that cannot load its library
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ModelportError(f"--method qlora needs bitsandbytes (pip install bitsandbytes==0.50.2): {why}") from None
    return bnb


def load_quantized(folder: Path, bf16: bool = False):
    """The model with every Linear (but the output layer) in 4-bit NF4 with double quantization, ready for LoRA:
    `prepare_model_for_kbit_training` (the other weights in fp32, input gradients on), and the CPU fix below."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = bitsandbytes_or_error()
    compute = torch.bfloat16 if bf16 else torch.float32
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=config, dtype=torch.float32)
    except Exception as exc:
        raise ModelportError(f"4-bit (bitsandbytes NF4) loading failed: {exc}".splitlines()[0], folder) from None
    cpu_gradient_fix(model, bnb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def cpu_gradient_fix(model, bnb=None) -> int:
    """The silent-wrong-gradient trap (training notes): on a CPU with AVX512-BF16, the first eval-mode forward
    repacks the 4-bit weights for `gemv_4bit`, which has no autograd, so later LoRA gradients are wrong. Turning
    the repack off on every `Linear4bit` is harmless elsewhere, so it is done always. Returns the layers fixed."""
    bnb = bnb or bitsandbytes_or_error()
    fixed = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            fixed += 1
    return fixed


def wrap_lora(model, s: Settings, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=s.lora_r, lora_alpha=s.alpha(), lora_dropout=s.lora_dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():     # peft asks transformers a deprecated question; not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise UnsupportedError(f"LoRA targets {', '.join(targets)}: {exc}".splitlines()[0]) from None


def print_row(row: dict[str, Any]) -> None:
    """The plain line for one logged step, on stderr: what a run prints when nobody asked for a table."""
    print(row_line(row), file=sys.stderr, flush=True)


def row_line(row: dict[str, Any]) -> str:
    parts = [f"step {row['step']:>6}/{row['max_steps']}"]
    if "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    if "eval_loss" in row:
        parts.append(f"eval loss {row['eval_loss']:.4f}")
    if "learning_rate" in row:
        parts.append(f"lr {row['learning_rate']:.2e}")
    if "tokens_per_s" in row:
        parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
    if row.get("eta_s") is not None:
        parts.append(f"ETA {format_seconds(row['eta_s'])}")
    return "  ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Watcher:
    """A Trainer callback: one JSON object per logged step in metrics.jsonl, and each row handed to `progress`
    (the CLI's live table or plain lines; `print_row` by default, nothing when quiet). Rank 0 only."""

    def __init__(self, out: Path, tokens_per_step: float, quiet: bool, progress=None):
        self.path = out / "metrics.jsonl"
        self.tokens_per_step = tokens_per_step
        self.progress = None if quiet else (progress or print_row)
        self.rows: list[dict[str, Any]] = []
        self.last: tuple[float, int] | None = None
        self.first: tuple[float, int] | None = None
        self.started = time.perf_counter()

    def callback(self):
        from transformers import TrainerCallback

        watcher = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                watcher.last = watcher.first = (time.perf_counter(), state.global_step)
                watcher.started = watcher.last[0]

            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero:     # one writer for metrics.jsonl and the screen
                    watcher.log(state, logs or {})

        return _Callback()

    def log(self, state, logs: dict[str, Any]) -> None:
        now = time.perf_counter()
        t0, s0 = self.last or (self.started, 0)
        steps = state.global_step - s0
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                row[key] = float(logs[key])
        if "train_loss" in logs:     # the end-of-run summary, not a step
            return
        if steps > 0 and now > t0:
            row["tokens_per_s"] = round(self.tokens_per_step * steps / (now - t0), 1)
        row["elapsed_s"] = round(now - self.started, 3)
        start_time, start_step = self.first or (self.started, 0)
        done = state.global_step - start_step
        if done > 0:                 # the run's own pace so far (a resumed run's earlier steps not counted)
            row["eta_s"] = round((now - start_time) / done * max(0, state.max_steps - state.global_step), 1)
        self.last = (now, state.global_step)
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.progress is not None:
            self.progress({**row, "max_steps": state.max_steps})


class StopOnSignal:
    """Ctrl-C (SIGINT) and SIGTERM during training: finish the current step, save a checkpoint, stop cleanly.

    The handler only sets a flag; a Trainer callback sees it at the end of the step and asks Trainer to save and
    stop, so the checkpoint is a real one that `--resume` continues from. Under DDP the flag is OR-ed across ranks
    every step (each rank must save the same step). A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signal is not None:                 # the second one: the default behaviour
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signal = signum

    def stop_anywhere(self) -> bool:
        """Whether any rank was signalled (one tiny all-reduce per step under torch.distributed)."""
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1 if self.signal is not None else 0])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return self.signal is not None

    def callback(self):
        from transformers import TrainerCallback

        stopper = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if stopper.stop_anywhere():
                    control.should_save = True
                    control.should_training_stop = True
                    stopper.saved_step = state.global_step

        return _Callback()


def plot_loss(rows: list[dict[str, Any]], png: Path) -> Path | None:
    """The loss curve (train, and eval where there is one) as a PNG; None without matplotlib or losses."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def is_main_process() -> bool:
    """Rank 0 of a run under accelerate / torchrun (RANK in the environment), or a single process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def keep_rows_until(metrics: Path, step: int) -> None:
    """A resumed run's metrics.jsonl: the rows up to the checkpoint it continues from (later ones are redone)."""
    if not metrics.is_file():
        return
    lines = metrics.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        metrics.write_text("".join(line + "\n" for line in kept))


def last_checkpoint(out: Path) -> Path | None:
    points = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(points, key=lambda p: int(p.name.split("-")[-1])) if points else None


def fit(folder: Path, tokenizer, data: Dataset, out: Path, s: Settings, targets: list[str],
        progress=None) -> dict[str, Any]:
    """Train and save: DIR/model (full) or DIR/adapter (LoRA, QLoRA); returns the run's figures. `progress` gets
    each logged row (see `Watcher`). Stopped by a signal, it saves a checkpoint instead and says so
    (`interrupted`; `saved` is then that checkpoint)."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if s.method not in METHODS:
        raise UnsupportedError(f"unknown training method {s.method!r}; use one of {', '.join(METHODS)}")
    resume_from = None
    if s.resume:
        resume_from = last_checkpoint(out)
        if resume_from is None:
            raise ModelportError("--resume: no checkpoint-N folder to resume from", out)
        if is_main_process():
            keep_rows_until(out / "metrics.jsonl", int(resume_from.name.split("-")[-1]))
    bf16 = choose_bf16(s.bf16)
    set_seed(s.seed)
    if s.method == "qlora":
        model = load_quantized(folder, bf16)
    else:
        model = load_model(folder, "bfloat16" if bf16 and s.method == "lora" else "float32")
    if s.method in ("lora", "qlora"):
        model = wrap_lora(model, s, targets)
    trainable, total = count_parameters(model)
    train_set, eval_set = split(data, s.eval_split, s.seed)
    steps = steps_for(len(train_set), s)
    logging_steps = s.logging_steps or max(1, steps // 50)
    on_cpu = not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, num_train_epochs=s.epochs, learning_rate=s.learning_rate(),
        per_device_train_batch_size=s.batch, per_device_eval_batch_size=s.batch, gradient_accumulation_steps=s.grad_accum,
        warmup_steps=s.warmup_steps, lr_scheduler_type="linear", weight_decay=0.0, seed=s.seed, data_seed=s.seed,
        bf16=bf16, use_cpu=on_cpu, logging_steps=logging_steps, logging_first_step=True,
        save_strategy="steps" if s.save_steps > 0 else "no", save_steps=max(1, s.save_steps),
        eval_strategy="steps" if eval_set is not None else "no", eval_steps=logging_steps if eval_set is not None else None,
        report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
        ddp_find_unused_parameters=False, **s.extra)
    mean_len = data.tokens / max(1, len(data))
    watcher = Watcher(out, mean_len * s.batch * s.grad_accum * max(1, args.world_size), s.quiet, progress)
    stopper = StopOnSignal()
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collate(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=[watcher.callback(), stopper.callback()])
    trainer.remove_callback(PrinterCallback)     # our Watcher prints the steps; Trainer's own dicts are noise
    started = time.perf_counter()
    with stopper:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started
    interrupted = stopper.saved_step is not None
    saved = out / ("model" if s.method == "full" else "adapter")
    if interrupted:                              # the checkpoint is the save; the final folders mean "finished"
        saved = out / f"checkpoint-{stopper.saved_step}"
    else:   # every rank calls it: under FSDP / ZeRO-3 the full weights are gathered first; rank 0 writes
        trainer.save_model(str(saved))
        if trainer.is_world_process_zero():
            (saved / "training_args.bin").unlink(missing_ok=True)   # a pickle: no model folder of ours ships one
            if s.method == "full":
                copy_side_files(folder, saved)
    losses = [r["loss"] for r in watcher.rows if "loss" in r]
    ran = result.global_step - (int(resume_from.name.split("-")[-1]) if resume_from else 0)
    rates = [r["tokens_per_s"] for r in watcher.rows if "tokens_per_s" in r]
    return {"method": s.method, "steps": result.global_step, "steps_run": ran, "seconds": round(seconds, 2),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "eval_loss": next((r["eval_loss"] for r in reversed(watcher.rows) if "eval_loss" in r), None),
            "tokens_per_s": round(watcher.tokens_per_step * ran / seconds, 1) if seconds > 0 and ran > 0 else None,
            "tokens_per_s_logged": rates[-1] if rates else None,
            "trainable_parameters": trainable, "total_parameters": total, "bf16": bf16,
            "resumed_from": str(resume_from) if resume_from else None, "saved": str(saved),
            "main_process": trainer.is_world_process_zero(), "interrupted": interrupted,
            "rows": watcher.rows, "settings": {k: v for k, v in asdict(s).items() if k != "extra"}}


def copy_side_files(src: Path, dst: Path) -> None:
    """generation_config.json and a chat_template.jinja the tokenizer did not write."""
    for name in ("generation_config.json", "chat_template.jinja"):
        if (src / name).is_file() and not (dst / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


def count_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameters, as peft's `get_nb_trainable_parameters` counts them."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A held-out evaluation set of `fraction` of the examples (at least one), chosen with `seed`."""
    if not fraction or fraction <= 0:
        return data, None
    if fraction >= 1:
        raise UnsupportedError("--eval-split is a fraction below 1 (0.1 keeps 10 % for evaluation)")
    import random

    n = len(data)
    k = max(1, round(n * fraction))
    if n - k < 1:
        raise ModelportError(f"--eval-split {fraction}: {n} example(s) leave nothing to train on", data.path)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    pick = lambda keep: [e for i, e in enumerate(data.examples) if (i in held) != keep]  # noqa: E731
    return (Dataset(pick(True), data.kind, data.path, info=data.info),
            Dataset(pick(False), data.kind, data.path, info=data.info))


def merge_lora(base_folder: Path, adapter: Path, dst: Path, tokenizer) -> Path:
    """The adapter merged into a fp32 copy of the base (never into a quantized one), saved as an HF folder."""
    from peft import PeftModel

    base = load_model(base_folder, "float32")
    with warnings.catch_warnings():     # peft asks transformers a deprecated question; not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    copy_side_files(base_folder, tmp)
    if dst.exists():
        import shutil
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst
