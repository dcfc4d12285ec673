"""Bad input: one line naming the file and the problem, exit 2, nothing written, no traceback."""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import save_file

from tests.conftest import assert_one_line_error


def test_missing_path(tmp_path, cli):
    assert_one_line_error(cli("inspect", tmp_path / "nope.safetensors"), "nope.safetensors", "no such file")


def test_empty_file(tmp_path, cli):
    (tmp_path / "empty.bin").write_bytes(b"")
    assert_one_line_error(cli("inspect", tmp_path / "empty.bin"), "empty.bin", "empty file")


def test_unknown_magic(tmp_path, cli):
    (tmp_path / "x.safetensors").write_bytes(b"hello world, not a model")
    assert_one_line_error(cli("inspect", tmp_path / "x.safetensors"), "x.safetensors", "not a model file")


def test_truncated_safetensors(tmp_path, cli):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    assert_one_line_error(cli("inspect", path), "m.safetensors", "truncated")
    assert_one_line_error(cli("convert", path, tmp_path / "o.npz"), "m.safetensors")
    assert not (tmp_path / "o.npz").exists()


def test_lying_header(tmp_path, cli):
    path = tmp_path / "m.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    assert_one_line_error(cli("inspect", path), "m.safetensors", "truncated")


def test_folder_without_weights(tmp_path, cli):
    (tmp_path / "config.json").write_text("{}")
    assert_one_line_error(cli("inspect", tmp_path), "no model weights")


def test_missing_shard(tmp_path, cli):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(cli("inspect", tmp_path), "model-00002-of-00002.safetensors", "missing")


def test_shard_index_cannot_escape_the_folder(tmp_path, cli):
    inner = tmp_path / "m"
    inner.mkdir()
    save_file({"a": torch.ones(2)}, tmp_path / "outside.safetensors")
    index = {"weight_map": {"a": "../outside.safetensors"}}
    (inner / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(cli("inspect", inner), "outside the model folder")


def test_usage_error_exit_code(cli):
    result = cli("convert")
    assert result.code == 2
