"""`diff` across formats, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import save_file

import modelport


def _pair(tmp_path, **changes):
    base = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    save_file(base, tmp_path / "a.safetensors")
    other = {k: v.numpy() for k, v in base.items()}
    other.update(changes)
    other = {k: v for k, v in other.items() if v is not None}
    np.savez(tmp_path / "b.npz", **other)
    return tmp_path / "a.safetensors", tmp_path / "b.npz"


def test_equal_across_formats(tmp_path, cli):
    a, b = _pair(tmp_path)
    result = cli("diff", a, b)
    assert result.code == 0 and "2 of 2 common tensors bit-identical" in result.stdout
    assert modelport.diff(a, b).equal


def test_value_difference_and_tolerance(tmp_path, cli):
    changed = np.arange(6, dtype=np.float32).reshape(2, 3)
    changed[1, 2] += 1e-3
    a, b = _pair(tmp_path, a=changed)
    result = cli("diff", a, b, "--json")
    assert result.code == 1
    row = next(t for t in json.loads(result.stdout)["tensors"] if t["name"] == "a")
    assert row["status"] == "different" and row["mismatched"] == 1
    assert abs(row["max_abs"] - 1e-3) < 1e-6
    assert cli("diff", a, b, "--atol", "1e-2").code == 0


def test_missing_and_shape_and_dtype_changes(tmp_path, cli):
    a, b = _pair(tmp_path, b=None, c=np.zeros(1, np.float32))
    report = modelport.diff(a, b)
    assert report.only_in_a == ["b"] and report.only_in_b == ["c"] and not report.equal
    a, b = _pair(tmp_path, a=np.zeros((3, 2), np.float32), b=np.ones(4, np.float32))
    statuses = {t.name: t.status for t in modelport.diff(a, b).tensors}
    assert statuses == {"a": "shape", "b": "dtype"}
    assert cli("diff", a, b).code == 1
