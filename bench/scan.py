"""Scanner shoot-out: modelport vs picklescan, modelscan and fickling on the test corpus, in one run.

    .venv/bin/python bench/scan.py [--keep DIR] [--details] [--big-gb 2]

Writes the corpus (tests/security/corpus.py: malicious samples with harmless payloads, benign files
made by the real libraries) to a temporary folder, runs every scanner on every sample through its
Python API, and prints detection rate, false-positive rate, errors and time per scanner, twice: counting
a sample as flagged when the tool's CLI would exit non-zero (findings, or an error it reports), and
counting findings only. `--big-gb N` also times a scan of
an N GB torch checkpoint. Nothing here loads a sample.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.security import corpus  # noqa: E402


def _modelport(path: Path):
    from modelport.security import scan
    r = scan(path)
    return r.verdict != "safe", False


def _picklescan(path: Path):
    from picklescan.scanner import scan_file_path
    r = scan_file_path(str(path))
    return bool(r.infected_files or r.issues_count), bool(r.scan_err)


def _modelscan(path: Path):
    from modelscan.modelscan import ModelScan
    r = ModelScan().scan(path)
    issues = r.get("issues") or []
    errors = r.get("errors") or []
    return bool(issues), bool(errors)


def _fickling(path: Path):
    import fickling
    r = fickling.scan_file(str(path), graceful=True)
    return not r.is_safe, bool(r.errors)


def _pickle_family(sample) -> bool:
    return not sample.name.endswith((".safetensors", ".gguf", ".onnx", ".h5", ".keras", ".pb"))


TOOLS = {"modelport": (_modelport, "modelport"), "picklescan": (_picklescan, "picklescan"),
         "modelscan": (_modelscan, "modelscan"), "fickling": (_fickling, "fickling")}


def run_tool(fn, path: Path):
    sink = io.StringIO()
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            found, error = fn(path)
    except Exception:
        found, error = False, True       # the CLI would exit non-zero with a traceback
    return found, error, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    ap.add_argument("--details", action="store_true", help="list what each scanner missed or wrongly flagged")
    ap.add_argument("--big-gb", type=float, default=0, help="also time a scan of a torch checkpoint this big")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        mal, ben = corpus.malicious(root / "malicious"), corpus.benign(root / "benign")
        print(f"corpus: {len(mal)} malicious samples, {len(ben)} benign files")
        rows, pickle_rows = [], []
        for name, (fn, dist) in TOOLS.items():
            try:
                version = metadata.version(dist) if name != "modelport" else metadata.version("modelport")
            except metadata.PackageNotFoundError:
                print(f"{name}: not installed, skipped")
                continue
            res = {s.name: run_tool(fn, s.path) for s in mal + ben}
            flag = {k: r[0] or r[1] for k, r in res.items()}
            hit = sum(flag[s.name] for s in mal)
            fp = sum(flag[s.name] for s in ben)
            hit_f = sum(res[s.name][0] for s in mal)
            fp_f = sum(res[s.name][0] for s in ben)
            err = sum(r[1] for r in res.values())
            elapsed = sum(r[2] for r in res.values())
            rows.append((f"{name} {version}", hit, fp, hit_f, fp_f, err, elapsed))
            pk = [s for s in mal if _pickle_family(s)]
            pickle_rows.append((f"{name} {version}", sum(flag[s.name] for s in pk), len(pk)))
            if args.details:
                missed = [s.name for s in mal if not flag[s.name]]
                wrong = [s.name for s in ben if flag[s.name]]
                print(f"\n{name} missed ({len(missed)}): {', '.join(missed)}")
                print(f"{name} false positives ({len(wrong)}): {', '.join(wrong)}")
        print()
        print("flagged = findings or a reported error (the CLI exits non-zero); findings = findings only")
        print(f"{'scanner':<20}{'detected (flagged)':>20}{'FP (flagged)':>14}{'detected (findings)':>21}"
              f"{'FP (findings)':>15}{'errors':>8}{'time':>9}")
        for label, hit, fp, hit_f, fp_f, err, elapsed in rows:
            print(f"{label:<20}{f'{hit}/{len(mal)} {hit / len(mal):.0%}':>20}{f'{fp}/{len(ben)} {fp / len(ben):.0%}':>14}"
                  f"{f'{hit_f}/{len(mal)} {hit_f / len(mal):.0%}':>21}{f'{fp_f}/{len(ben)} {fp_f / len(ben):.0%}':>15}"
                  f"{err:>8}{elapsed:>8.2f}s")
        print("\npickle-family samples only (pickles, torch zip/legacy, numpy, archives; what every tool claims to cover):")
        for label, hit, total in pickle_rows:
            print(f"  {label:<20}{hit}/{total} {hit / total:.0%}")
        assert not list(root.rglob("PWNED*")), "a payload ran"
        if args.big_gb:
            import torch
            big = root / "big.bin"
            n = int(args.big_gb * (1 << 30)) // 4 // 16
            torch.save({f"layer{i}": torch.zeros(n) for i in range(16)}, big)
            from modelport.security import scan
            t = time.perf_counter()
            verdict = scan(big).verdict
            print(f"\nmodelport scan of a {big.stat().st_size / 1e9:.2f} GB torch .bin: {time.perf_counter() - t:.3f}s ({verdict})")
            big.unlink()


if __name__ == "__main__":
    main()
