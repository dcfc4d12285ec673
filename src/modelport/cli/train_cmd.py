"""`modelport train MODEL DATA --out DIR`: full, LoRA or QLoRA fine-tuning, watched step by step, exported to GGUF."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.live import Live
from rich.table import Table

from ..training import Settings, plan, train
from ..training.trainer import format_seconds, row_line
from .output import console, human_bytes, human_count, print_json

#: Rows the live table keeps on screen (the whole run is in metrics.jsonl and the loss curve).
LIVE_ROWS = 20


class TrainingView:
    """What people watch while a run trains: a live rich table (step, loss, eval loss, learning rate, tokens/s,
    ETA) on a terminal, one plain line per logged step otherwise (logs, pipes, CI)."""

    def __init__(self, live: bool):
        self.rows: list[dict] = []
        self.live = Live(self.table(), console=console, auto_refresh=False) if live else None

    def __enter__(self) -> TrainingView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if self.live is None:
            console.print(row_line(row), markup=False, highlight=False, soft_wrap=True)
        else:
            self.live.update(self.table(), refresh=True)

    def table(self) -> Table:
        table = Table(title="Training", title_justify="left", title_style="bold")
        for col in ("step", "loss", "eval loss", "learning rate", "tokens/s", "ETA"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in self.rows[-LIVE_ROWS:]:
            table.add_row(f"{r['step']}/{r['max_steps']}", f"{r['loss']:.4f}" if "loss" in r else "",
                          f"{r['eval_loss']:.4f}" if "eval_loss" in r else "",
                          f"{r['learning_rate']:.2e}" if "learning_rate" in r else "",
                          f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "",
                          format_seconds(r["eta_s"]) if r.get("eta_s") is not None else "")
        return table


def render_plan(p: dict) -> None:
    console.print(f"[bold]Plan[/bold]: {p['method']} fine-tuning of {p['model']} on {p['data']} "
                  f"({p['examples']} examples, {p['data_kind']})")
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    share = 100 * p["trainable_parameters"] / max(1, p["total_parameters"])
    table.add_row("trainable parameters", f"{p['trainable_parameters']:,} of {human_count(p['total_parameters'])} ({share:.3f} %)")
    if p["lora_targets"]:
        table.add_row("LoRA targets", ", ".join(p["lora_targets"]))
    table.add_row("tokens per epoch", f"{p['tokens_per_epoch']:,} ({p['trained_tokens_per_epoch']:,} in the loss)")
    table.add_row("steps", f"{p['steps']:,} (batch {p['batch']} x grad-accum {p['grad_accum']}, ≈ {p['epochs']} epochs)")
    table.add_row("learning rate", f"{p['learning_rate']:g}")
    m = p["memory"]
    for key in ("runtime", "weights", "lora_parameters", "gradients", "optimizer_states", "activations", "total"):
        if m.get(key):
            table.add_row(f"memory: {key.replace('_', ' ')}" + (f" ({'bf16' if m['bf16'] else 'fp32'})" if key == "total" else ""),
                          human_bytes(m[key]))
    if p["export"]:
        table.add_row("exports", ", ".join(p["export"]))
    console.print(table)
    console.print("More processes (DDP through accelerate):")
    console.print(p["accelerate"], markup=False, soft_wrap=True)


def render_summary(r: dict) -> None:
    if r["interrupted"]:
        console.print(f"[bold]Interrupted[/bold] after step {r['steps']}: checkpoint {r['saved']}", soft_wrap=True)
        return
    first, last = r["first_loss"], r["final_loss"]
    loss = f"loss {first:.4f} → {last:.4f}" if first is not None and last is not None else "no loss logged"
    rate = f", {r['tokens_per_s']:,.0f} tokens/s" if r.get("tokens_per_s") else ""
    console.print(f"[bold]Trained[/bold] {r['method']}: {r['steps_run']} steps in {r['seconds']:.1f} s{rate}, {loss}"
                  + (f", eval loss {r['eval_loss']:.4f}" if r.get("eval_loss") is not None else ""))
    console.print(f"saved {r['saved']}; metrics {r['metrics']}" + (f"; loss curve {r['loss_plot']}" if r["loss_plot"] else ""),
                  markup=False, soft_wrap=True)
    for e in r["exports"]:
        console.print(f"{e['export']}: {e['path']}", markup=False, soft_wrap=True)
        console.print(f"  {e['run']}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        model: Path = typer.Argument(..., help="Hugging Face folder (or a GGUF, converted to one first)."),
        data: Path = typer.Argument(..., help=".txt (continued pre-training) or .jsonl (text, prompt/response, "
                                                "instruction/input/output, or chat messages)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: checkpoints, metrics, model, exports."),
        method: str = typer.Option("lora", "--method", help="full, lora, or qlora (LoRA on a 4-bit NF4 base; needs bitsandbytes)."),
        max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs)."),
        epochs: float = typer.Option(1.0, "--epochs", help="Passes over the data."),
        lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 2e-5 full, 2e-4 LoRA)."),
        batch: int = typer.Option(4, "--batch", help="Sequences per step and process."),
        grad_accum: int = typer.Option(1, "--grad-accum", help="Steps whose gradients add up before each update."),
        seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence (.txt is packed into blocks this long)."),
        lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
        lora_alpha: int | None = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 2 x rank)."),
        lora_dropout: float = typer.Option(0.0, "--lora-dropout", help="LoRA dropout."),
        target_modules: str | None = typer.Option(None, "--target-modules",
                                                  help="LoRA target modules, comma-separated (default: the family's)."),
        seed: int = typer.Option(0, "--seed", help="Seed for initialisation, shuffling and dropout."),
        bf16: bool | None = typer.Option(None, "--bf16/--fp32",
                                         help="Precision (default: bf16 only where the CPU has avx512_bf16/amx_bf16, or CUDA)."),
        eval_split: float = typer.Option(0.0, "--eval-split", help="Fraction of examples held out for evaluation."),
        save_steps: int = typer.Option(500, "--save-steps", help="Checkpoint every N steps (0: only the final model)."),
        logging_steps: int | None = typer.Option(None, "--logging-steps", help="Log every N steps (default: ~50 lines a run)."),
        warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up steps."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
        export: list[str] | None = typer.Option(None, "--export",
                                                help="Export the result: safetensors, gguf, gguf:q8_0, gguf:q4_k_m, ... (repeatable)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (parameters, memory, tokens, steps) and stop."),
        force: bool = typer.Option(False, "--force", help="Start over in a non-empty --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the plan or the summary as JSON."),
    ) -> None:
        """Fine-tune a model (full, LoRA or QLoRA) on a text or JSONL file, and export it to GGUF."""
        settings = Settings(max_steps=max_steps, epochs=epochs, lr=lr, batch=batch, grad_accum=grad_accum, seq_len=seq_len,
                            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=[t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None,
                            seed=seed, bf16=bf16, eval_split=eval_split, save_steps=save_steps, logging_steps=logging_steps,
                            warmup_steps=warmup_steps, resume=resume, quiet=as_json)
        if dry_run:
            p = plan(model, data, out, method=method, export=export or [], settings=settings)
            print_json(p) if as_json else render_plan(p)
            return
        with TrainingView(live=console.is_terminal) as view:
            r = train(model, data, out, method=method, export=export or [], force=force, settings=settings,
                      progress=None if as_json else view)
        if not r["main_process"]:   # another rank of a multi-process run: rank 0 reports
            if r["interrupted"]:
                raise typer.Exit(130)
            return
        print_json(r) if as_json else render_summary(r)
        if r["interrupted"]:
            print(f"modelport: interrupted: checkpoint {r['saved']} saved; resume with: {r['resume']}", file=sys.stderr)
            raise typer.Exit(130)
