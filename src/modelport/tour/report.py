"""The tour's report: `report.html`, one self-contained page (tables, and plots as inline base64 PNG drawn by
matplotlib: nothing is fetched from anywhere), beside `report.json` (every figure). Written at the end, and on
Ctrl-C with the steps finished so far.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_file

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.1em} .sub{color:#666;margin-top:0}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:13.5px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#18794e;font-weight:600} .failed,.interrupted{color:#c62828;font-weight:600} .skipped{color:#a15c00;font-weight:600}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12.5px;margin:.3em 0}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em} .plots figure{margin:0} figcaption{color:#555;font-size:13px}
img{max-width:100%;border:1px solid #eee}
"""


def png(figure) -> str:
    """A matplotlib figure as a data: URL (PNG), closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figures_of(record: dict[str, Any], step: str) -> dict[str, Any]:
    s = record["steps"].get(step)
    return s["figures"] if s and s.get("status") == "ok" else {}


def plots(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(caption, data URL) for each plot the finished steps allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    measured = [r for r in figures_of(record, "measure").get("artefacts", [])]
    gguf = [r for r in measured if r["engine"] == "llama" and r.get("quant")]
    if gguf:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in gguf:
            ax.scatter(r["bytes"] / 1e6, r["perplexity"], s=60)
            ax.annotate(f"{r['quant']} ({r['weights']})", (r["bytes"] / 1e6, r["perplexity"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=9)
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel("perplexity on the held-out text")
        ax.set_title("Size vs perplexity per GGUF quantization")
        ax.grid(alpha=.3)
        out.append(("Smaller files cost perplexity: each GGUF the tour wrote, measured by llama.cpp.", png(fig)))
    per_tensor = figures_of(record, "quant_error").get("per_tensor", {})
    if per_tensor:
        fig, ax = plt.subplots(figsize=(6, 4))
        for quant, rows in per_tensor.items():
            ax.plot(range(len(rows)), [r["error"] for r in rows], marker=".", linewidth=.8, markersize=3, label=quant)
        ax.set_yscale("log")
        ax.set_xlabel("tensor (file order)")
        ax.set_ylabel("relative RMS error vs F16")
        ax.set_title("Per-tensor quantization error")
        ax.legend()
        ax.grid(alpha=.3)
        out.append(("Each quantized tensor's relative RMS error against the F16 file (log scale).", png(fig)))
    curve = figures_of(record, "finetune").get("loss_curve", [])
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in curve], [r["loss"] for r in curve], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("LoRA fine-tune: training loss")
        ax.grid(alpha=.3)
        out.append(("The loss on the built-in instruction set, logged every two steps.", png(fig)))
    if measured:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [f"{r['name']}" for r in measured]
        colors = {"llama": "#1f77b4", "hf": "#ff7f0e", "onnx": "#2ca02c"}
        ax.barh(labels, [r["tokens_per_s"] or 0 for r in measured], color=[colors[r["engine"]] for r in measured])
        ax.set_xlabel("generated tokens/s (greedy, this machine)")
        ax.set_title("Tokens/s per engine and artefact")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        out.append(("Generation speed: llama.cpp (blue), transformers (orange), onnxruntime (green).", png(fig)))
    memory = memory_rows(record)
    if memory:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [m["label"] for m in memory]
        ys = range(len(memory))
        ax.barh([y - .2 for y in ys], [m["estimated"] / 1e9 for m in memory], height=.4, label="estimate")
        ax.barh([y + .2 for y in ys], [(m["measured"] or 0) / 1e9 for m in memory], height=.4, label="measured")
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("GB")
        ax.set_title("Memory: estimate next to what was measured")
        ax.legend()
        out.append(("estimate's memory per method (training: full, LoRA, QLoRA; running: per engine) next to the peak "
                    "resident memory the tour measured where it ran that method.", png(fig)))
    return out


def memory_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """estimate's figure per method for this model, with what the tour measured where it ran the method."""
    models = figures_of(record, "estimate").get("models", {})
    this = next(iter(models.values()), None)
    if this is None:
        return []
    tuned = figures_of(record, "finetune")
    rows = [{"label": f"train {m}", "estimated": t["total"], "measured": tuned.get("peak_rss_bytes") if m == "lora" else None}
            for m, t in this["training"].items()]
    for r in figures_of(record, "measure").get("artefacts", []):
        if r.get("estimated_bytes"):
            rows.append({"label": f"run {r['name']}", "estimated": r["estimated_bytes"], "measured": r["load_rss_bytes"]})
    return rows


