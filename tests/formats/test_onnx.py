"""ONNX weights read by our wire scanner, with the onnx package (numpy_helper.to_array) as the oracle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import external_data_helper as ext
from onnx import helper as h
from onnx import numpy_helper as nh

import modelport
from modelport.core.errors import FormatError
from modelport.formats.onnx import detect, open_onnx
from tests.conftest import measure_cost

RNG = np.random.default_rng(0)

RAW_ARRAYS = {
    "f32": RNG.standard_normal((4, 3)).astype(np.float32),
    "f16": RNG.standard_normal(7).astype(np.float16),
    "f64": RNG.standard_normal((2, 2)),
    "bf16": RNG.standard_normal(5).astype(ml_dtypes.bfloat16),
    "f8e4m3": np.array([1, -2, 0.5], dtype=ml_dtypes.float8_e4m3fn),
    "f8e5m2": np.array([1, -2, 0.5], dtype=ml_dtypes.float8_e5m2),
    "e8m0": np.array([1, 2, 4], dtype=ml_dtypes.float8_e8m0fnu),
    "i4": np.array([1, -2, 7, -8, 0], dtype=ml_dtypes.int4),
    "u4": np.array([[1, 15], [3, 0]], dtype=ml_dtypes.uint4),
    "f4": np.array([1, 2, -3], dtype=ml_dtypes.float4_e2m1fn),
    "i2": np.array([1, -2, -1, 0, 1], dtype=ml_dtypes.int2),
    "u2": np.array([1, 2, 3], dtype=ml_dtypes.uint2),
    "f6": np.array([1, 2, 3, -0.5, 4], dtype=ml_dtypes.float6_e3m2fn),
    "i8": np.array([-128, 5, 127], np.int8), "u8": np.array([0, 200], np.uint8),
    "i16": np.array([-3, 300], np.int16), "u16": np.array([60000], np.uint16),
    "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3), "u32": np.array([4_000_000_000], np.uint32),
    "i64": np.array([-(2**62), 5]), "u64": np.array([2**63 + 5], np.uint64),
    "bool": np.array([True, False, True]), "c64": np.array([1 + 2j, -3j], np.complex64),
    "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32),
}

TYPED = [  # (name, data_type, dims, values) stored in float_data / int32_data / int64_data / double_data / uint64_data
    ("t_f32", T.FLOAT, [2, 2], [1.0, -2.0, 3.5, 4.0]), ("t_f16", T.FLOAT16, [2], [1.5, -2.0]),
    ("t_bf16", T.BFLOAT16, [2], [1.5, -2.0]), ("t_f8", T.FLOAT8E4M3FN, [2], [1.0, -2.0]),
    ("t_i4", T.INT4, [3], [1, -2, 7]), ("t_u4", T.UINT4, [3], [1, 2, 15]), ("t_f4", T.FLOAT4E2M1, [3], [1.0, 2.0, -3.0]),
    ("t_u2", T.UINT2, [5], [1, 2, 3, 0, 1]), ("t_f6", T.FLOAT6E2M3, [2], [1.0, 2.0]),
    ("t_i8", T.INT8, [3], [-128, 5, 127]), ("t_u8", T.UINT8, [2], [1, 200]), ("t_i16", T.INT16, [2], [-3, 300]),
    ("t_u16", T.UINT16, [1], [60000]), ("t_i32", T.INT32, [2], [-(2**31), 2**31 - 1]), ("t_bool", T.BOOL, [2], [1, 0]),
    ("t_i64", T.INT64, [2], [-(2**63), 2**63 - 1]), ("t_u32", T.UINT32, [2], [1, 2**32 - 1]),
    ("t_u64", T.UINT64, [2], [1, 2**64 - 1]), ("t_f64", T.DOUBLE, [2], [1.5, -1e300]),
    ("t_c64", T.COMPLEX64, [2], [1 + 2j, 3 - 4j]), ("t_c128", T.COMPLEX128, [1], [1 + 2j]),
]


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    if ours.shape != theirs.shape:
        return False
    if ours.dtype != theirs.dtype:
        return False
    if ours.dtype.kind == "V" or ours.dtype.itemsize == 1 and ours.dtype not in (np.int8, np.uint8, np.bool_):
        return np.array_equal(ours.astype(np.float32), theirs.astype(np.float32), equal_nan=True)
    return np.array_equal(ours, theirs)


def _model(initializers, nodes=(), inputs=(), outputs=None, **kw):
    outputs = outputs or [h.make_tensor_value_info("y", T.FLOAT, ["batch", 3])]
    graph = h.make_graph(list(nodes), "g", list(inputs), outputs, initializer=list(initializers))
    return h.make_model(graph, producer_name="modelport-test", **kw)


def _check_all(path: Path, src) -> None:
    """Every initializer equals onnx's own reading (onnx.load with external data resolved)."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        assert _same(src[tensor.name].read(), nh.to_array(tensor)), tensor.name


