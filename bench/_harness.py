"""Shared bench plumbing: make a llama-shaped checkpoint once, time code in a fresh process.

Each measurement runs in its own interpreter so peak memory (VmHWM) belongs to that reader alone;
the time is taken inside the child around the work only (imports excluded), best of `repeat` runs.
Files are read warm (page cache), which is what a user re-running a command sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"

# TinyLlama-1.1B geometry (hidden 2048, 5632 MLP, GQA with 4 KV heads, vocab 32000), f16.
HIDDEN, MLP, KV, VOCAB = 2048, 5632, 256, 32000


def llama_shapes(layers: int, hidden: int = HIDDEN, mlp: int = MLP, kv: int = KV,
                 vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a Llama with this geometry (kv = KV heads x head dim)."""
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (mlp, hidden), p + "mlp.up_proj.weight": (mlp, hidden),
                       p + "mlp.down_proj.weight": (hidden, mlp), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    return shapes


def make_checkpoint(layers: int, stem: str) -> tuple[Path, Path]:
    """The same f16 weights as `<stem>.bin` (torch.save) and `<stem>.safetensors`; made once."""
    OUT.mkdir(exist_ok=True)
    bin_path, st_path = OUT / f"{stem}.bin", OUT / f"{stem}.safetensors"
    if not (bin_path.exists() and st_path.exists()):
        import torch
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(0)
        weights = {n: (torch.randn(s, generator=g) * 0.02).half() for n, s in llama_shapes(layers).items()}
        torch.save(weights, bin_path)
        save_file(weights, st_path)
    return bin_path, st_path


def measure(setup: str, work: str, repeat: int = 3) -> dict:
    """Run `setup` then time `work` in a fresh Python; returns best seconds and the child's peak RSS in MB."""
    body = textwrap.indent(textwrap.dedent(work).strip(), "    ")
    code = "\n".join([
        "import json, time",
        textwrap.dedent(setup).strip(),
        "times = []",
        f"for _ in range({repeat}):",
        "    t0 = time.perf_counter()",
        body,
        "    times.append(time.perf_counter() - t0)",
        "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))",
        "print(json.dumps({'seconds': min(times), 'peak_mb': peak / 1024}))",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_command(cmd: list[str], env: dict | None = None, quiet: bool = False) -> dict:
    """Wall time and peak RSS (ru_maxrss of the waited child) of one command; its stdout dropped if `quiet`."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               f"t0 = time.perf_counter(); rc = subprocess.run(sys.argv[1:]{', stdout=subprocess.DEVNULL' if quiet else ''}).returncode\n"
               "dt = time.perf_counter() - t0\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
               "print(json.dumps({'seconds': dt, 'peak_mb': peak, 'rc': rc}))\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"]:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
    return res


def table(title: str, rows: list[tuple[str, dict]], anchor: str) -> None:
    base = dict(rows)[anchor]
    print(f"\n{title}")
    print(f"{'':<48}{'seconds':>9}{'peak RSS MB':>13}   speed vs {anchor}")
    for name, r in rows:
        print(f"{name:<48}{r['seconds']:>9.3f}{r['peak_mb']:>13.0f}   {base['seconds'] / r['seconds']:.2f}x")
