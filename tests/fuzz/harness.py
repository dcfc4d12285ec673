"""The fuzz loop: damage a seed, then open, fully read, inspect and scan it through the public API.

A damaged file may be refused (a `ModelportError`: one line naming the file) or read; anything else is a bug:
another exception escaping (a traceback for the user), a Python allocation past `memory_bound(file size)`
(measured with tracemalloc, which NumPy reports its buffers to), a step past `TIMEOUT` seconds (SIGALRM) or a
loop in C code past `HARD_TIMEOUT` (inputs are checked in a worker process), or the interpreter dying.

    python -m tests.fuzz.harness --inputs 20000 --seed 1 [--save tests/fuzz/corpus]    # what `make fuzz` runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import modelport
from modelport.core.errors import ModelportError
from modelport.formats import hdf5

from .mutate import mutate
from .seeds import Seed, make_seeds

TIMEOUT = 45            # seconds per input in Python (SIGALRM); the seeds take milliseconds
HARD_TIMEOUT = 90       # seconds before the worker is killed
PREFLIGHT_SECONDS = 1.5  # HDF5's preflight refuses a loop after this (10 s for users): its walk of a seed (< 100 KB)
                         # takes ~30 ms, and about 1 damaged Keras file in 50 loops (each loop burns the whole deadline)
MEMORY_FLOOR = 64 << 20


def memory_bound(file_size: int) -> int:
    """What reading a file of this size may allocate: 64 MiB plus 64 bytes per byte of file (dequantizing
    4-bit blocks to float32 is 8x; the rest of the headroom is NumPy/h5py/zip buffers)."""
    return MEMORY_FLOOR + 64 * file_size


class Hang(BaseException):
    """Raised by SIGALRM; a BaseException so that no reader's `except Exception` swallows it."""


def _alarm(signum, frame):
    raise Hang()


@dataclass
class Failure:
    format: str
    target: str             # the damaged file's name
    index: int
    problem: str            # "exception" | "memory" | "hang" | "crash"
    detail: str
    data: bytes = field(repr=False, default=b"")


def exercise(path: Path) -> tuple[str, str]:
    """Scan, open, read every tensor, inspect: ('read', '') or ('refused', the one-line message). Raises whatever
    escapes."""
    modelport.scan(path)
    try:
        with modelport.open(path, trust=True) as src:
            for ref in src.values():
                arr = np.asarray(ref.read())
                arr.tobytes()                               # every byte, as a writer would pull it
            list(src.aliases)
        modelport.inspect(path, tensors=True, trust=True)
    except ModelportError as exc:
        text = str(exc)
        if "\n" in text:
            raise AssertionError(f"a ModelportError of several lines: {text!r}") from None
        return "refused", text
    return "read", ""


