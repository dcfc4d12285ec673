"""safetensors reader and writer, with the official library as the oracle."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file

import modelport
from modelport.core import dtypes
from modelport.formats.safetensors import write_safetensors

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
                torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32,
                torch.uint64, torch.bool, torch.complex64]


def _sample(dtype: torch.dtype, shape=(3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture
def every_dtype(tmp_path):
    tensors = {f"t_{str(d).split('.')[1]}": _sample(d) for d in TORCH_DTYPES}
    tensors["empty"] = torch.zeros((0, 4))
    tensors["scalar"] = torch.tensor(3.5)
    path = tmp_path / "all.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    return path, tensors


def test_every_dtype_reads_exactly_like_the_library(every_dtype):
    path, tensors = every_dtype
    src = modelport.open(path)
    assert src.format == "safetensors" and src.metadata == {"format": "pt", "note": "x"}
    with safe_open(path, "pt") as f:
        assert set(src.keys()) == set(f.keys())
        for name in f.keys():
            ours, theirs = src[name].read(), f.get_tensor(name)
            assert tuple(ours.shape) == tuple(theirs.shape)
            assert src[name].dtype.torch == str(theirs.dtype).split(".")[1]
            assert np.ascontiguousarray(ours).tobytes() == _bytes(theirs), name


def test_reads_are_zero_copy_memory_maps(every_dtype):
    path, _ = every_dtype
    arr = modelport.open(path)["t_float32"].read()
    assert isinstance(arr.base, np.memmap) or isinstance(arr, np.memmap) or not arr.flags.owndata
    assert not arr.flags.writeable


def test_writer_is_byte_identical_to_the_official_writer(tmp_path, every_dtype):
    path, tensors = every_dtype
    src = modelport.open(path)
    out = tmp_path / "ours.safetensors"
    write_safetensors(list(src.values()), out, metadata=src.metadata)
    assert out.read_bytes() == path.read_bytes()


def test_f4_packed_values(tmp_path):
    values = np.array([0.5, -1.0, 6.0, 0.0, 1.5, -3.0], dtype=ml_dtypes.float4_e2m1fn).reshape(2, 3)
    ref = modelport.TensorRef("w", dtypes.DTYPES["F4"], (2, 3), lambda: values)
    out = tmp_path / "f4.safetensors"
    write_safetensors([ref], out)
    header_len = struct.unpack("<Q", out.read_bytes()[:8])[0]
    header = json.loads(out.read_bytes()[8:8 + header_len])
    assert header["w"] == {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}
    raw = out.read_bytes()[8 + header_len:]
    assert raw[0] == (values.reshape(-1).view(np.uint8)[0] | (values.reshape(-1).view(np.uint8)[1] << 4))
    assert np.array_equal(modelport.open(out)["w"].read().astype(np.float32), values.astype(np.float32))


def _raw_file(path, header: dict | bytes, data: bytes = b"", pad=True) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        blob += b" " * (-(8 + len(blob)) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED = {
    "duplicate key": (b'{"a":' + json.dumps(F32_2).encode() + b',"a":' + json.dumps(F32_2).encode() + b"}", bytes(8)),
    "hole": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
    "overlap": ({"a": F32_2, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
    "wrong size": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    "trailing bytes": ({"a": F32_2}, bytes(12)),
    "truncated data": ({"a": F32_2}, bytes(4)),
    "unknown dtype": ({"a": {"dtype": "I4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1)),
    "negative dim": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8)),
    "three offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8)),
    "metadata not strings": ({"__metadata__": {"a": 1}, "a": F32_2}, bytes(8)),
    "not json": (b"{nope", b""),
    "not utf8": (b'{"\xff":1}', b""),
    "not an object": (b"[1, 2]", b""),
    "overflow": ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_headers_are_refused(tmp_path, case):
    header, data = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    _raw_file(path, header, data)
    with pytest.raises(modelport.FormatError) as err:
        modelport.open(path)
    assert str(path) in str(err.value)
    if case != "duplicate key":  # the library keeps the last duplicate; we refuse it
        with pytest.raises(Exception):  # noqa: B017 - whichever error the library raises, it must raise
            with safe_open(path, "np") as f:
                [f.get_tensor(k) for k in f.keys()]


def test_header_length_past_end_and_over_limit(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(modelport.FormatError, match="past the end"):
        modelport.open(path, format="safetensors")
    path.write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(modelport.FormatError, match="100 MB"):
        modelport.open(path, format="safetensors")


def test_edge_cases_the_library_accepts(tmp_path):
    path = tmp_path / "empty.safetensors"
    _raw_file(path, b"{}")
    assert len(modelport.open(path)) == 0
    path = tmp_path / "lead.safetensors"
    _raw_file(path, b"   " + json.dumps({"a": F32_2}).encode(), np.arange(2, dtype=np.float32).tobytes())
    assert modelport.open(path)["a"].read().tolist() == [0.0, 1.0]


def test_numpy_library_files_read_too(tmp_path):
    path = tmp_path / "np.safetensors"
    np_save_file({"x": np.arange(6, dtype=np.int16).reshape(2, 3)}, path)
    assert modelport.open(path)["x"].read().tolist() == [[0, 1, 2], [3, 4, 5]]