def mb(n: float | None) -> str:
    return "" if n is None else f"{n / 1e6:,.1f} MB"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        text = f"{v:,.4g}" if isinstance(v, float) else str(v if v is not None else "")
        return f"<td class=n>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_rows(record: dict[str, Any]) -> list[list[Any]]:
    """The artefact table: what the terminal summary and the page both show."""
    return [[r["name"], r["engine_name"], mb(r["bytes"]), round(r["load_s"], 2), r["tokens_per_s"], round(r["perplexity"], 3),
             f"{100 * r['argmax_agreement']:.1f} %", round(r["mean_kl"], 4)]
            for r in figures_of(record, "measure").get("artefacts", [])]


SUMMARY_HEADERS = ["artefact", "engine", "size", "load s", "tokens/s", "perplexity", "agrees with F16", "mean KL"]


def render(record: dict[str, Any]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>modelport tour</title><style>{CSS}</style></head><body>",
             "<h1>modelport tour</h1>",
             f"<p class=sub>{html.escape(record['model'])} · {'quick' if record['quick'] else 'full'} tour · "
             f"{record['seconds']:.0f} s · {html.escape(record['machine'])}"
             + (" · <span class=interrupted>interrupted: a partial report</span>" if record["interrupted"] else "") + "</p>"]
    parts.append("<h2>Steps</h2>" + table(["#", "step", "status", "seconds", "CPU seconds"], [
        [i + 1, s["title"], s["status"] + (f": {s['error']}" if s.get("error") else ""), s["seconds"], s.get("cpu_seconds")]
        for i, s in enumerate(record["steps"].values())]).replace("<td>ok</td>", "<td class=ok>ok</td>"))
    rows = summary_rows(record)
    if rows:
        parts.append("<h2>Artefacts</h2>" + table(SUMMARY_HEADERS, rows))
    shown = plots(record)
    if shown:
        parts.append("<h2>Plots</h2><div class=plots>" + "".join(
            f"<figure><img alt='{html.escape(c)}' src='{u}'><figcaption>{html.escape(c)}</figcaption></figure>" for c, u in shown)
            + "</div>")
    answers = figures_of(record, "answers").get("answers", [])
    if answers:
        parts.append("<h2>Answers</h2>" + table(["artefact", "engine", "weights", "question", "answer"],
                                                [[a["name"], a["engine_name"], a["weights"], a["question"], a["answer"]] for a in answers]))
    memory = memory_rows(record)
    if memory:
        parts.append("<h2>Memory</h2>" + table(["method", "estimate", "measured"],
                                               [[m["label"], mb(m["estimated"]), mb(m["measured"])] for m in memory]))
    parts.append("<h2>Every step, as printed</h2>")
    for i, s in enumerate(record["steps"].values()):
        parts.append(f"<h3>{i + 1}. {html.escape(s['title'])} <span class={s['status']}>{s['status']}</span></h3>")
        text = "\n".join(s["lines"]) + (f"\n{s['error']}" if s.get("error") else "")
        if text.strip():
            parts.append(f"<pre>{html.escape(text)}</pre>")
    parts.append("<p class=sub>Every figure is in report.json beside this page.</p></body></html>")
    return "\n".join(parts)


def write_html(record: dict[str, Any], out: Path) -> Path:
    path = out / "report.html"
    with atomic_file(path, force=True) as tmp:
        Path(tmp).write_text(render(record), encoding="utf-8")
    return path
