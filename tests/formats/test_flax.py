"""Flax msgpack reader and writer: files written by flax 0.12.8 (committed) and the msgpack library as oracles."""

from __future__ import annotations

import struct

import ml_dtypes
import msgpack
import numpy as np
import pytest

import modelport
from modelport.core import dtypes
from modelport.core.errors import FormatError
from modelport.core.tensor import TensorRef
from modelport.formats import flax as flax_fmt
from tests.conftest import measure_cost
from tests.fixtures.expected import fixture, load_expected


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _flax_decode(data: bytes) -> dict:
    """What flax.serialization.msgpack_restore does, with the msgpack library (ext 1/3 → ndarray)."""
    def hook(code, payload):
        if code in (1, 3):
            shape, name, buf = msgpack.unpackb(payload)
            dt = getattr(ml_dtypes, name) if hasattr(ml_dtypes, name) else np.dtype(name)
            return np.frombuffer(buf, dtype=dt).reshape(shape)
        return msgpack.ExtType(code, payload)
    return msgpack.unpackb(data, ext_hook=hook, strict_map_key=False)


@pytest.mark.parametrize("name", ["flax_state.msgpack", "flax_chunked.msgpack"])
def test_reads_what_flax_wrote(name):
    expected = load_expected(name)
    src = modelport.open(fixture(name))
    assert src.format == "flax"
    assert list(src.tensors) == list(expected)
    for key, ref in src.tensors.items():
        _same(ref.read(), expected[key])
    if name == "flax_state.msgpack":
        assert isinstance(src["params.Dense_0.kernel"].read(), np.memmap)  # a view, not a copy
        assert src.metadata == {"step": 42, "lr": 0.125, "name": "tiny", "z": "(1+2j)"}
    else:
        assert src["big"].extra["chunks"] == 3


def test_writer_is_byte_identical_to_flax_for_chunked_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(flax_fmt, "MAX_CHUNK_SIZE", 16)
    src = modelport.open(fixture("flax_chunked.msgpack"))
    out = tmp_path / "ours.msgpack"
    flax_fmt.write_flax(src.tensors.values(), out)
    assert out.read_bytes() == fixture("flax_chunked.msgpack").read_bytes()


def _ref(name, arr):
    arr = np.asarray(arr)
    return TensorRef(name, dtypes.from_numpy(arr.dtype), arr.shape, lambda a=arr: a)


SAMPLES = {
    "params.dense.kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
    "params.dense.bias": np.array([1.5, -2.0], ml_dtypes.bfloat16),
    "params.norm.scale": np.array(2.0, np.float64),
    "fp8": np.array([0.5, -1.0, 2.0], ml_dtypes.float8_e5m2),
    "ids": np.arange(300, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float16),
    "big": np.random.default_rng(0).normal(size=(70000,)).astype(np.float32),  # ext32/bin32 headers
}


def test_writer_round_trip_and_msgpack_oracle(tmp_path):
    out = tmp_path / "w.msgpack"
    flax_fmt.write_flax([_ref(k, v) for k, v in SAMPLES.items()], out)
    tree = _flax_decode(out.read_bytes())
    _same(tree["params"]["dense"]["kernel"], SAMPLES["params.dense.kernel"])
    _same(tree["params"]["norm"]["scale"], SAMPLES["params.norm.scale"])
    back = modelport.open(out)
    assert list(back.tensors) == list(SAMPLES)
    for key, arr in SAMPLES.items():
        _same(back[key].read(), arr)


def test_writer_chunks_large_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(flax_fmt, "MAX_CHUNK_SIZE", 1000)
    out = tmp_path / "c.msgpack"
    flax_fmt.write_flax([_ref("big", SAMPLES["big"])], out)
    tree = _flax_decode(out.read_bytes())
    assert tree["big"]["__msgpack_chunked_array__"] is True and len(tree["big"]["chunks"]) == 280
    _same(modelport.open(out)["big"].read(), SAMPLES["big"])


def test_writer_output_loads_in_flax(tmp_path):
    from flax import serialization  # the real library as the oracle (dev extra; not a modelport dependency)
    out = tmp_path / "w.msgpack"
    flax_fmt.write_flax([_ref(k, v) for k, v in SAMPLES.items()], out)
    tree = serialization.msgpack_restore(out.read_bytes())
    for key, arr in SAMPLES.items():
        node = tree
        for part in key.split("."):
            node = node[part]
        _same(node, arr)


def test_name_conflicts_are_refused(tmp_path):
    with pytest.raises(modelport.core.errors.UnsupportedError):
        flax_fmt.write_flax([_ref("a", np.ones(2)), _ref("a.b", np.ones(2))], tmp_path / "x.msgpack")


def _ext(payload: bytes) -> bytes:
    return b"\xc9" + struct.pack(">I", len(payload)) + b"\x01" + payload


@pytest.mark.parametrize("data, needle", [
    (b"\x81\xa1a" + _ext(msgpack.packb([[2], "object", b"\0" * 16])), "not an allowed"),
    (b"\x81\xa1a" + _ext(msgpack.packb([[1000], "float32", b"\0" * 16])), "needs 4000"),
    (b"\x81\xa1a" + _ext(msgpack.packb([[-1], "float32", b""])), "bad shape"),
    (b"\xdf\xff\xff\xff\xff\xa1a\x01", "needs"),                      # map claims 4 billion entries
    (b"\x81\xa1a\xc6\xff\xff\xff\xf0abc", "bin"),                      # bin longer than the file
    (b"\x81\xa1a" + b"\x81\xa1a" * 1000 + b"\x01", "deeper"),          # nesting bomb
    (b"\x82\xa1a\x01\xa1a\x02", "duplicate"),
    (b"\x81\xa1a\x01\x00", "trailing"),
    (b"\x81\xa1a\xc1", "not valid msgpack"),
])
def test_malformed_files_give_one_line_errors(tmp_path, data, needle):
    path = tmp_path / "bad.msgpack"
    path.write_bytes(data)
    with measure_cost() as cost, pytest.raises(FormatError, match=needle) as info:
        modelport.open(path, format="flax")
    assert "\n" not in str(info.value) and cost.peak_alloc < 8 << 20


def test_truncations_of_a_real_file(tmp_path):
    data = fixture("flax_state.msgpack").read_bytes()
    for cut in range(1, len(data), 7):
        path = tmp_path / "cut.msgpack"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            modelport.open(path, format="flax")


def test_open_reads_no_tensor_data(tmp_path):
    """500 tensors, 33 MB: open finds every array's offset without reading or copying the arrays."""
    out = tmp_path / "many.msgpack"
    flax_fmt.write_flax([_ref(f"layers.{i}.w", np.ones((128, 128), np.float32)) for i in range(500)], out)
    modelport.open(out).close()                     # imports and caches warm
    with measure_cost() as cost:
        src = modelport.open(out)
    assert len(src) == 500 and cost.read_bytes < (1 << 20) and cost.peak_alloc < (4 << 20), cost
    assert src["layers.499.w"].read().sum() == 128 * 128
