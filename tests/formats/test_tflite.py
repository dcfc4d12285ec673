"""TFLite reader: models converted by TF 2.21 (committed; values from tf.lite.Interpreter) and flatbuffers
built at test time with the `flatbuffers` runtime for what the converter does not emit (INT4/INT2, >2 GB layout)."""

from __future__ import annotations

import random

import flatbuffers
import ml_dtypes
import numpy as np
import pytest

import modelport
from modelport.core.errors import FormatError
from modelport.core.packing import pack_nibbles
from tests.conftest import measure_cost
from tests.fixtures.expected import fixture, load_expected

FLOAT32, INT32, INT8, INT4, INT2 = 0, 2, 9, 17, 19


@pytest.mark.parametrize("name", ["model_f32.tflite", "model_int8.tflite"])
def test_constants_equal_what_the_interpreter_reads(name):
    expected = load_expected(name)
    src = modelport.open(fixture(name))
    assert src.format == "tflite"
    assert sorted(src.tensors) == sorted(expected)
    for key, ref in src.tensors.items():
        arr = ref.read()
        assert arr.dtype == expected[key].dtype and arr.shape == expected[key].shape
        np.testing.assert_array_equal(arr, expected[key])
        assert isinstance(arr, np.memmap)
    if name == "model_int8.tflite":
        assert src["MatMul"].extra["scale"] and src["MatMul"].extra["zero_point"] == [0] * len(src["MatMul"].extra["scale"])
        assert src.details["constant_tensors"] == {"I32 quantized": 1, "I8 quantized": 1}


def build(tensors, buffers, tail: bytes = b"") -> bytes:
    """A minimal TFLite model: tensors = [(name, type, shape, buffer)], buffers = [bytes | (offset, size)]."""
    b = flatbuffers.Builder(0)
    buf_refs = []
    for data in buffers:
        vec = b.CreateByteVector(data) if isinstance(data, bytes) and data else None
        b.StartObject(3)
        if vec is not None:
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
        if isinstance(data, tuple):
            b.PrependUint64Slot(1, data[0], 0)
            b.PrependUint64Slot(2, data[1], 0)
        buf_refs.append(b.EndObject())
    t_refs = []
    for name, ttype, shape, buffer in tensors:
        n = b.CreateString(name)
        b.StartVector(4, len(shape), 4)
        for d in reversed(shape):
            b.PrependInt32(d)
        s = b.EndVector()
        b.StartObject(10)
        b.PrependUOffsetTRelativeSlot(0, s, 0)
        b.PrependInt8Slot(1, ttype, 0)
        b.PrependUint32Slot(2, buffer, 0)
        b.PrependUOffsetTRelativeSlot(3, n, 0)
        t_refs.append(b.EndObject())

    def vector(refs):
        b.StartVector(4, len(refs), 4)
        for r in reversed(refs):
            b.PrependUOffsetTRelative(r)
        return b.EndVector()

    tv = vector(t_refs)
    sg_name = b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tv, 0)
    b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    sg = b.EndObject()
    sgv, bv = vector([sg]), vector(buf_refs)
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(2, sgv, 0)
    b.PrependUOffsetTRelativeSlot(4, bv, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output()) + tail


def test_packed_int4_int2_and_data_after_the_flatbuffer(tmp_path):
    int4 = np.array([1, -2, 7, -8, 3], ml_dtypes.int4)
    int2 = np.array([1, -2, -1, 0, 1, 1], ml_dtypes.int2)
    int2_packed = bytes([(1 | (2 << 2) | (3 << 4) | (0 << 6)), (1 | (1 << 2))])  # element 0 in the low bits
    big = np.arange(6, dtype=np.float32)
    head = build([("w4", INT4, [5], 1), ("w2", INT2, [2, 3], 2), ("act", FLOAT32, [1, 6], 0), ("far", FLOAT32, [2, 3], 3),
                  ("text", 5, [1], 4)],
                 [b"", bytes(pack_nibbles(int4)), int2_packed, (10_000, 24), b"\1\0\0\0\x0c\0\0\0\x0d\0\0\0a"])
    path = tmp_path / "m.tflite"
    path.write_bytes(head + b"\0" * (10_000 - len(head)) + big.tobytes())
    src = modelport.open(path)
    assert list(src.tensors) == ["w4", "w2", "far"]
    np.testing.assert_array_equal(src["w4"].read().astype(int), int4.astype(int))
    np.testing.assert_array_equal(src["w2"].read().astype(int), int2.astype(int).reshape(2, 3))
    np.testing.assert_array_equal(src["far"].read(), big.reshape(2, 3))
    assert src["far"].offset == 10_000 and src.details["activation_tensors"] == 1
    assert src.details["constant_tensors"]["STRING (skipped)"] == 1


@pytest.mark.parametrize("tensors, buffers, needle", [
    ([("w", FLOAT32, [2], 7)], [b"", b"\0" * 8], "buffer index 7"),
    ([("w", FLOAT32, [3], 1)], [b"", b"\0" * 8], "needs 12"),
    ([("w", FLOAT32, [-1], 1)], [b"", b"\0" * 8], "unknown dimension"),
    ([("w", 99, [2], 1)], [b"", b"\0" * 8], "TensorType 99"),
    ([("w", FLOAT32, [2], 1)], [b"", (1 << 40, 8)], "outside the file"),
])
def test_lying_models_give_one_line_errors(tmp_path, tensors, buffers, needle):
    path = tmp_path / "bad.tflite"
    path.write_bytes(build(tensors, buffers))
    with pytest.raises(FormatError, match=needle) as info:
        modelport.open(path)
    assert "\n" not in str(info.value)


def test_truncated_and_corrupted_files_never_crash(tmp_path):
    data = fixture("model_int8.tflite").read_bytes()
    path = tmp_path / "x.tflite"
    for cut in range(8, len(data), 37):
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            for ref in modelport.open(path, format="tflite").values():
                ref.read()
    rng = random.Random(0)
    for _ in range(300):  # random byte flips: open either succeeds or says why, nothing else escapes
        blob = bytearray(data)
        for _ in range(4):
            blob[rng.randrange(8, len(blob))] = rng.randrange(256)
        path.write_bytes(bytes(blob))
        try:
            for ref in modelport.open(path, format="tflite").values():
                ref.read()
        except FormatError:
            pass


def test_vector_length_bomb(tmp_path):
    data = bytearray(build([("w", FLOAT32, [2], 1)], [b"", b"\0" * 8]))
    root = int.from_bytes(data[0:4], "little")
    vt = root - int.from_bytes(data[root:root + 4], "little", signed=True)
    buffers_field = int.from_bytes(data[vt + 4 + 2 * 4:vt + 6 + 2 * 4], "little")
    vec = root + buffers_field + int.from_bytes(data[root + buffers_field:root + buffers_field + 4], "little")
    data[vec:vec + 4] = (0x7FFFFFFF).to_bytes(4, "little")
    path = tmp_path / "bomb.tflite"
    path.write_bytes(bytes(data))
    with measure_cost() as cost, pytest.raises(FormatError, match="outside the file"):
        modelport.open(path)
    assert cost.peak_alloc < 1 << 20, cost