def _check_here(path: Path) -> tuple[str, str]:
    """(outcome, detail) of one input: 'read', 'refused', 'exception', 'memory' or 'hang'; run in the worker."""
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        outcome, detail = exercise(path)
    except Hang:
        outcome, detail = "hang", f"over {TIMEOUT} s (in Python)"
    except Exception as exc:  # noqa: BLE001 - every escaping exception is the finding
        outcome, detail = "exception", "".join(traceback.format_exception(exc)[-6:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    if outcome in ("read", "refused") and peak > memory_bound(size):
        outcome, detail = "memory", f"allocated {peak} bytes for a {size}-byte input (bound {memory_bound(size)})"
    return outcome, detail


MARK = "@@fuzz-result "
LOOP_REFUSAL = "did not finish reading the file's structure"     # hdf5.preflight's refusal of a file HDF5 loops on


class Worker:
    """A long-lived child interpreter that checks inputs one by one (`python -m tests.fuzz.harness --worker`).

    The parent waits for each answer at most `HARD_TIMEOUT` seconds: a loop inside a C library (which no signal
    interrupts) gets the worker killed and replaced, and so does a crash of the interpreter (SIGSEGV, SIGBUS from a
    map past the end). A separate process, not a fork per input: forking a process with torch loaded costs more
    than checking the input."""

    def __init__(self):
        self.proc = None

    def start(self) -> None:
        """Start the interpreter now (it takes seconds to import modelport), so that it loads while seeds are made."""
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            return
        root = Path(__file__).resolve().parents[2]
        paths = [str(Path(modelport.__file__).resolve().parents[1]), str(root), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.harness", "--worker"], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)

    def check(self, path: Path) -> tuple[str, str]:
        import select

        self.start()
        self.proc.stdin.write(str(path) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + HARD_TIMEOUT
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close()
                return "hang", f"over {HARD_TIMEOUT} s (killed: a loop in C code)"
            line = self.proc.stdout.readline()
            if not line:
                code = self.proc.wait()
                self.proc = None
                return "crash", f"the worker died (exit status {code})"
            if line.startswith(MARK):
                outcome, detail = json.loads(line[len(MARK):])
                return outcome, detail

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def serve_worker() -> None:
    """The worker's side: a path per line in, a marked JSON line out. It dies with its parent (Linux), so a run
    interrupted while a worker is stuck on an input (HDF5 can loop in C) leaves nothing spinning."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))    # PR_SET_PDEATHSIG
    hdf5.PREFLIGHT_SECONDS = PREFLIGHT_SECONDS
    out = sys.stdout
    sys.stdout = sys.stderr        # whatever the libraries print stays out of the answers
    for line in sys.stdin:
        try:
            result = _check_here(Path(line.rstrip("\n")))
        except BaseException as exc:  # noqa: BLE001
            result = ("exception", repr(exc))
        out.write(MARK + json.dumps(result) + "\n")
        out.flush()


@dataclass
class Run:
    counts: dict = field(default_factory=lambda: defaultdict(Counter))   # format -> outcome -> n
    seconds: dict = field(default_factory=lambda: defaultdict(float))    # format -> time spent checking
    failures: list = field(default_factory=list)
    loops: Counter = field(default_factory=Counter)                      # format -> refused by HDF5's preflight deadline


def corpus_name(fmt: str, target: str, tag: str) -> str:
    """A kept input's file name in tests/fuzz/corpus: which seed's which file it replaces, and where it came from."""
    return f"{fmt}~{target}~{tag}"


def make_case(seed: Seed, data: bytes, case: Path) -> Path:
    """A copy of `seed` in the new folder `case` with its target file replaced by `data`: the path to open. The
    seed's other files are hard links (no reader writes to its input); the target is a file of its own."""
    shutil.copytree(seed.root, case, copy_function=os.link)
    (case / seed.target).unlink()
    (case / seed.target).write_bytes(data)
    return case / seed.path


def replay(data: bytes, fmt: str, target: str, seeds: list, work: Path, worker: Worker) -> tuple[str, str]:
    """Check a kept input: the seed (of `seeds`) of `fmt` whose file `target` it replaces, copied into `work`."""
    seed = next(s for s in seeds if s.format == fmt and s.target.name == target)
    return worker.check(make_case(seed, data, work / "case"))


def default_workers() -> int:
    """One worker per core, at most 4: the suite's run is a few thousand inputs, each a few milliseconds."""
    return max(1, min(4, os.cpu_count() or 1))


def run(inputs: int, seed: int = 0, work: Path | None = None, formats: set[str] | None = None, log=None,
        seeds: list[Seed] | None = None, workers: int | None = None, minutes: float | None = None,
        on_failure=None) -> Run:
    """`inputs` mutated files, spread round-robin over the seeds (of `formats`, if given), from `seed`; fewer if
    `minutes` pass first. `on_failure(failure)` is called as each failure is found (`make fuzz` saves it then).

    The inputs are the same whatever `workers` is (they are drawn in order from one generator); each worker
    process checks the next one as soon as it is free, in its own folder (`work`/<index>), so every input has a
    path of its own. `seeds`: made by `make_seeds` already (the suite makes them once); else made here."""
    rng = random.Random(seed)
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="fuzz-")) if own else work
    result = Run()
    pool = [Worker() for _ in range(workers or default_workers())]
    lock = threading.Lock()
    errors: list[BaseException] = []
    stopped = threading.Event()
    try:
        for worker in pool:
            worker.start()
        if seeds is None:
            seeds = make_seeds(work / "seeds")
        seeds = [s for s in seeds if formats is None or s.format in formats]
        originals = {s.root / s.target: (s.root / s.target).read_bytes() for s in seeds}
        drawn = iter(range(inputs))
        stop = None if minutes is None else time.monotonic() + 60 * minutes

        def next_input():
            with lock:
                i = next(drawn, None)
                if i is None or (stop is not None and time.monotonic() > stop):
                    return None
                s = seeds[i % len(seeds)]
                return i, s, mutate(originals[s.root / s.target], s.kind, rng)

        def serve(worker: Worker) -> None:
            try:
                check_all(worker)
            except BaseException as exc:  # noqa: BLE001 - the harness's own failure, raised in the caller below
                errors.append(exc)

        def check_all(worker: Worker) -> None:
            while (item := next_input()) is not None:
                i, s, data = item
                case = work / f"case-{i}"
                started = time.perf_counter()
                outcome, detail = worker.check(make_case(s, data, case))
                spent = time.perf_counter() - started
                shutil.rmtree(case, ignore_errors=True)
                if stopped.is_set():    # interrupted: the workers were killed under this input, not by it
                    return
                with lock:
                    result.seconds[s.format] += spent
                    result.counts[s.format][outcome] += 1
                    result.loops[s.format] += outcome == "refused" and LOOP_REFUSAL in detail
                    done = sum(sum(c.values()) for c in result.counts.values())
                    if outcome not in ("read", "refused"):
                        result.failures.append(Failure(s.format, s.target.name, i, outcome, detail, data))
                        if on_failure:
                            on_failure(result.failures[-1])
                        if log:
                            log(f"[{i}] {s.format} {s.target.name}: {outcome}\n{detail}")
                    if log and done % 500 == 0:
                        log(f"after {done} inputs:\n{table(result)}")

        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    finally:
        stopped.set()
        for worker in pool:
            worker.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    result.failures.sort(key=lambda f: f.index)
    return result


def table(result: Run) -> str:
    """Counts per seed format; 'loops': refusals by HDF5's preflight (a file HDF5's C code loops on)."""
    lines = [f"{'format':16} {'inputs':>7} {'read':>6} {'refused':>8} {'loops':>6} {'bugs':>5} {'ms/input':>9}"]
    for fmt in sorted(result.counts):
        c = result.counts[fmt]
        bugs = sum(v for k, v in c.items() if k not in ("read", "refused"))
        lines.append(f"{fmt:16} {sum(c.values()):7} {c['read']:6} {c['refused']:8} {result.loops[fmt]:6} {bugs:5} "
                     f"{1000 * result.seconds[fmt] / max(1, sum(c.values())):9.1f}")
    total = sum((result.counts[f] for f in result.counts), Counter())
    lines.append(f"{'total':16} {sum(total.values()):7} {total['read']:6} {total['refused']:8} "
                 f"{sum(result.loops.values()):6} {sum(v for k, v in total.items() if k not in ('read', 'refused')):5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20000, help="inputs per seed")
    parser.add_argument("--seed", type=int, action="append", help="run seed (repeatable: one run after the other)")
    parser.add_argument("--minutes", type=float, help="stop each seed's run after its share of this many minutes")
    parser.add_argument("--format", action="append", help="only these seed formats (repeatable)")
    parser.add_argument("--save", type=Path, help="keep each failing input here, as it is found")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (one per core)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        serve_worker()
        return 0
    kept = set()

    def save(seed: int, f: Failure) -> None:
        """One input per distinct failure: format, kind and the exception's last line."""
        signature = (f.format, f.problem, re.sub(r"\d+", "N", f.detail.strip().splitlines()[-1])[:80])
        if args.save and signature not in kept:
            kept.add(signature)
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / corpus_name(f.format, f.target, f"{seed}-{f.index}")).write_bytes(f.data)

    failed = False
    seeds = args.seed or [1]
    for seed in seeds:
        started = time.monotonic()
        result = run(args.inputs, seed, formats=set(args.format) if args.format else None,
                     log=lambda m: print(m, file=sys.stderr, flush=True), workers=args.workers,
                     minutes=None if args.minutes is None else args.minutes / len(seeds),
                     on_failure=lambda f, seed=seed: save(seed, f))
        done = sum(sum(c.values()) for c in result.counts.values())
        print(table(result))
        print(f"{done} inputs in {time.monotonic() - started:.0f} s, seed {seed}, {args.workers} workers", flush=True)
        failed = failed or bool(result.failures)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
