"""Tour step 1: look at the model (inspect, scan), then a booby-trapped `.pt` that every command refuses.

The trap is what a malicious checkpoint does, made harmless: unpickling it would call `open(MARKER, "w")`, which
creates an empty file. No command runs its pickle, so the marker never appears; the tour checks that at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.markup import escape

from ..check import check
from ..comparison import diff
from ..conversion import convert
from ..core.errors import ModelportError
from ..estimate import estimate
from ..inspection import inspect
from ..opening import open as open_model
from ..recommend import recommend
from ..runtime import load
from ..security import scan
from ..training import train
from .journal import Journal, clip

MARKER = "MARKER-the-payload-ran"


def look(journal: Journal, model: Path) -> None:
    with journal.step("inspect", "Inspect the GGUF (headers only)") as step:
        info = inspect(model)
        config = info.get("config") or {}
        step.figures.update(format=info["format"], file_size=info["file_size"], tensors=info["tensor_count"],
                            parameters=info["parameter_count"], dtypes={k: v["tensors"] for k, v in info["dtypes"].items()},
                            architecture=config.get("architecture"), layers=config.get("layers"),
                            context_length=config.get("context_length"))
        journal.say(f"{model.name}: {info['format']}, {info['tensor_count']} tensors, {info['parameter_count'] / 1e6:.1f} M "
                    f"parameters, {info['file_size'] / 1e6:.1f} MB")
        journal.say("types: " + ", ".join(f"{k} × {v['tensors']}" for k, v in info["dtypes"].items())
                    + f"; {config.get('architecture')}, {config.get('layers')} layers, context {config.get('context_length')}")
    with journal.step("scan", "Scan it for code that would run on load") as step:
        report = scan(model)
        step.figures.update(verdict=report.verdict, findings=len(report.findings))
        journal.say(f"verdict: {report.verdict} ({len(report.findings)} findings)")


class Trap:
    """Pickled as a call to `open(marker, "w")`: what would run if anything unpickled the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def make_trap(folder: Path) -> tuple[Path, Path]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER
    trap = folder / "booby-trapped.pt"
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4), "config": Trap(marker)}, trap)
    return trap, marker


def refusals(trap: Path, scratch: Path, data: Path) -> dict[str, Callable[[], Any]]:
    """Every command that reads a model, called on the trap as a user would."""
    return {
        "scan": lambda: scan(trap),
        "open": lambda: open_model(trap).close(),
        "inspect": lambda: inspect(trap),
        "check": lambda: check(trap),
        "convert": lambda: convert(trap, scratch / "out.safetensors"),
        "diff": lambda: diff(trap, trap),
        "estimate": lambda: estimate(trap),
        "recommend": lambda: recommend(trap, "cpu"),
        "run": lambda: load(trap).close(),
        "train": lambda: train(trap, data, scratch / "train"),
    }


def booby_trap(journal: Journal, folder: Path, data: Path) -> None:
    with journal.step("booby_trap", "A booby-trapped .pt: every command refuses it, nothing runs") as step:
        trap, marker = make_trap(folder)
        journal.output(trap)
        journal.say(f"{trap.name}: a state_dict whose pickle would call open({MARKER!r}, 'w') when loaded")
        results: dict[str, dict[str, Any]] = {}
        for command, call in refusals(trap, folder / "scratch", data).items():
            try:
                value = call()
            except ModelportError as exc:
                results[command] = {"refused": True, "exit_code": exc.exit_code, "message": exc.cli_text()}
            else:
                flagged = command == "scan" and value.verdict == "dangerous"
                results[command] = {"refused": flagged, "exit_code": 1 if flagged else 0,
                                    "message": f"verdict: {value.verdict}; " + "; ".join(f"{f.what}: {f.why}" for f in value.findings[:1])
                                    if command == "scan" else "accepted"}
            row = results[command]
            why = clip(row["message"].replace(f"{trap}: ", "").replace(f"{trap.stem}/", ""))
            mark = "[green]refused[/green]" if row["refused"] else "[red]ACCEPTED[/red]"
            journal.say(f"{command:9} {'refused' if row['refused'] else 'ACCEPTED'} (exit {row['exit_code']}): {why}",
                        markup=f"{command:9} {mark} (exit {row['exit_code']}): {escape(why)}")
        created = marker.exists()
        step.figures.update(commands=results, all_refused=all(r["refused"] for r in results.values()),
                            marker=str(marker), marker_created=created)
        journal.say(f"marker file created: {created}")
        if created or not step.figures["all_refused"]:
            raise ModelportError("a command accepted the booby-trapped file" if not created else "the payload ran", trap)

