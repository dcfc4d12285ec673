"""`modelport estimate MODEL`: GGUF sizes per quantization, KV cache, inference total, training memory, what fits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..estimate import DEVICES, estimate
from .output import console, human_bytes, human_count, print_json


def render(r: dict) -> None:
    head = f"[bold]{r['model']}[/bold]: {human_count(r['parameters'])} parameters, {r['tensors']} tensors"
    if r["source"] == "config":
        head += " (from config.json alone)"
    else:
        head += f" ({r['format']} {r['file_type'] or ''}".rstrip() + f", {human_bytes(r['file_size'])})"
    console.print(head)
    inf, dev = r["inference"], r.get("device")
    table = Table(title="GGUF file per quantization (llama-quantize's per-tensor types)", title_justify="left",
                  title_style="bold")
    for col in ("type", "file size", "GiB", "bpw"):
        table.add_column(col, justify="left" if col == "type" else "right", no_wrap=True)
    if inf:
        table.add_column("running", justify="right", no_wrap=True)   # + runtime, KV cache, compute buffer
    if dev:
        table.add_column(f"fits {dev['name']}", justify="center", no_wrap=True)
    table.add_column("tensor types")
    for ftype, row in r["weights"].items():
        cells = ["F16/BF16" if ftype == "F16" else ftype, human_bytes(row["bytes"]), f"{row['bytes'] / (1 << 30):.2f}",
                 f"{row['bits_per_weight']:.2f}" if row["bits_per_weight"] else "-"]
        if inf:
            cells.append(human_bytes(inf["total"][ftype]))
        if dev:
            cells.append("[green]yes[/green]" if dev["fits"][ftype] else "[red]no[/red]")
        cells.append(" ".join(f"{k}×{v}" for k, v in row["tensor_types"].items()))
        table.add_row(*cells)
    console.print(table)
    ex = r.get("experts")
    if ex:
        q = "Q4_K_M" if "Q4_K_M" in ex["per_expert_bytes"] else next(iter(ex["per_expert_bytes"]))
        console.print(f"Mixture of experts: {ex['count']} experts, {ex['used']} per token: "
                      f"{human_count(ex['active_parameters'])} of {human_count(ex['total_parameters'])} parameters "
                      f"active per token; one expert {human_count(ex['per_expert_parameters'])} parameters = "
                      f"{human_bytes(ex['per_expert_bytes'][q])} at {q}, a token reads "
                      f"{human_bytes(ex['active_bytes'][q])} of the weights")
    if inf:
        console.print(f"KV cache: {human_bytes(inf['kv_cache'])} ({inf['kv_type']}, ctx {inf['ctx']}, batch {inf['batch']}); "
                      f"compute buffer ≈ {human_bytes(inf['compute_buffer'])}; llama.cpp runtime ≈ {human_bytes(inf['runtime'])}"
                      " (running = weights + these)")
    else:
        console.print("KV cache: unknown (no config with layers and heads)")
    t = r.get("training")
    if t:
        console.print(f"[bold]Training[/bold]: {t['method']}, {t['optimizer']}, {'bf16' if t['bf16'] else 'fp32'}, "
                      f"seq {t['seq_len']}, batch {t['batch']}"
                      + (", gradient checkpointing" if t["grad_checkpointing"] else "")
                      + (f", LoRA r={t['lora_r']}" if t["lora_r"] else ""))
        table = Table()
        table.add_column("part")
        table.add_column("memory", justify="right")
        for key in ("runtime", "weights", "lora_parameters", "gradients", "optimizer_states", "activations", "total"):
            if t[key] is not None and (t[key] or key != "lora_parameters"):
                table.add_row(key.replace("_", " "), human_bytes(t[key]))
        console.print(table)
        console.print(f"trainable parameters: {t['trainable_parameters']:,} of {t['total_parameters']:,} "
                      f"({100 * t['trainable_parameters'] / max(1, t['total_parameters']):.3f} %)")
    if dev:
        best = dev["best"]
        line = f"{dev['description']} (usable {human_bytes(dev['usable'])}): "
        line += f"best that fits: [bold]{best}[/bold]" if best else "[red]no quantization fits[/red]"
        if t:
            line += "; training " + ("[green]fits[/green]" if dev["training_fits"] else "[red]does not fit[/red]")
        console.print(line)


def register(app: typer.Typer) -> None:
    @app.command("estimate")
    def estimate_cmd(
        model: Path = typer.Argument(..., help="A model file, folder, GGUF, or a bare config.json."),
        ctx: int = typer.Option(None, "--ctx", help="Context length for the KV cache (default: the model's, at most 4096)."),
        batch: int = typer.Option(1, "--batch", help="Sequences at once (inference and training)."),
        kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0, q4_0, f32, ..."),
        method: str = typer.Option(None, "--method", help="Also estimate training: full, lora or qlora."),
        lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank."),
        lora_targets: str = typer.Option(None, "--lora-targets",
                                         help="LoRA target modules (comma-separated), or all-linear "
                                              "(default: the model family's attention and MLP projections)."),
        seq_len: int = typer.Option(512, "--seq-len", help="Training sequence length."),
        optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw8bit or sgd."),
        grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in backward."),
        bf16: bool | None = typer.Option(None, "--bf16/--fp32",
                                         help="Training precision (default: as `train` chooses: bf16 for a GPU --device, "
                                              "else bf16 only where this CPU has avx512_bf16/amx_bf16)."),
        device: str = typer.Option(None, "--device", help=f"Check what fits: {', '.join(DEVICES)}."),
        memory: str = typer.Option(None, "--memory", help="Check what fits in this much memory, e.g. 12GB."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    ) -> None:
        """How much memory a model needs: GGUF size at each quantization, KV cache, training, what fits a device."""
        report = estimate(model, ctx=ctx, batch=batch, kv_type=kv_type, method=method, lora_r=lora_r,
                          lora_targets=[t.strip() for t in lora_targets.split(",") if t.strip()] if lora_targets else None,
                          seq_len=seq_len,
                          optimizer=optimizer, grad_checkpointing=grad_checkpointing, device=device, memory=memory,
                          bf16=bf16)
        if as_json:
            print_json(report)
        else:
            render(report)
