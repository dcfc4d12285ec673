"""pt → safetensors at copy speed: tensor bytes that need no change go file to file (`copy_range`, the kernel's
copy_file_range), the rest through NumPy; either way the output equals what the safetensors library writes."""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import modelport
from modelport.core.tensor import copy_range


def test_torch_checkpoint_to_safetensors_copies_the_stored_bytes_and_equals_save_file(tmp_path):
    base = torch.randn(64, 48)
    weights = {
        "plain": torch.randn(300, 7),
        "half": torch.randn(33, 9).half(),
        "bf16": torch.randn(5, 16).bfloat16(),
        "transposed": base.t(),                 # a strided view: not verbatim in the file
        "row_slice": base[10:20],               # contiguous view at an offset in a shared storage
        "ints": torch.arange(1000, dtype=torch.int64),
    }
    src = tmp_path / "model.bin"
    torch.save(weights, src)
    with modelport.open(src) as source:
        verbatim = {name for name, ref in source.items() if ref.stored_range() is not None}
    assert verbatim == {"plain", "half", "bf16", "row_slice", "ints"}

    ours = tmp_path / "ours.safetensors"
    modelport.convert(src, ours, verify=True)
    theirs = tmp_path / "theirs.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, theirs, metadata={"format": "pt"})
    assert ours.read_bytes() == theirs.read_bytes()

    # a cast is a new tensor: computed, never copied
    cast = tmp_path / "f16.safetensors"
    modelport.convert(src, cast, dtype="f16")
    got = load_file(cast)
    assert got["plain"].dtype == torch.float16 and torch.equal(got["plain"], weights["plain"].half())
    assert torch.equal(got["ints"], weights["ints"])


def test_copy_range_into_a_file_and_through_the_fallbacks(tmp_path):
    src = tmp_path / "src.bin"
    data = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    src.write_bytes(data)
    out = tmp_path / "out.bin"
    with out.open("wb", buffering=0) as f:
        f.write(b"head")
        copy_range(src, 1000, 2_000_000, f.fileno())
        f.write(b"tail")
    assert out.read_bytes() == b"head" + data[1000:2_001_000] + b"tail"
    # a pipe: copy_file_range refuses it (EINVAL / EXDEV), sendfile takes over
    r, w = os.pipe()
    try:
        copy_range(src, 5, 60_000, w)
        os.close(w)
        w = None
        got = b""
        while chunk := os.read(r, 1 << 16):
            got += chunk
        assert got == data[5:60_005]
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
