"""The tour's record: each step printed as it runs, what it measured kept, report.json rewritten after every step.

A step is a `with journal.step(name, title) as step:` block. Inside it, `journal.say()` prints a line (and keeps it
for the report), `step.figures` takes the numbers, `journal.bar()` shows a progress bar. A step that raises is kept
as failed (the tour goes on: what needs it is skipped, saying why); Ctrl-C marks the step interrupted and ends the
tour, and the steps finished before it keep their outputs and their place in the report.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.atomic import atomic_file
from ..core.errors import ModelportError

#: What a library call takes as `progress` (called per tensor; `phase(name, total)` when it has one).
ProgressFactory = Callable[[str], Any]


def clip(text: str | None, width: int = 100) -> str:
    """A message or an answer as one line of at most `width` characters (the report keeps the whole text)."""
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def cpu_time() -> float:
    """CPU seconds used so far by this process and the processes it waited for (the server it started)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StepSkipped(Exception):
    """A step cannot run because one it needs did not finish; the reason names that step."""


@dataclass
class Step:
    name: str
    title: str
    status: str = "running"          # ok, failed, skipped, interrupted
    seconds: float = 0.0
    cpu_seconds: float = 0.0         # CPU time (all threads, and processes it started): the cost on a quiet machine
    lines: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


class NoBar:
    """The progress a library call gets when nobody watches: counts nothing, shows nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __call__(self, *args) -> None:
        return None

    def phase(self, name: str, total: int | None = None) -> None:
        return None


class RssPeak:
    """The highest resident memory of this process while the block runs, sampled every 50 ms (psutil)."""

    def __init__(self):
        import psutil

        self._process = psutil.Process()
        self.before = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


class Journal:
    def __init__(self, out: Path, facts: dict[str, Any], console: Console | None = None,
                 progress: ProgressFactory | None = None):
        self.out = out
        self.facts = facts
        self.console = console or Console(highlight=False)
        self.progress = progress
        self.steps: dict[str, Step] = {}
        self.current: Step | None = None
        self.started = time.perf_counter()

    # --- steps ---------------------------------------------------------------------------------------------

    @contextmanager
    def step(self, name: str, title: str, *, needs: tuple[str, ...] = ()) -> Iterator[Step]:
        """A step; if one it `needs` did not finish, it is kept as skipped and StepSkipped leaves the `with` (a
        step function's caller goes on through `run`)."""
        step = Step(name, title)
        self.steps[name] = step
        self.current = step
        self.console.print(f"\n[bold cyan]▶ {len(self.steps)}. {title}[/bold cyan]")
        missing = [n for n in needs if self.steps.get(n) is None or self.steps[n].status != "ok"]
        if missing:
            self.skipped(step, StepSkipped(f"needs the step {', '.join(missing)}, which did not finish"))
            raise StepSkipped(step.error)
        started, cpu = time.perf_counter(), cpu_time()
        try:
            yield step
            step.status = "ok"
        except StepSkipped as exc:
            self.skipped(step, exc)
        except KeyboardInterrupt:
            step.status, step.error = "interrupted", "Ctrl-C"
            raise
        except Exception as exc:   # noqa: BLE001 - one failed step is reported; the tour goes on
            step.status = "failed"
            step.error = exc.cli_text() if isinstance(exc, ModelportError) else f"{type(exc).__name__}: {exc}"
            self.console.print(f"  [red]failed:[/red] {step.error}")
        finally:
            if step.status != "skipped":
                step.seconds = round(time.perf_counter() - started, 2)
                step.cpu_seconds = round(cpu_time() - cpu, 2)
                self.current = None
                if step.status == "ok":
                    self.console.print(f"  [green]done[/green] in {step.seconds:.1f} s (CPU {step.cpu_seconds:.1f} s)")
                self.write_json()

    def skipped(self, step: Step, reason: StepSkipped) -> None:
        step.status, step.error = "skipped", str(reason)
        self.current = None
        self.console.print(f"  [yellow]skipped:[/yellow] {reason}")
        self.write_json()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call a step function (one or more steps); a step it could not start is already kept as skipped."""
        try:
            function(*args, **kwargs)
        except StepSkipped:
            pass

    def skip(self, name: str, title: str, reason: str) -> None:
        """A step that this kind of tour leaves out (e.g. training under --quick): present, and saying why."""
        with self.step(name, title):
            raise StepSkipped(reason)

    def ok(self, name: str) -> bool:
        return name in self.steps and self.steps[name].status == "ok"

    def say(self, text: str, markup: str | None = None) -> None:
        """One line under the current step: printed now, kept for the report."""
        if self.current is not None:
            self.current.lines.append(text)
        self.console.print("  " + (markup if markup is not None else text), soft_wrap=True, markup=markup is not None,
                           highlight=False)

    def output(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if self.current is not None:
            self.current.outputs.append(str(path))
        return path

    # --- progress --------------------------------------------------------------------------------------------

    def tensors(self, label: str):
        """A progress bar counted in tensors for a library call (`progress=`), from the CLI; none otherwise."""
        return self.progress(label) if self.progress is not None else NoBar()

    @contextmanager
    def bar(self, label: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress bar for a loop of `total` items; the block gets `advance(description=None)`."""
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True, disable=not self.console.is_terminal) as progress:
            task = progress.add_task(label, total=total)

            def advance(description: str | None = None, steps: int = 1) -> None:
                progress.update(task, advance=steps, **({"description": description} if description else {}))

            yield advance

    # --- the record ------------------------------------------------------------------------------------------

    def record(self, interrupted: bool = False) -> dict[str, Any]:
        return {**self.facts, "interrupted": interrupted, "seconds": round(time.perf_counter() - self.started, 1),
                "cpu_seconds": round(sum(s.cpu_seconds for s in self.steps.values()), 1),
                "ok": all(s.status in ("ok", "skipped") for s in self.steps.values()) and not interrupted
                and False not in self.facts.get("checks", {}).values(),
                "steps": {name: asdict(step) for name, step in self.steps.items()}}

    def write_json(self, interrupted: bool = False) -> Path:
        path = self.out / "report.json"
        with atomic_file(path, force=True) as tmp:
            Path(tmp).write_text(json.dumps(self.record(interrupted), indent=2, default=str) + "\n")
        return path
