"""No false alarm on archives people scan: the wheels and sdists of modelport's own dependencies.

    .venv/bin/python bench/scan_real.py [ARCHIVE ...] [--json]

Without arguments it scans what is on this machine: pip's cache (~/.cache/pip, *.whl), the local
package index and wheel folders (torch's CPU wheel), llama-cpp-python's source archive, and the
wheels `pip download --no-deps` left in $SCAN_REAL_DIR. Per archive: size, time, MB/s, findings by
severity (suspicious/dangerous must be none) and members whose content is `unknown` (never read, so
never called safe; listed by kind of file). Exit 1 when any archive has a suspicious or dangerous finding.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from modelport.security import DANGEROUS, SUSPICIOUS, UNKNOWN, scan

# The project's dependencies (pyproject.toml and its extras): the archives worth scanning.
DEPENDENCIES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "onnx", "onnxruntime", "onnxscript",
                "llama_cpp_python", "gguf", "h5py", "ml_dtypes", "typer", "rich", "jinja2", "peft", "accelerate",
                "huggingface_hub", "fastapi", "uvicorn", "jsonschema", "joblib", "msgpack", "protobuf")


def default_archives() -> list[Path]:
    roots = [os.path.expanduser("~/.cache/pip"), "/opt/wheels", "/opt/pypi/files", "/opt/pypi-more/files",
             "/work/vendor", os.environ.get("SCAN_REAL_DIR", "/tmp/scanner-dl")]
    found: dict[str, Path] = {}
    for root in roots:
        for pattern in ("**/*.whl", "**/*.tar.gz"):
            for p in glob.glob(os.path.join(root, pattern), recursive=True):
                name = Path(p).name
                dist = name.split("-")[0].lower().replace("-", "_")
                if dist in DEPENDENCIES and "cp311" in name or dist in DEPENDENCIES and "py3-none" in name \
                        or name.endswith(".tar.gz") and dist in DEPENDENCIES:
                    found.setdefault(dist + ("-sdist" if name.endswith(".tar.gz") else ""), Path(p))
    return sorted(found.values(), key=lambda p: p.name)


def measure(path: Path) -> dict:
    t = time.perf_counter()
    report = scan(path)
    seconds = time.perf_counter() - t
    size = path.stat().st_size
    by = Counter(f.severity for f in report.findings)
    unknown = Counter(Path(f.member or f.file).suffix or "(none)" for f in report.findings if f.severity == UNKNOWN)
    flagged = [f"{f.severity}: {f.member}: {f.what}" for f in report.findings if f.severity in (SUSPICIOUS, DANGEROUS)]
    return {"archive": path.name, "bytes": size, "seconds": round(seconds, 2),
            "mb_per_s": round(size / 1e6 / seconds, 1), "s_per_gb": round(seconds / (size / 1e9), 1),
            "suspicious": by[SUSPICIOUS], "dangerous": by[DANGEROUS], "unknown": by[UNKNOWN],
            "unknown_by_suffix": dict(unknown.most_common(6)), "flagged": flagged[:10]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archives", nargs="*", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for path in args.archives or default_archives():
        row = measure(path)
        rows.append(row)
        if not args.json:
            print(f"{row['archive'][:60]:60} {row['bytes'] / 1e6:8.1f} MB {row['seconds']:7.1f} s "
                  f"{row['s_per_gb']:6.1f} s/GB  suspicious {row['suspicious']}  dangerous {row['dangerous']}  "
                  f"unknown {row['unknown']} {row['unknown_by_suffix'] or ''}", flush=True)
            for line in row["flagged"]:
                print("    " + line)
    total_b, total_s = sum(r["bytes"] for r in rows), sum(r["seconds"] for r in rows)
    summary = {"archives": len(rows), "gb": round(total_b / 1e9, 3), "seconds": round(total_s, 1),
               "s_per_gb": round(total_s / max(total_b / 1e9, 1e-9), 1),
               "findings": sum(r["suspicious"] + r["dangerous"] for r in rows), "unknown": sum(r["unknown"] for r in rows)}
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
    else:
        print(f"{summary['archives']} archives, {summary['gb']} GB in {summary['seconds']} s "
              f"({summary['s_per_gb']} s/GB): {summary['findings']} findings, {summary['unknown']} unknown members")
    return 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
