"""Tour step 2: the same weights through every format: GGUF → HF folder, the guide's three PyTorch shapes and back,
HDF5, NumPy and Flax msgpack, each read back and compared tensor by tensor with `diff`.

The three `.pt` shapes are made the way people make them, with torch itself: `torch.save(model)` (a whole pickled
model: refused, with the reason), `torch.save(model.state_dict())`, and a training checkpoint
`{"epoch", "model_state_dict", "optimizer_state_dict"}` of a fine-tune that trains the top decoder block and the
final norm (the rest frozen, as people fine-tune on small machines): its AdamW moments come from one step at
learning rate 0 on a few tokens (so they are real and the weights have not moved), at a fraction of the cost of
moments for every weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..comparison import diff
from ..conversion import convert
from ..core.errors import ModelportError
from ..opening import open as open_model
from ..writing import save
from .engines import engine_threads, torch_threads
from .journal import Journal, clip

CHECKPOINT_PREFIX = "model_state_dict."
OTHER_FORMATS = (("HDF5", "model.h5"), ("NumPy", "model.npz"), ("Flax msgpack", "model.msgpack"))


def to_hf(journal: Journal, gguf: Path, hf: Path) -> None:
    with journal.step("gguf_to_hf", "GGUF → Hugging Face folder (dequantized, tokenizer rebuilt)") as step:
        with journal.tensors("GGUF → HF") as progress:
            result = convert(gguf, hf, to="hf", progress=progress)
        journal.output(hf)
        step.figures.update(tensors=result.tensors, bytes=result.bytes_written, files=[Path(f).name for f in result.files])
        journal.say(f"{hf}: {result.tensors} tensors, {result.bytes_written / 1e6:.0f} MB, "
                    + ", ".join(Path(f).name for f in result.files))


def same(a: Path, b: Path) -> dict[str, Any]:
    """`diff` A B with no tolerance: equal only if every tensor is bit for bit the same and none is missing."""
    report = diff(a, b)
    statuses: dict[str, int] = {}
    for t in report.tensors:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    exact = report.equal and set(statuses) <= {"equal"}
    return {"bit_exact": exact, "tensors": len(report.tensors), "statuses": statuses, "only_in_a": report.only_in_a,
            "only_in_b": report.only_in_b}


def refusal_of(path: Path, trust: bool) -> str | None:
    """Why modelport will not open `path` (None: it opens)."""
    try:
        open_model(path, trust=trust).close()
    except ModelportError as exc:
        return exc.cli_text().replace(f"{path}: ", "")
    return None


def say_round_trip(journal: Journal, label: str, row: dict[str, Any]) -> None:
    verdict = "bit-exact" if row["bit_exact"] else f"DIFFERENT {row['statuses']}"
    journal.say(f"{label}: {row['tensors']} tensors {verdict}")


def pytorch(journal: Journal, hf: Path, folder: Path) -> None:
    with journal.step("pytorch", "The guide's three PyTorch shapes, and back to safetensors", needs=("gguf_to_hf",)) as step:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        folder.mkdir(parents=True, exist_ok=True)
        weights = hf / "model.safetensors"
        state = load_file(str(weights))
        whole, plain, checkpoint = folder / "whole-model.pt", folder / "state_dict.pt", folder / "checkpoint.pt"

        with torch_threads(engine_threads()):
            model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, local_files_only=True)
        torch.save(model, whole)
        scanned, refusal = refusal_of(whole, trust=False), refusal_of(whole, trust=True)
        step.figures["whole_model"] = {"path": str(whole), "refused": refusal is not None, "reason": refusal, "scan": scanned}
        journal.say(f"torch.save(model) → {whole.name}: the scanner holds it back ({clip(scanned or 'ACCEPTED', 80)}); "
                    f"even with --trust the reader refuses it: {clip(refusal or 'ACCEPTED', 110)}")

        torch.save(state, plain)
        trained = top_block(model)
        trained_count = sum(p.numel() for p in trained)
        optimizer = torch.optim.AdamW(trained, lr=0.0, weight_decay=0.0, foreach=True)
        batch = torch.arange(4).unsqueeze(0)      # a gradient is a gradient: a few tokens make real moments
        with torch_threads(engine_threads()):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
        torch.save({"epoch": 1, "global_step": 1, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict()},
                   checkpoint)
        del model, optimizer, trained
        journal.say(f"torch.save(state_dict) → {plain.name} ({plain.stat().st_size / 1e6:.0f} MB); training checkpoint with "
                    f"AdamW moments for the top block ({trained_count / 1e6:.1f} M parameters) → "
                    f"{checkpoint.name} ({checkpoint.stat().st_size / 1e6:.0f} MB)")
        for path in (whole, plain, checkpoint):
            journal.output(path)

        trips: dict[str, dict[str, Any]] = {}
        back = folder / "from-state_dict.safetensors"
        with journal.tensors("state_dict.pt → safetensors") as progress:
            convert(plain, back, progress=progress)
        trips["state_dict"] = same(weights, back)
        say_round_trip(journal, f"{plain.name} → {back.name}, diff against {weights.name}", trips["state_dict"])

        with open_model(checkpoint) as source:
            named = {n[len(CHECKPOINT_PREFIX):]: ref for n, ref in source.tensors.items() if n.startswith(CHECKPOINT_PREFIX)}
            optimizer_tensors = sum(1 for n in source.tensors if n.startswith("optimizer_state_dict."))
            back = folder / "from-checkpoint.safetensors"
            save(named, back)
        trips["checkpoint"] = same(weights, back)
        trips["checkpoint"]["optimizer_tensors_left_out"] = optimizer_tensors
        say_round_trip(journal, f"{checkpoint.name} (model_state_dict; {optimizer_tensors} optimizer tensors left out) → "
                       f"{back.name}", trips["checkpoint"])
        step.figures["round_trips"] = trips
        if refusal is None or not all(t["bit_exact"] for t in trips.values()):
            raise ModelportError("a PyTorch round trip was not exact, or the whole-model pickle was accepted", folder)


def top_block(model) -> list:
    """The parameters a top-block fine-tune trains (the last decoder layer and the final norm); the others frozen."""
    top = f"model.layers.{model.config.num_hidden_layers - 1}."
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith((top, "model.norm.")))
        if parameter.requires_grad:
            trained.append(parameter)
    return trained


def other_formats(journal: Journal, hf: Path, folder: Path) -> None:
    with journal.step("formats", "The same weights as HDF5, NumPy and Flax msgpack, read back", needs=("gguf_to_hf",)) as step:
        weights = hf / "model.safetensors"
        trips: dict[str, dict[str, Any]] = {}
        for label, name in OTHER_FORMATS:
            path = journal.output(folder / name)
            with journal.tensors(f"→ {name}") as progress:
                result = convert(weights, path, progress=progress)
            trips[result.format] = {**same(weights, path), "bytes": result.bytes_written, "path": str(path)}
            say_round_trip(journal, f"{label} {name} ({result.bytes_written / 1e6:.0f} MB), diff against {weights.name}",
                           trips[result.format])
        step.figures["round_trips"] = trips
        if not all(t["bit_exact"] for t in trips.values()):
            raise ModelportError("a format round trip was not exact", folder)
