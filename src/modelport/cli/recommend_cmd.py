"""`modelport recommend MODEL --goal G`: which format and quantization, why, the command, and the size."""

from __future__ import annotations

from pathlib import Path

import typer

from ..estimate import DEVICES
from ..recommend import GOALS, recommend
from .output import console, human_bytes, print_json


def register(app: typer.Typer) -> None:
    @app.command("recommend")
    def recommend_cmd(
        model: Path = typer.Argument(..., help="A model file, folder, GGUF, or a bare config.json."),
        goal: str = typer.Option(..., "--goal", help=f"What for: {', '.join(GOALS)}."),
        device: str = typer.Option(None, "--device", help=f"Target machine: {', '.join(DEVICES)}."),
        memory: str = typer.Option(None, "--memory", help="Memory available, e.g. 12GB (instead of --device)."),
        ctx: int = typer.Option(None, "--ctx", help="Context length to plan the KV cache for."),
        as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
    ) -> None:
        """Recommend a format and quantization for a goal (the guide's decision tree, made concrete)."""
        r = recommend(model, goal, device=device, memory=memory, ctx=ctx)
        if as_json:
            print_json(r)
            return
        size = f"{human_bytes(r['size'])}"
        if r["memory_needed"] is not None:
            size += f" on disk, {human_bytes(r['memory_needed'])} in use"
        console.print(f"[bold]{r['format']}[/bold], {r['precision']}"
                      + (f", {r['method']}" if r.get("method") else "") + f" — {size}"
                      + ("" if r["fits"] is None else (" [green](fits)[/green]" if r["fits"] else " [red](does not fit)[/red]")))
        console.print(f"the guide says: {r['guide_says']}")
        for reason in r["why"]:
            console.print(f"  • {reason}")
        if r["command"]:
            console.print(f"[bold]run:[/bold] {r['command']}", soft_wrap=True)
