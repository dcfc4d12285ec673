"""Every command that opens a model scans it first: dangerous is refused, suspicious needs --trust."""

from __future__ import annotations

import os

import numpy as np
import torch

from gguf import GGUFWriter
from tests.conftest import assert_one_line_error


def _gguf_with_hidden_bytes(path) -> None:
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(path, "ab") as f:
        f.write(b"\x00" * 32 + b"hidden payload after the last tensor")


def test_suspicious_file_needs_trust(tmp_path, cli):
    path = tmp_path / "m.gguf"
    _gguf_with_hidden_bytes(path)
    assert_one_line_error(cli("inspect", path), "suspicious", "--trust")
    assert cli("inspect", path, "--trust").code == 0
    out = tmp_path / "w.safetensors"
    assert_one_line_error(cli("convert", path, out), "--trust")
    assert not out.exists()
    assert cli("convert", path, out, "--trust").code == 0
    assert cli("scan", path).code == 1


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never",))


def test_dangerous_file_is_refused_even_with_trust(tmp_path, cli):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "x": _Payload()}, path)
    for args in (("inspect", path), ("inspect", path, "--trust"), ("diff", path, path, "--trust"),
                 ("convert", path, tmp_path / "o.safetensors", "--trust")):
        assert_one_line_error(cli(*args), "dangerous", "posix.system")
    assert not (tmp_path / "o.safetensors").exists()