def test_raw_data_of_every_dtype(tmp_path):
    path = tmp_path / "raw.onnx"
    onnx.save(_model([nh.from_array(a, n) for n, a in RAW_ARRAYS.items()]), path)
    src = modelport.open(path)
    assert src.format == "onnx"
    assert list(src.tensors) == list(RAW_ARRAYS)
    _check_all(path, src)
    for name, arr in RAW_ARRAYS.items():
        assert _same(src[name].read(), arr), name
        assert src[name].shape == arr.shape
    w = src["f32"].read()
    assert not w.flags.owndata and not w.flags.writeable      # a view of the mapped file
    assert src["f32"].file == str(path) and path.read_bytes()[src["f32"].offset:][:48] == RAW_ARRAYS["f32"].tobytes()


def test_typed_fields(tmp_path):
    path = tmp_path / "typed.onnx"
    tensors = [h.make_tensor(n, dt, dims, vals) for n, dt, dims, vals in TYPED]
    assert not any(t.raw_data for t in tensors)
    onnx.save(_model(tensors), path)
    src = open_onnx(path)
    _check_all(path, src)
    assert src["t_i4"].read().astype(int).tolist() == [1, -2, 7]


def test_constants_attributes_and_subgraphs(tmp_path):
    then_g = h.make_graph([h.make_node("Constant", [], ["tc"], value=nh.from_array(np.ones(2, np.float32), "tc"))],
                          "then", [], [h.make_tensor_value_info("tc", T.FLOAT, [2])],
                          initializer=[nh.from_array(np.full(3, 5, np.float32), "W")])
    body = h.make_graph([h.make_node("Constant", [], ["lc"], value_ints=[4, 5])], "body", [],
                        [h.make_tensor_value_info("lc", T.INT64, [2])])
    else_g = h.make_graph([h.make_node("Loop", ["n", "c"], ["lo"], body=body, name="inner"),
                           h.make_node("Constant", [], ["ec"], value_floats=[1.0, 2.0])],
                          "else", [], [h.make_tensor_value_info("ec", T.FLOAT, [2])])
    nodes = [h.make_node("Constant", [], ["k"], value_int=3), h.make_node("Constant", [], ["kf"], value_float=0.5),
             h.make_node("Constant", [], ["kt"], value=nh.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))),
             h.make_node("ConstantOfShape", ["shape"], ["z"], value=nh.from_array(np.array([7], np.int64)), name="cos"),
             h.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    path = tmp_path / "sub.onnx"
    onnx.save(_model([nh.from_array(np.zeros((2, 2), np.float32), "W")], nodes,
                     [h.make_tensor_value_info("cond", T.BOOL, [])]), path)
    src = open_onnx(path)
    # File order; onnx.helper sorts a node's attributes by name, so else_branch comes first.
    assert list(src.tensors) == ["W", "k", "kf", "kt", "cos/value", "branch/else_branch/inner/body/lc",
                                 "branch/else_branch/ec", "branch/then_branch/W", "branch/then_branch/tc"]
    got = {n: r.read() for n, r in src.tensors.items()}
    assert got["k"].dtype == np.int64 and got["k"].shape == () and got["k"] == 3
    assert got["kf"].dtype == np.float32 and got["kf"] == 0.5
    assert np.array_equal(got["kt"], np.arange(6, dtype=np.int32).reshape(2, 3))
    assert got["cos/value"].tolist() == [7]
    assert got["branch/then_branch/W"].tolist() == [5, 5, 5] and got["branch/then_branch/tc"].tolist() == [1, 1]
    assert got["branch/else_branch/inner/body/lc"].tolist() == [4, 5]
    assert got["branch/else_branch/ec"].tolist() == [1.0, 2.0]
    assert src.details["op_types"] == {"Constant": 6, "ConstantOfShape": 1, "If": 1, "Loop": 1}
    assert src.details["nodes"] == 9


