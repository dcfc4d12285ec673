"""Tour step 4: the model (fine-tuned, or the base under --quick) exported to GGUF at several precisions by
modelport's own quantizer (each verified tensor by tensor), to ONNX (proved against PyTorch), with the Ollama
Modelfile beside each GGUF; then the error each quantization put in each tensor, against the F16 file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..conversion import convert
from ..gguf.modelfile import modelfile_path
from ..opening import open as open_model
from .engines import engine_threads, torch_threads
from .journal import Journal

FULL_QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q2_K")
QUICK_QUANTS = ("F16", "Q8_0", "Q4_K_M")


def gguf_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def export_gguf(journal: Journal, model: Path, folder: Path, quants: tuple[str, ...], needs: tuple[str, ...]) -> None:
    with journal.step("export_gguf", f"Export to GGUF {', '.join(quants)} (modelport's own quantizer, verified)",
                      needs=needs) as step:
        rows: dict[str, dict[str, Any]] = {}
        for quant in quants:
            path = journal.output(folder / gguf_name(quant))
            with journal.tensors(f"→ {path.name}") as progress:
                result = convert(model, path, quant=quant, verify=True, progress=progress, force=True)
            rows[quant] = {"path": str(path), "bytes": path.stat().st_size, "tensors": result.tensors,
                           "verified": result.verified, "worst_relative_rms_error": result.errors}
            worst = ", ".join(f"{t} ≤ {e:.4f}" for t, e in result.errors.items()) or "every tensor bit-exact"
            journal.say(f"{path.name}: {path.stat().st_size / 1e6:.0f} MB, {result.tensors} tensors, verified ({worst})")
        step.figures["files"] = rows


def export_onnx(journal: Journal, model: Path, folder: Path, needs: tuple[str, ...]) -> None:
    title = "Export to ONNX (KV cache; the graph proved against PyTorch)"
    with journal.step("export_onnx", title, needs=needs) as step:
        with journal.tensors("→ ONNX") as progress, torch_threads(engine_threads()):
            result = convert(model, folder, to="onnx", progress=progress, force=True)
        journal.output(folder)
        size = sum(Path(f).stat().st_size for f in result.files if Path(f).is_file())
        step.figures.update(path=str(folder), bytes=size, files=[Path(f).name for f in result.files], verified=result.verified,
                            details=result.details)
        journal.say(f"{folder}: {size / 1e6:.0f} MB ({', '.join(Path(f).name for f in result.files)})"
                    + (f"; verified against PyTorch: {verify_line(result.details)}" if result.verified else ""))


def verify_line(details: dict[str, Any]) -> str:
    check = details.get("verify") if isinstance(details, dict) else None
    if not isinstance(check, dict):
        return "ok"
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()
                     if isinstance(v, (int, float, str)))[:200]


def modelfiles(journal: Journal, folder: Path, quants: tuple[str, ...]) -> None:
    with journal.step("modelfile", "The Ollama Modelfile beside each GGUF", needs=("export_gguf",)) as step:
        files = {q: modelfile_path(folder / gguf_name(q)) for q in quants}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no Modelfile: {', '.join(missing)}")
        text = files[quants[-1]].read_text()
        step.figures.update(files={q: str(p) for q, p in files.items()}, example=text)
        journal.say(f"{files[quants[-1]]} ('ollama create smollm2-tour -f {files[quants[-1]].name}'):")
        for line in text.splitlines()[:6]:
            journal.say("  " + line)


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    reference = reference.astype(np.float32).reshape(-1)
    delta = other.astype(np.float32).reshape(-1) - reference
    return float(np.sqrt(np.dot(delta, delta) / max(float(np.dot(reference, reference)), 1e-30)))


def quant_errors(journal: Journal, folder: Path, quants: tuple[str, ...]) -> None:
    """Relative RMS error of every quantized tensor against the same tensor in the F16 file."""
    lossy = [q for q in quants if q != "F16"]
    with journal.step("quant_error", "Per-tensor quantization error against F16", needs=("export_gguf",)) as step:
        per_quant: dict[str, list[dict[str, Any]]] = {}
        with open_model(folder / gguf_name("F16")) as reference:
            names = list(reference.tensors)
            with journal.bar("dequantizing", len(names) * len(lossy)) as advance:
                for quant in lossy:
                    rows = per_quant[quant] = []
                    with open_model(folder / gguf_name(quant)) as source:
                        for name in names:
                            ref, got = reference.tensors[name], source.tensors[name]
                            if got.dtype.name not in ("F16", "F32", "BF16"):
                                rows.append({"tensor": name, "type": got.dtype.name,
                                             "error": relative_error(ref.read(), got.read())})
                            advance()
                    mean = float(np.mean([r["error"] for r in rows])) if rows else 0.0
                    worst = max(rows, key=lambda r: r["error"]) if rows else None
                    journal.say(f"{quant}: {len(rows)} quantized tensors, mean relative RMS error {mean:.4f}"
                                + (f", worst {worst['error']:.4f} ({worst['tensor']}, {worst['type']})" if worst else ""))
        step.figures["per_tensor"] = per_quant
        step.figures["mean"] = {q: float(np.mean([r["error"] for r in rows])) if rows else 0.0 for q, rows in per_quant.items()}
