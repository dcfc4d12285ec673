"""TensorFlow bundle / SavedModel / GraphDef reader: files written by TF 2.21 (committed; values from
tf.train.load_checkpoint and tf.make_ndarray) and tables built here byte by byte for the malformed cases."""

from __future__ import annotations

import shutil
import struct

import google_crc32c
import ml_dtypes
import numpy as np
import pytest

import modelport
from modelport.core.errors import FormatError
from modelport.formats import tf as tf_fmt
from tests.conftest import assert_one_line_error
from tests.fixtures.expected import fixture, load_expected

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _check(src, expected):
    assert sorted(src.tensors) == sorted(expected)
    for key, arr in expected.items():
        got = src[key].read()
        assert got.dtype == arr.dtype and got.shape == arr.shape, key
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("entry", ["tf_ckpt/ckpt-1.index", "tf_ckpt/ckpt-1.data-00000-of-00001", "tf_ckpt"])
def test_checkpoint_equals_tf_reader(entry):
    src = modelport.open(fixture(entry))
    assert src.format == "tf"
    _check(src, load_expected("tf_ckpt"))
    assert "s" + SUFFIX in src.details["non_numeric"] and src.details["object_graph"]
    assert isinstance(src["w"].read(), np.memmap)


def test_sharded_checkpoint_with_partitioned_variables():
    src = modelport.open(fixture("tf_sharded"))  # TF's MaxShardSizePolicy: 3 shards, variables split in slices
    _check(src, load_expected("tf_sharded"))
    assert src.details["shards"] == 3 and src.details["partitioned"] == 2
    assert src["b"].extra["slices"] == 2 and len(src.files) == 4


def test_saved_model_folder():
    src = modelport.open(fixture("tf_saved_model"))
    _check(src, load_expected("tf_saved_model"))
    assert src.details["tags"] == ["serve"] and "serving_default" in src.details["signatures"]
    assert modelport.open(fixture("tf_saved_model/saved_model.pb")).keys() == src.keys()


def test_graphdef_constants_equal_make_ndarray():
    src = modelport.open(fixture("tf_graph.pb"))
    expected = load_expected("tf_graph.pb")
    _check(src, expected)
    np.testing.assert_array_equal(src["short"].read(), [1, 2, 2, 2])       # the fill rule
    assert src["dense/kernel"].offset is not None and src["splat"].offset is None
    assert src.details["ops"] == {"Const": 15, "Identity": 1}


def test_data_crc_is_checked(tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(fixture("tf_ckpt"), folder)
    src = modelport.open(folder / "ckpt-1.index")
    shard = folder / "ckpt-1.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[src["w"].offset] ^= 0x40
    shard.write_bytes(bytes(data))
    src = modelport.open(folder / "ckpt-1.index")
    with pytest.raises(FormatError, match="CRC32C"):
        src["w"].read()
    src["b"].read()  # other tensors still fine


def test_index_block_crc_is_checked(tmp_path, cli):
    folder = tmp_path / "ck"
    shutil.copytree(fixture("tf_ckpt"), folder)
    index = folder / "ckpt-1.index"
    data = bytearray(index.read_bytes())
    data[20] ^= 0x01
    index.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="CRC32C"):
        modelport.open(index)
    assert_one_line_error(cli("inspect", index), "CRC32C")


def test_truncated_index_and_graph(tmp_path):
    for name in ("tf_ckpt/ckpt-1.index", "tf_graph.pb"):
        data = fixture(name).read_bytes()
        for cut in range(1, len(data), 23):
            path = tmp_path / "cut"
            path.write_bytes(data[:cut])
            with pytest.raises(FormatError):
                for ref in modelport.open(path, format="tf").values():
                    ref.read()


# --- tables built here ----------------------------------------------------------------------

def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not out[-1] & 0x80:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(num << 3 | 2) + _varint(len(value)) + value
    return _varint(num << 3) + _varint(value)


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def entry(dtype: int, shape, offset: int, size: int, data: bytes | None = None, shard: int = 0) -> bytes:
    shp = b"".join(_field(2, _field(1, d)) for d in shape)
    out = _field(1, dtype) + _field(2, shp) + (_field(3, shard) if shard else b"") + _field(4, offset) + _field(5, size)
    if data is not None:
        out += _varint(6 << 3 | 5) + struct.pack("<I", _mask(google_crc32c.value(data)))
    return out


def write_table(path, items, restart_every: int = 2, compression: int = 0) -> None:
    """A LevelDB table as TF writes it: one data block (prefix-compressed keys), empty metaindex, index block."""
    def block(kvs):
        body, restarts, prev = bytearray(), [], b""
        for i, (k, v) in enumerate(kvs):
            shared = 0
            if i % restart_every == 0:
                restarts.append(len(body))
            else:
                while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                    shared += 1
            body += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
            prev = k
        body += b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts or [0]))
        return bytes(body)

    out = bytearray()

    def put(contents):
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + bytes([compression]) + struct.pack("<I", _mask(google_crc32c.value(contents + bytes([compression])))))
        return handle

    data_handle = put(block(items))
    meta_handle = put(block([]))
    index_handle = put(block([(items[-1][0], data_handle)]))
    footer = meta_handle + index_handle
    out += footer + b"\0" * (40 - len(footer)) + tf_fmt.TABLE_MAGIC
    path.write_bytes(bytes(out))