def test_details_for_inspect(tmp_path):
    w = nh.from_array(RNG.standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [h.make_node("MatMul", ["x", "W"], ["m"]), h.make_node("Relu", ["m"], ["y"]),
             h.make_node("Gelu", ["y"], ["g"], domain="com.microsoft")]
    model = _model([w], nodes, [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4]),
                                h.make_tensor_value_info("W", T.FLOAT, [4, 3])],
                   opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])
    model.producer_version = "1.2"
    onnx.helper.set_model_props(model, {"author": "me"})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    src = open_onnx(path)
    d = src.details
    assert d["ir_version"] == model.ir_version and d["producer_name"] == "modelport-test"
    assert d["producer_version"] == "1.2" and d["opset_import"] == {"ai.onnx": 17, "com.microsoft": 1}
    assert d["inputs"] == {"x": "F32[batch, 4]"} and d["outputs"] == {"y": "F32[batch, 3]"}
    assert d["op_types"] == {"MatMul": 1, "Relu": 1, "com.microsoft.Gelu": 1}
    assert src.metadata == {"author": "me"}
    json.dumps(d)


def test_external_data_is_read_lazily_from_its_file(tmp_path):
    arrays = {n: a for n, a in RAW_ARRAYS.items() if n not in ("scalar", "empty")}
    model = _model([nh.from_array(a, n) for n, a in arrays.items()] + [h.make_tensor("typed", T.FLOAT, [2], [1, 2])])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    src = open_onnx(path)
    assert src["f32"].file == str(tmp_path / "ext.data") and src.files == [path, tmp_path / "ext.data"]
    assert src.details["external_data_files"] == ["ext.data"]
    _check_all(path, src)
    # Lazy: the model file itself holds no tensor bytes.
    assert path.stat().st_size < 2000


def _external_model(tmp_path: Path, location: str, offset=None, length=None, make_file=True) -> Path:
    arr = np.arange(6, dtype=np.float32)
    tensor = nh.from_array(arr, "w")
    if make_file:
        (tmp_path / "w.bin").write_bytes(arr.tobytes())
    ext.set_external_data(tensor, location, offset=offset, length=length)
    tensor.ClearField("raw_data")
    tensor.data_location = T.EXTERNAL
    path = tmp_path / "m.onnx"
    onnx.save(_model([tensor]), path)
    return path


def test_external_data_in_the_folder_is_accepted(tmp_path):
    src = open_onnx(_external_model(tmp_path, "w.bin", offset=0, length=24))
    assert src["w"].read().tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "nested_dotdot", "offset_past_end",
                                  "length_past_end", "wrong_length", "missing", "backslash"])
def test_external_data_traversal_and_lies(tmp_path, case):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "sub").mkdir()
    location, offset, length = {
        "dotdot": ("../secret.bin", None, None), "absolute": (str(secret), None, None),
        "nested_dotdot": ("sub/../../secret.bin", None, None), "backslash": ("..\\secret.bin", None, None),
        "symlink": ("link.bin", None, None), "hardlink": ("hard.bin", None, None),
        "offset_past_end": ("w.bin", 100, None), "length_past_end": ("w.bin", 8, 24),
        "wrong_length": ("w.bin", 0, 20), "missing": ("nothere.bin", None, None)}[case]
    if case == "symlink":
        os.symlink(secret, model_dir / "link.bin")
    if case == "hardlink":
        os.link(secret, model_dir / "hard.bin")
    path = _external_model(model_dir, location, offset, length)
    with pytest.raises(FormatError) as err:
        src = open_onnx(path)
        src["w"].read()
    assert "\n" not in str(err.value)


