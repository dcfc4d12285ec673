"""`convert`: streaming, atomic, verified; the real libraries read what it writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import modelport
from tests.conftest import assert_one_line_error
from tests.factory import random_model, save_model


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    model = random_model("llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = save_model(model, tmp_path_factory.mktemp("llama") / "tiny")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return folder, model


def test_hf_folder_to_sharded_f16_folder_loads_in_transformers(tmp_path, tiny_llama, cli):
    from transformers import AutoModelForCausalLM

    folder, model = tiny_llama
    out = tmp_path / "f16"
    result = cli("convert", folder, out, "--dtype", "f16", "--shard-size", "40KB", "--verify")
    assert result.code == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.float16
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.half()), name
    # and back: the sharded set opens through its index, as a folder or by the index file itself
    assert len(modelport.open(out)) == len(modelport.open(out / "model.safetensors.index.json"))


def test_tensors_stream_one_at_a_time(tmp_path):
    """Peak memory follows the largest tensor, not the model: 8 x 40 MB in, RSS stays far below 320 MB."""
    src = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.full((10_000_000,), float(i)) for i in range(8)}, src)
    # VmHWM is this process's own peak (ru_maxrss would carry the parent's peak across fork + exec).
    code = ("import modelport;"
            f"modelport.convert({str(src)!r}, {str(tmp_path / 'out.npz')!r});"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    peak_kb = int(subprocess.check_output([sys.executable, "-c", code], text=True).strip())
    assert peak_kb < 200_000, f"peak RSS {peak_kb / 1000:.0f} MB"
    out = modelport.open(tmp_path / "out.npz")
    assert float(out["w7"].read()[123]) == 7.0


def test_existing_output_is_kept_without_force(tmp_path, cli):
    src = tmp_path / "a.safetensors"
    save_file({"x": torch.ones(3)}, src)
    dst = tmp_path / "b.npz"
    dst.write_bytes(b"precious")
    assert_one_line_error(cli("convert", src, dst), "already exists", "--force")
    assert dst.read_bytes() == b"precious"
    assert cli("convert", src, dst, "--force").code == 0
    assert np.load(dst)["x"].tolist() == [1, 1, 1]


def test_failure_leaves_nothing_behind_and_input_untouched(tmp_path, cli):
    src = tmp_path / "bad.npz"
    np.savez_compressed(src, a=np.arange(1000, dtype=np.float32), b=np.arange(100000, dtype=np.float32))
    data = bytearray(src.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # corrupt the deflated stream of member b
    src.write_bytes(bytes(data))
    before = _digest(src)
    result = cli("convert", src, tmp_path / "out.safetensors")
    assert_one_line_error(result, "bad.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]
    assert _digest(src) == before


def test_cast_to_bf16_matches_torch(tmp_path):
    src = tmp_path / "a.safetensors"
    weights = {"w": torch.randn(7, 5), "i": torch.arange(4)}
    save_file(weights, src)
    modelport.convert(src, tmp_path / "b.safetensors", dtype="bf16", verify=True)
    out = load_file(tmp_path / "b.safetensors")
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], weights["w"].bfloat16())
    assert out["i"].dtype == torch.int64  # integers are never cast


def test_output_format_is_inferred_or_refused(tmp_path, cli):
    src = tmp_path / "a.safetensors"
    save_file({"x": torch.ones(2)}, src)
    assert_one_line_error(cli("convert", src, tmp_path / "out.weird"), "cannot tell the output format")
    assert cli("convert", src, tmp_path / "out.bin", "--to", "numpy").code == 0
    assert modelport.open(tmp_path / "out.bin").format == "numpy"
    assert_one_line_error(cli("convert", src, src, "--force"), "overwrite the input")


def test_safetensors_aliases_recorded_like_save_model(tmp_path):
    from safetensors.torch import save_model

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    path = tmp_path / "tied.safetensors"
    save_model(Tied(), path)
    src = modelport.open(path)
    assert src.aliases == {"head.weight": "emb.weight"} and list(src.keys()) == ["emb.weight"]
    modelport.convert(path, tmp_path / "copy.safetensors", verify=True)
    assert modelport.open(tmp_path / "copy.safetensors").aliases == {"head.weight": "emb.weight"}


def test_pt_to_safetensors_to_npz_to_pt_is_bit_exact(tmp_path, cli):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 4, generator=g)
    weights = {
        "f32": base, "view": base[2:4],                       # a view shares the storage
        "transposed": torch.randn(3, 5, generator=g).t(),     # non-contiguous
        "f16": torch.randn(7, generator=g).half(), "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f8": torch.randn(5, generator=g).to(torch.float8_e4m3fn), "f64": torch.randn(2, generator=g).double(),
        "i8": torch.randint(-100, 100, (4,), dtype=torch.int8, generator=g), "i64": torch.arange(3),
        "u8": torch.arange(5, dtype=torch.uint8), "bool": torch.tensor([True, False]), "empty": torch.zeros(0, 2),
        "scalar": torch.tensor(1.5),
    }
    weights["tied"] = weights["f32"]                          # the same tensor twice, as tied embeddings are
    src = tmp_path / "a.pt"
    torch.save(weights, src)
    for a, b in (("a.pt", "b.safetensors"), ("b.safetensors", "c.npz"), ("c.npz", "d.pt")):
        result = cli("convert", tmp_path / a, tmp_path / b, "--verify")
        assert result.code == 0, result.stderr
    back = torch.load(tmp_path / "d.pt", weights_only=True)
    assert set(back) == set(weights)
    for name, tensor in weights.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert back[name].contiguous().view(-1).view(torch.uint8).tolist() == \
            tensor.contiguous().view(-1).view(torch.uint8).tolist(), name
    assert back["tied"].data_ptr() == back["f32"].data_ptr()  # the tie survived every hop
    assert modelport.open(tmp_path / "b.safetensors").aliases == {"tied": "f32"}
