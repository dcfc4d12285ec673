"""Bounded memory: a mapped bf16 tensor becomes float32 (what quantizers take) without holding the mapped
source and the copy at once; measured in a fresh process (VmHWM)."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

import modelport
from modelport.core.tensor import as_float32


def test_as_float32_equals_astype_and_peaks_at_the_float32_copy(tmp_path):
    path = tmp_path / "bf16.safetensors"
    rows, cols = 8000, 4096                  # 64 MB of bf16, 128 MB as float32
    bits = np.random.default_rng(0).integers(0, 1 << 16, (rows, cols), dtype=np.uint16)
    bits = (bits & 0x807F) | 0x3C00          # finite values
    save_file({"w": bits.view(ml_dtypes.bfloat16)}, path)
    with modelport.open(path) as source:
        mapped = source["w"].read()
        assert np.array_equal(as_float32(mapped), mapped.astype(np.float32))
    code = f"""
import json, numpy as np, modelport
from modelport.core.tensor import as_float32
status = lambda k: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) / 2**20
with modelport.open({str(path)!r}) as s:
    before = status('VmRSS')
    out = as_float32(s['w'].read())
    print(json.dumps({{'grew': status('VmHWM') - before, 'sum': float(out[::97, ::89].sum())}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grew = json.loads(res.stdout.strip().splitlines()[-1])["grew"]
    f32_mb, bf16_mb = rows * cols * 4 / 2**20, rows * cols * 2 / 2**20
    assert grew < f32_mb + bf16_mb / 4, grew   # astype of the whole mapped view: float32 + all of the bf16 pages
