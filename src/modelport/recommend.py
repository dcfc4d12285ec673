"""`recommend`: the guide's format decision tree (§6) made concrete for one model and one machine.

The guide answers by goal alone: train -> PyTorch, serve -> safetensors, CPU -> GGUF, cross-platform -> ONNX,
mobile -> TFLite/ONNX Runtime. Here the answer also names the precision or quantization, from the model's real
sizes (`modelport.estimate`) against the memory given, the command that produces the file, and what it costs.
Where today's practice differs from the guide, the answer says so in `why` (e.g. safetensors rather than a
pickled .pt for training, and GGUF for an LLM on a phone).

A command is printed only once it has been checked to run on this model: the architecture is one modelport converts
(`families`), the tokenizer GGUF needs is there, the output format is writable; otherwise the answer says what is
missing in its place (`missing`) and in `why`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from . import families
from .conversion.hf_to_gguf import model_config
from .core.errors import ModelportError, UnsupportedError
from .estimate import LADDER, QUALITY_ORDER, Device, ModelView, device_for, estimate_view, load_view, training_memory
from .formats import registry
from .gguf.tokenizer import TOKENIZER_FILES
from .opening import open as open_model

GOALS = ("train", "serve-gpu", "cpu", "mobile", "cross-platform", "share")

#: What the guide's tree says (§6.1/6.2), shown next to our answer.
GUIDE = {"train": "PyTorch (.pt/.pth)", "serve-gpu": "Hugging Face safetensors", "cpu": "GGUF",
         "cross-platform": "ONNX", "mobile": "TensorFlow Lite / ONNX Runtime", "share": "safetensors"}

#: The device assumed for a goal when neither --device nor --memory is given.
DEFAULT_DEVICE = {"train": "rtx3090", "serve-gpu": "rtx3090", "cpu": "cpu-16gb", "mobile": "phone-8gb"}

_CPU_LADDER = tuple(f for f in QUALITY_ORDER if f != "F16")           # F16 on a CPU: twice the memory, no gain
_MOBILE_LADDER = ("Q4_0", "Q3_K_M", "Q2_K")                           # Q4_0: llama.cpp repacks it for ARM at load
_FLOAT_FTYPES = (None, "ALL_F32", "F16", "BF16", "MOSTLY_F16")         # GGUF file types that are not quantized


def _stem(model: str, view: ModelView) -> str:
    path = Path(model)
    if view.kind == "config" and path.is_file():
        path = path.resolve().parent
    name = path.name if path.is_dir() else path.stem
    return name or "model"


def _writes(fmt: str) -> bool:
    try:
        return registry.get(fmt).write is not None
    except UnsupportedError:
        return False


def blockers(model: str, view: ModelView) -> dict[str, str]:
    """What would stop a command on this model, by output ("gguf", "hf"): {} when every command would run."""
    out: dict[str, str] = {}
    if not _writes("gguf"):
        out["gguf"] = "modelport cannot write GGUF in this installation"
    if not _writes("safetensors"):
        out["hf"] = "modelport cannot write safetensors in this installation"
    if view.kind == "gguf":
        if view.family is None:
            arch = view.hyper.arch if view.hyper else "unknown"
            out.setdefault("hf", f"GGUF architecture {arch!r} has no Hugging Face conversion; supported: "
                                 f"{', '.join(c.name for c in families.REGISTRY)}")
    elif view.kind == "weights" and "gguf" not in out:
        try:
            with open_model(model) as source:
                config, side = model_config(source, None)
        except ModelportError as exc:
            out["gguf"] = exc.message
            return out
        try:
            families.for_config(config)
        except UnsupportedError as exc:
            out["gguf"] = exc.message
            return out
        if not any(name in side for name in TOKENIZER_FILES[:2]):
            out["tokenizer"] = ("no tokenizer.json or tokenizer.model beside the weights: the GGUF command fails "
                                "without the tokenizer (copy it from the original model)")
    return out


def _gguf_command(model: str, view: ModelView, ftype: str, out: str,
                  blocked: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """The command that makes a `ftype` GGUF, or (None, why not)."""
    if view.kind == "config":
        return None, "a config.json has no weights: run this on the model folder"
    if blocked and "gguf" in blocked:
        return None, f"no GGUF command: {blocked['gguf']}"
    if view.kind == "gguf":
        if view.file_type == ftype:
            return None, f"the file is already {ftype}"
        if view.file_type not in _FLOAT_FTYPES:
            return None, (f"the file is already quantized ({view.file_type}); re-quantizing loses quality, "
                          "start from the F16/BF16 or Hugging Face original")
        command = f"modelport quantize {shlex.quote(model)} {shlex.quote(out)} --type {ftype}"
    else:
        command = f"modelport convert {shlex.quote(model)} {shlex.quote(out)} --quant {ftype}"
    if ftype.startswith("IQ"):       # made with an importance matrix (the IQ1/IQ2 mixes cannot be made without one)
        imatrix = shlex.quote(str(Path(out).with_suffix("")) + ".imatrix.gguf")
        command = f"modelport imatrix {shlex.quote(model)} -o {imatrix} && {command} --imatrix {imatrix}"
    return command, None


def _hf_command(model: str, view: ModelView, out: str, extra: str = "",
                blocked: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    if view.kind == "config":
        return None, "a config.json has no weights: run this on the model folder"
    if blocked and "hf" in blocked:
        return None, f"no conversion command: {blocked['hf']}"
    if view.source_format == "safetensors" and view.kind == "weights" and not extra:
        return None, "the model is already in safetensors"
    return f"modelport convert {shlex.quote(model)} {shlex.quote(out)} --to hf{extra}", None


def _pick(report: dict, ladder, dev: Device) -> str | None:
    totals = report["inference"]["total"] if report["inference"] else {f: r["bytes"] for f, r in report["weights"].items()}
    return next((f for f in ladder if totals[f] <= dev.usable), None)


def recommend(model: str | os.PathLike, goal: str, *, device: str | None = None, memory: str | int | None = None,
              ctx: int | None = None) -> dict[str, Any]:
    """Format, precision, reasons, command and size for `goal` (one of GOALS). JSON-able."""
    goal = goal.lower()
    if goal not in GOALS:
        raise UnsupportedError(f"unknown goal {goal!r}; use one of {', '.join(GOALS)}")
    model = str(model)
    view = load_view(model)
    dev = device_for(device, memory) or (device_for(DEFAULT_DEVICE[goal]) if goal in DEFAULT_DEVICE else None)
    report = estimate_view(view, model=model, ctx=ctx)
    sizes = {f: r["bytes"] for f, r in report["weights"].items()}
    bf16, f32 = 2 * view.parameter_count, 4 * view.parameter_count      # safetensors / ONNX: every tensor at 2 / 4 bytes
    totals = report["inference"]["total"] if report["inference"] else sizes
    stem = _stem(model, view)
    blocked = blockers(model, view)
    llm = view.hyper is not None
    why: list[str] = []
    out: dict[str, Any] = {"model": model, "goal": goal, "guide_says": GUIDE[goal], "parameters": view.parameter_count,
                           "device": None if dev is None else {"name": dev.name, "usable": dev.usable}}

    def answer(fmt, precision, size, need, command, note, **extra):
        if note:
            why.append(note)
        if blocked.get("tokenizer") and fmt == "GGUF" and command and command.startswith("modelport convert"):
            why.append(blocked["tokenizer"])
            command = None          # it would fail: only commands that would run are printed
        if blocked:
            extra["missing"] = blocked
        out.update({"format": fmt, "precision": precision, "size": size, "memory_needed": need,
                    "fits": None if dev is None or need is None else need <= dev.usable,
                    "command": command, "why": why, **extra})
        return out

    if goal == "train":
        why.append("the guide says PyTorch; safetensors is what PyTorch and transformers load natively for "
                   "fine-tuning, without pickle (a .pt can run code when loaded)")
        methods = {m: training_memory(view, m, grad_checkpointing=(m == "full")) for m in ("full", "lora", "qlora")}
        method = next((m for m in ("full", "lora", "qlora") if methods[m]["total"] <= dev.usable), None)
        if method is None:
            why.append(f"not even QLoRA fits {dev.description} ({methods['qlora']['total'] / 1e9:.1f} GB needed "
                       "at seq 512, batch 1); use a bigger GPU or several")
            method = "qlora"
        else:
            why.append({"full": "full fine-tuning fits (F32 weights, gradients, AdamW states, gradient checkpointing)",
                        "lora": "full fine-tuning does not fit; LoRA (r=8 on q/k/v/o/gate/up/down) on a BF16 base does",
                        "qlora": "only QLoRA fits: a 4-bit NF4 base with LoRA adapters (r=8) trained on top"}[method]
                       + f" on {dev.description}")
        command, note = _hf_command(model, view, f"{stem}-hf", " --dtype bf16" if view.kind == "gguf" else "", blocked)
        return answer("safetensors (Hugging Face folder)", "BF16", bf16, methods[method]["total"], command,
                      note, method=method, trainable_parameters=methods[method]["trainable_parameters"],
                      training=methods)

    if goal == "share":
        why.append("safetensors cannot run code when loaded, maps lazily, and is the Hugging Face Hub's default; "
                   "5 GB shards are the Hub's convention")
        command, note = _hf_command(model, view, f"{stem}-hf", " --shard-size 5GB --dtype bf16", blocked)
        return answer("safetensors (sharded Hugging Face folder)", "BF16", bf16, None, command, note)

    if goal == "cross-platform" or (goal == "mobile" and not llm):
        why.append("ONNX runs on every OS and accelerator through onnxruntime" if goal == "cross-platform" else
                   "not a transformer LLM with a known config: ONNX Runtime Mobile runs general models")
        if _writes("onnx"):
            command, note = f"modelport convert {shlex.quote(model)} {shlex.quote(stem + '.onnx')}", None
        else:
            command, note = None, ("modelport cannot write ONNX yet; export with torch.onnx.export(..., dynamo=True) "
                                   "from the Hugging Face model")
        return answer("ONNX", "F32", f32, totals["F32"], command, note)

    if goal == "serve-gpu":
        if totals["F16"] <= dev.usable:
            why.append(f"BF16 weights, KV cache and compute ({totals['F16'] / 1e9:.2f} GB) fit {dev.description}: "
                       "serve unquantized with transformers/vLLM from safetensors, as the guide says")
            command, note = _hf_command(model, view, f"{stem}-hf", " --dtype bf16" if view.kind == "gguf" else "", blocked)
            return answer("safetensors (Hugging Face folder)", "BF16", bf16, totals["F16"], command, note)
        ftype = _pick(report, LADDER[1:], dev)
        if ftype is None:
            why.append(f"even Q2_K ({totals['Q2_K'] / 1e9:.2f} GB with KV cache) does not fit {dev.description}")
            ftype = "Q2_K"
        else:
            why.append(f"BF16 needs {totals['F16'] / 1e9:.2f} GB, more than {dev.description} offers; {ftype} is the "
                       "best quantization that fits, served by llama.cpp with every layer on the GPU")
        command, note = _gguf_command(model, view, ftype, f"{stem}-{ftype}.gguf", blocked)
        return answer("GGUF", ftype, sizes[ftype], totals[ftype], command, note)

    # cpu and mobile (LLM): GGUF
    ladder = _CPU_LADDER if goal == "cpu" else _MOBILE_LADDER
    if goal == "mobile":
        why.append("the guide says TFLite/ONNX Runtime; for a transformer LLM on a phone today, llama.cpp (Android, iOS) "
                   "with a 4-bit GGUF is the practical path, and Q4_0 is the type it repacks for ARM CPUs")
    else:
        why.append("GGUF is llama.cpp's format: memory-mapped, quantized, fast on CPUs")
    if view.kind == "gguf" and view.file_type not in _FLOAT_FTYPES and report["inference"]:
        need = view.file_size + report["inference"]["kv_cache"] + report["inference"]["compute_buffer"]
        if need <= dev.usable:   # a quantized GGUF that fits: another type would only be a copy of a copy
            why.append(f"the file is already a {view.file_type} GGUF whose weights, KV cache and compute "
                       f"({need / 1e9:.2f} GB) fit {dev.description}: use it as is (re-quantizing a quantized file "
                       "loses quality; for another type start from the F16/BF16 or Hugging Face original)")
            return answer("GGUF", view.file_type, view.file_size, need, f"modelport run {shlex.quote(model)}", None)
    ftype = _pick(report, ladder, dev)
    if ftype is None:
        why.append(f"even {ladder[-1]} ({totals[ladder[-1]] / 1e9:.2f} GB with KV cache) does not fit {dev.description}")
        ftype = ladder[-1]
    else:
        why.append(f"{ftype} is the {'highest-quality' if goal == 'cpu' else 'phone-friendly'} type whose weights, "
                   f"KV cache and compute ({totals[ftype] / 1e9:.2f} GB) fit {dev.description}")
    if ftype.startswith("IQ"):
        why.append(f"{ftype} is made with an importance matrix: 'modelport imatrix' runs the model on a calibration "
                   "text first (a few minutes on a CPU), so that the quantizers keep the weights that matter most")
    command, note = _gguf_command(model, view, ftype, f"{stem}-{ftype}.gguf", blocked)
    return answer("GGUF", ftype, sizes[ftype], totals[ftype], command, note)