def bundle(tmp_path, tensors: dict, header: bytes | None = None, shards: int = 1, big: bool = False, **kw):
    """tensors: name -> (dtype code, shape, bytes) written to shard 0, or a raw BundleEntryProto (bytes)."""
    data, items = bytearray(), []
    for name, spec in sorted(tensors.items()):
        if isinstance(spec, bytes):
            items.append((name.encode(), spec))
            continue
        code, shape, raw = spec
        items.append((name.encode(), entry(code, shape, len(data), len(raw), raw)))
        data += raw
    head = header if header is not None else _field(1, shards) + (_field(2, 1) if big else b"")
    write_table(tmp_path / "m.index", [(b"", head), *items], **kw)
    (tmp_path / f"m.data-00000-of-{shards:05d}").write_bytes(bytes(data))
    return tmp_path / "m.index"


def test_prefix_compressed_keys_big_endian_and_int4(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = bundle(tmp_path, {
        "layer.0.weight": (1, [2, 3], w.astype(">f4").tobytes()),
        "layer.0.bias": (1, [3], np.ones(3, ">f4").tobytes()),
        "layer.1.weight": (19, [2], np.array([1.5, -2], ">f2").tobytes()),
        "q4": (29, [3], bytes([0x01, 0x0E, 0x07])),
        "b": (14, [2], np.array([1.5, 3], ml_dtypes.bfloat16).view(np.uint16).astype(">u2").tobytes()),
    }, big=True, restart_every=3)
    src = modelport.open(path)
    assert list(src.tensors) == ["b", "layer.0.bias", "layer.0.weight", "layer.1.weight", "q4"]
    np.testing.assert_array_equal(src["layer.0.weight"].read(), w)
    np.testing.assert_array_equal(src["layer.1.weight"].read(), np.array([1.5, -2], np.float16))
    assert src["q4"].read().astype(int).tolist() == [1, -2, 7]
    assert src["b"].read().astype(float).tolist() == [1.5, 3.0]
    assert src.details["endianness"] == "big"


@pytest.mark.parametrize("tensors, kw, needle", [
    ({"w": entry(1, [2], 0, 8, shard=3)}, {}, "shard 3 of 1"),
    ({"w": entry(1, [2], 1 << 40, 8)}, {}, "lies outside"),
    ({"w": entry(1, [4], 0, 8)}, {}, "needs 16"),
    ({"w": entry(1, [-1], 0, 8)}, {}, "unknown shape"),
    ({"w": entry(1, [2], 0, 8, shard=1)}, {"shards": 2}, "data-00001-of-00002 is missing"),
    ({"w": (1, [2], b"\0" * 8)}, {"header": _field(1, 10**9)}, "claims 1000000000 shards"),
    ({"w": (1, [2], b"\0" * 8)}, {"compression": 1}, "snappy"),
    ({"w": (1, [2], b"\0" * 8)}, {"compression": 7}, "compression type 7"),
    ({"w": entry(1, [4], 0, 0) + _field(7, _field(1, _field(1, 0) + _field(2, 2)))}, {}, "1 slices declared, 0 stored"),
])
def test_lying_bundles(tmp_path, tensors, kw, needle):
    path = bundle(tmp_path, tensors, **kw)
    with pytest.raises(FormatError, match=needle) as info:
        modelport.open(path)
    assert "\n" not in str(info.value)


def test_lying_restart_count(tmp_path):
    path = bundle(tmp_path, {"w": (1, [2], b"\0" * 8)})
    data = bytearray(path.read_bytes())
    first_block_end = data.index(b"\x00\x00\x00\x00\x01\x00\x00\x00") + 4
    data[first_block_end:first_block_end + 4] = struct.pack("<I", 10**6)
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        modelport.open(path)


def test_checkpoint_state_cannot_escape(tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(fixture("tf_ckpt"), folder)
    for target in ("../ck/ckpt-1", "/etc/passwd"):
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{target}"\n')
        with pytest.raises(FormatError, match="outside"):
            modelport.open(folder)


def _graph(*consts: bytes) -> bytes:
    nodes = b""
    for i, tensor in enumerate(consts):
        attr = _field(1, b"value") + _field(2, _field(8, tensor))
        nodes += _field(1, _field(1, f"c{i}".encode()) + _field(2, b"Const") + _field(5, attr))
    return nodes


def test_graphdef_fill_bomb_and_overlong_values(tmp_path):
    shape = lambda *d: _field(2, b"".join(_field(2, _field(1, x)) for x in d))  # noqa: E731
    bomb = _field(1, 1) + shape(1 << 20, 1 << 20) + _field(5, struct.pack("<f", 0.5))
    path = tmp_path / "g.pb"
    path.write_bytes(_graph(bomb))
    with pytest.raises(FormatError, match="would expand"):
        modelport.open(path)
    too_many = _field(1, 3) + shape(2) + _field(7, _varint(1) + _varint(2) + _varint(3))
    path.write_bytes(_graph(too_many))
    with pytest.raises(FormatError, match="3 values for 2 elements"):
        modelport.open(path)["c0"].read()
    content = _field(1, 1) + shape(4) + _field(4, b"\0" * 8)
    path.write_bytes(_graph(content))
    with pytest.raises(FormatError, match="tensor_content has 8 bytes"):
        modelport.open(path)


def test_pure_crc32c_fallback_matches_google_crc32c():
    data = fixture("tf_ckpt/ckpt-1.data-00000-of-00001").read_bytes()
    assert tf_fmt.crc32c_pure(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tf_fmt.crc32c_pure(data) == google_crc32c.value(data)
