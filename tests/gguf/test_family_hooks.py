"""The families' 1 -> n / n -> 1 tensor hook, through both conversion paths.

A toy family (Llama whose checkpoint fuses Q, K and V into one `qkv_proj`, as Phi-3's does) splits that matrix
into llama.cpp's three on the way to GGUF and concatenates them back on the way home; the plan must equal the
plain Llama's, tensor for tensor, and the way back must give the fused checkpoint bit for bit.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

import modelport
from modelport import families
from modelport.families.llama import Llama
from modelport.gguf import to_hf
from modelport.gguf.convert import hf_to_gguf, plan_hf
from tests.factory import make_model

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

_QKV = re.compile(r"model\.layers\.(\d+)\.self_attn\.qkv_proj\.weight")
_SPLIT = re.compile(r"blk\.(\d+)\.attn_[qkv]\.weight")


class FusedQKVLlama(Llama):
    """Llama with Q, K and V stored as one HF matrix (rows: Q, then K, then V)."""

    hf_architectures = ("FusedQKVLlamaForCausalLM",)
    model_types = ("fused_qkv_llama",)

    def gguf_name(self, hf_name):
        m = _QKV.fullmatch(hf_name)
        return f"blk.{m.group(1)}.attn_qkv.weight" if m else super().gguf_name(hf_name)

    def hf_name(self, gguf_name):
        m = _SPLIT.fullmatch(gguf_name)
        return f"model.layers.{m.group(1)}.self_attn.qkv_proj.weight" if m else super().hf_name(gguf_name)

    def _rows(self):
        d = self.head_dim()
        return {"attn_q": self.n_head * d, "attn_k": self.n_head_kv * d, "attn_v": self.n_head_kv * d}

    def split_tensor(self, name, ref):
        if not name.endswith("attn_qkv.weight"):
            return super().split_tensor(name, ref)
        parts, start = [], 0
        for kind, n in self._rows().items():
            parts.append((name.replace("attn_qkv", kind),
                          ref.derive(lambda s=start, n=n: np.asarray(ref.read())[s:s + n], shape=(n, ref.shape[1]))))
            start += n
        return parts

    def merge_tensors(self, name, parts):
        if not _QKV.fullmatch(name):
            return super().merge_tensors(name, parts)
        ordered = sorted(parts, key=lambda p: list(self._rows()).index(p.name.split(".")[2]))   # GGUF names
        rows = sum(p.shape[0] for p in ordered)
        return ordered[0].derive(lambda: np.concatenate([np.asarray(p.read()) for p in ordered]),
                                 shape=(rows, ordered[0].shape[1]), name=name)


def test_split_and_merge_run_through_both_conversion_paths(tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = make_model(tmp_path / "plain", "llama", "gpt2", hidden=64, ffn=128, heads=4, kv_heads=2)
    fused = tmp_path / "fused"
    fused.mkdir()
    for f in plain.iterdir():
        if f.name != "model.safetensors":
            (fused / f.name).write_bytes(f.read_bytes())
    weights = safetensors_numpy.load_file(plain / "model.safetensors")
    for i in range(2):
        qkv = [weights.pop(f"model.layers.{i}.self_attn.{p}_proj.weight") for p in "qkv"]
        weights[f"model.layers.{i}.self_attn.qkv_proj.weight"] = np.concatenate(qkv)
    safetensors_numpy.save_file(weights, fused / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((plain / "config.json").read_text())
    (fused / "config.json").write_text(json.dumps({**config, "architectures": ["FusedQKVLlamaForCausalLM"]}))
    monkeypatch.setattr(families, "REGISTRY", (FusedQKVLlama,) + families.REGISTRY)

    with modelport.open(plain) as a, modelport.open(fused) as b:
        want, got = plan_hf(a, "F32"), plan_hf(b, "F32")
        assert type(got.arch) is FusedQKVLlama
        assert sorted(p.name for p in got.tensors) == sorted(p.name for p in want.tensors)
        by_name = {p.name: p for p in want.tensors}
        for p in got.tensors:           # split before the transform: attn_q/attn_k come out permuted
            assert p.shape == by_name[p.name].shape and np.array_equal(p.load(), by_name[p.name].load()), p.name
        hf_to_gguf(b, tmp_path / "fused.gguf", "F32")

    with modelport.open(tmp_path / "fused.gguf") as source:
        _, refs, _ = to_hf.plan(source)
    back = {r.name: r for r in refs}
    assert set(back) == set(weights)
    for name, values in weights.items():
        assert back[name].shape == values.shape and np.array_equal(back[name].read(), values), name