def _cut_cases(data: bytes) -> list[int]:
    return sorted(set(range(1, len(data), max(1, len(data) // 80))))


def test_truncated_files_are_format_errors(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model([nh.from_array(a, n) for n, a in RAW_ARRAYS.items()]), path)
    data = path.read_bytes()
    for cut in _cut_cases(data):
        bad = tmp_path / "cut.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            src = open_onnx(bad)
            for ref in src.values():
                ref.read()


def test_lying_lengths_are_format_errors(tmp_path):
    arr = np.arange(6, dtype=np.float32)
    tensor = nh.from_array(arr, "w")
    cases = {}
    short = onnx.TensorProto()
    short.CopyFrom(tensor)
    short.raw_data = arr.tobytes()[:20]
    cases["raw_data shorter than dims"] = _model([short])
    few = onnx.TensorProto(name="w", data_type=T.FLOAT, dims=[6], float_data=[1.0, 2.0])
    cases["typed values fewer than dims"] = _model([few])
    nodata = onnx.TensorProto(name="w", data_type=T.FLOAT, dims=[3])
    cases["no data"] = _model([nodata])
    dup = _model([tensor, tensor])
    cases["duplicate names"] = dup
    for model in cases.values():
        path = tmp_path / "bad.onnx"
        path.write_bytes(model.SerializeToString())
        with pytest.raises(FormatError):
            src = open_onnx(path)
            src["w"].read()
    # A length field claiming more bytes than its message holds, found before anything is allocated.
    good = _model([tensor]).SerializeToString()
    graph_at = good.index(b"\x3a")                       # field 7 (graph), wire type LEN
    lying = good[:graph_at + 1] + b"\xff\xff\xff\xff\x0f" + good[graph_at + 2:]
    path = tmp_path / "lying.onnx"
    path.write_bytes(lying)
    with measure_cost() as cost, pytest.raises(FormatError, match="claims"):
        open_onnx(path)
    assert cost.peak_alloc < 1 << 20, cost


def test_detection_is_by_content(tmp_path):
    path = tmp_path / "model.bin"
    onnx.save(_model([nh.from_array(RAW_ARRAYS["f32"], "W")]), path)
    assert modelport.open(path).format == "onnx"
    assert not detect(path, b"\x08\x01\x12\x0a\x0a\x08meta")        # TF SavedModel: schema 1, then a MetaGraphDef
    assert not detect(path, b"GGUF\x03\x00\x00\x00")
    assert not detect(path, b"\x08\x00\x00\x00TFL3")


def test_open_is_fast_and_lazy_on_a_big_inline_model(tmp_path):
    big = [nh.from_array(np.full((1024, 1024), i, np.float32), f"w{i}") for i in range(24)]   # 96 MB inline
    path = tmp_path / "big.onnx"
    path.write_bytes(_model(big).SerializeToString())
    del big
    with measure_cost() as cost:
        src = open_onnx(path)
    assert cost.read_bytes < (1 << 20) and cost.peak_alloc < (1 << 20), cost
    assert len(src) == 24 and src["w23"].read()[1023, 1023] == 23


def _ld(tag: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([tag, len(payload)]) + payload


HAND_BUILT = {  # TensorProto bytes inside graph.initializer inside a ModelProto
    "packed dims truncated": _ld(0x0A, b"\x80\x80") + b"\x10\x01" + _ld(0x42, b"w"),
    "varint of 11 bytes": b"\x08" + b"\xff" * 10 + b"\x01" + b"\x10\x01",
    "group wire type": b"\x0b\x0c",
    "field number 0": b"\x00\x01",
    "negative dim": b"\x08" + b"\xff" * 9 + b"\x01" + b"\x10\x01" + _ld(0x42, b"w"),
    "unknown data type": b"\x08\x01\x10\x63" + _ld(0x42, b"w") + _ld(0x4A, b"\x00"),
    "name not UTF-8": b"\x08\x01\x10\x01" + _ld(0x42, b"\xff") + _ld(0x4A, b"\x00" * 4),
    "raw and typed": b"\x08\x01\x10\x01" + _ld(0x42, b"w") + _ld(0x4A, b"\x00" * 4) + _ld(0x22, b"\x00" * 4),
    "float_data of 5 bytes": b"\x08\x01\x10\x01" + _ld(0x42, b"w") + _ld(0x22, b"\x00" * 5),
}


@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_hand_built_malformed_tensors(tmp_path, case):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x08" + _ld(0x3A, _ld(0x2A, HAND_BUILT[case])))
    with pytest.raises(FormatError) as err:
        src = open_onnx(path)
        for ref in src.values():
            ref.read()
    assert "\n" not in str(err.value) and err.value.path == str(path)


def test_hand_built_wellformed_tensor(tmp_path):
    """The malformed cases above break this one in one place each."""
    path = tmp_path / "good.onnx"
    path.write_bytes(b"\x08\x08" + _ld(0x3A, _ld(0x2A, b"\x08\x01\x10\x01" + _ld(0x42, b"w") + _ld(0x4A, b"\x00" * 4))))
    assert onnx.load(str(path)).graph.initializer[0].name == "w"
    assert open_onnx(path)["w"].read().tolist() == [0.0]
