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


def test_hf_folder_against_the_gguf_made_from_it(tmp_path, cli):
    """Different naming schemes (HF ↔ GGUF), Q/K permutation undone: the same weights are equal, exit 0."""
    from tests.factory import make_model

    folder = make_model(tmp_path / "hf", "llama", "gpt2", hidden=64, ffn=128, heads=4, kv_heads=2)
    modelport.convert(folder, tmp_path / "f32.gguf", quant="F32")
    report = modelport.diff(folder, tmp_path / "f32.gguf")
    assert report.equal and report.renamed == "b" and len(report.tensors) == 2 * 9 + 3   # layers, embedding, final norm, lm_head
    assert all(t.status == "equal" for t in report.tensors)
    result = cli("diff", tmp_path / "f32.gguf", folder)
    assert result.code == 0 and "(A read in B's Hugging Face naming)" in result.stdout

    modelport.convert(folder, tmp_path / "q8.gguf", quant="Q8_0")
    result = cli("diff", folder, tmp_path / "q8.gguf")       # piped: one plain line per differing tensor
    assert result.code == 1
    lines = [line.split("\t") for line in result.stdout.splitlines() if not line.startswith("#")]
    assert lines[0][:2] == ["tensor", "status"]
    assert "model.layers.0.self_attn.q_proj.weight" in {row[0] for row in lines[1:]}   # whole names, not cut
    assert cli("diff", folder, tmp_path / "q8.gguf", "--rtol", "0.5", "--atol", "0.05").code == 0
