"""Split GGUF (llama.cpp's gguf-split layout): written by convert/quantize, read as one model from any part,
merged back byte for byte. Oracles: llama-cpp-python (loads the set from its first file) and gguf-py's reader
(each part is a GGUF of its own: keys, types, order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import modelport
from gguf import GGUFReader, GGUFValueType
from modelport.formats.gguf import read_header
from tests.conftest import assert_one_line_error
from tests.factory import make_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("split") / "m", "llama", "spm", hidden=64, ffn=128, layers=2)


def _logits(path: Path, ids: list[int]) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def _gguf_split(whole: Path, max_tensors: int | None = None, max_size: int | None = None) -> list[bytes]:
    """The files llama.cpp's gguf-split writes for `--split-max-tensors N` or `--split-max-size N`, made here by
    the same calls on ggml's own gguf code (llama-cpp-python's libggml-base): per part a fresh context, the input's KV for the first
    (`gguf_set_kv`), split.no = i, split.count = 0, split.tensors.count, the part's tensors, then split.count = n;
    the header bytes from `gguf_get_meta_data`, each tensor's data padded with zeros to 32 bytes."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]

    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name, res, args in [("gguf_init_from_file", vp, [ctypes.c_char_p, InitParams]), ("gguf_init_empty", vp, []),
                            ("gguf_set_kv", None, [vp, vp]), ("gguf_set_val_u16", None, [vp, ctypes.c_char_p, ctypes.c_uint16]),
                            ("gguf_set_val_i32", None, [vp, ctypes.c_char_p, ctypes.c_int32]),
                            ("gguf_get_n_tensors", ctypes.c_int64, [vp]), ("gguf_get_tensor_name", ctypes.c_char_p, [vp, ctypes.c_int64]),
                            ("gguf_get_tensor_offset", sz, [vp, ctypes.c_int64]), ("gguf_get_data_offset", sz, [vp]),
                            ("ggml_get_tensor", vp, [vp, ctypes.c_char_p]), ("ggml_nbytes", sz, [vp]),
                            ("gguf_add_tensor", None, [vp, vp]), ("gguf_get_meta_size", sz, [vp]),
                            ("gguf_get_meta_data", None, [vp, vp]), ("gguf_free", None, [vp]), ("ggml_free", None, [vp])]:
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    meta_ctx = ctypes.c_void_p()
    ctx_in = lib.gguf_init_from_file(str(whole).encode(), InitParams(True, ctypes.pointer(meta_ctx)))
    assert ctx_in
    n = lib.gguf_get_n_tensors(ctx_in)
    names = [lib.gguf_get_tensor_name(ctx_in, i) for i in range(n)]
    groups: list[list[bytes]] = [[]]
    size = 0
    for i, name in enumerate(names):     # gguf-split's should_split, in its two modes
        padded = -(-lib.ggml_nbytes(lib.ggml_get_tensor(meta_ctx, name)) // 32) * 32
        if (max_tensors and i and i % max_tensors == 0) or (max_size and size + padded > max_size):
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += padded
    data = whole.read_bytes()
    files = []
    outs = []
    for i, group in enumerate(groups):
        out = lib.gguf_init_empty()
        if i == 0:
            lib.gguf_set_kv(out, ctx_in)
        lib.gguf_set_val_u16(out, b"split.no", i)
        lib.gguf_set_val_u16(out, b"split.count", 0)
        lib.gguf_set_val_i32(out, b"split.tensors.count", n)
        for name in group:
            lib.gguf_add_tensor(out, lib.ggml_get_tensor(meta_ctx, name))
        outs.append(out)
    for out, group in zip(outs, groups):
        lib.gguf_set_val_u16(out, b"split.count", len(groups))
        meta = ctypes.create_string_buffer(lib.gguf_get_meta_size(out))
        lib.gguf_get_meta_data(out, meta)
        body = [meta.raw]
        for name in group:
            i = names.index(name)
            start = lib.gguf_get_data_offset(ctx_in) + lib.gguf_get_tensor_offset(ctx_in, i)
            nbytes = lib.ggml_nbytes(lib.ggml_get_tensor(meta_ctx, name))
            body += [data[start:start + nbytes], bytes(-nbytes % 32)]
        files.append(b"".join(body))
        lib.gguf_free(out)
    lib.gguf_free(ctx_in)
    lib.ggml_free(meta_ctx)
    return files


def _keys(path: Path) -> list[tuple[str, int]]:
    """(key, GGUF type) in file order, as gguf-py reads them."""
    return [(f.name, f.types[0]) for f in GGUFReader(path).fields.values() if not f.name.startswith("GGUF.")]


def test_split_set_loads_in_llama_cpp_reads_as_one_model_and_merges_byte_identical(model, tmp_path, cli):
    whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
    assert cli("convert", model, whole, "--quant", "Q8_0", "-q").code == 0
    res = cli("convert", model, cut, "--quant", "Q8_0", "--split-max-tensors", "8", "--verify", "-q")
    assert res.code == 0, res.stderr
    parts = [tmp_path / f"cut-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["whole.gguf", "whole.Modelfile", "cut.Modelfile", *(p.name for p in parts)])
    assert "FROM ./cut-00001-of-00003.gguf" in (tmp_path / "cut.Modelfile").read_text()

    # gguf-split's keys: all metadata in the first part, then split.no (u16), split.tensors.count (i32),
    # split.count (u16); the later parts hold only those three.
    whole_keys = _keys(whole)
    split_keys = [("split.no", GGUFValueType.UINT16), ("split.tensors.count", GGUFValueType.INT32),
                  ("split.count", GGUFValueType.UINT16)]
    assert _keys(parts[0]) == whole_keys + split_keys
    assert _keys(parts[1]) == _keys(parts[2]) == split_keys
    # byte for byte what gguf-split writes (its calls, on llama.cpp's own gguf code)
    assert [p.read_bytes() for p in parts] == _gguf_split(whole, max_tensors=8)
    counts = [len(GGUFReader(p).tensors) for p in parts]
    assert counts == [8, 8, len(GGUFReader(whole).tensors) - 16]
    assert [int(GGUFReader(p).fields["split.no"].contents()) for p in parts] == [0, 1, 2]

    # llama.cpp loads the set from its first file: the same logits as the single file
    ids = [1, 5, 9, 20, 33, 47, 2]
    assert np.array_equal(_logits(parts[0], ids), _logits(whole, ids))

    # any part opens the whole set, as one model with the unsplit file's metadata and tensors
    with modelport.open(whole) as one:
        for part in parts:
            with modelport.open(part) as source:
                assert source.path == parts[0] and source.files == parts
                assert list(source.metadata) == list(one.metadata)
                assert list(source.tensors) == list(one.tensors)
                for name, ref in one.tensors.items():
                    assert np.array_equal(source.tensors[name].read_raw(), ref.read_raw())
    res = cli("inspect", parts[1], "--json")
    assert res.code == 0 and '"count": 3' in res.stdout

    # merge from any part: byte-identical to the unsplit file
    assert cli("convert", parts[2], tmp_path / "merged.gguf", "-q").code == 0
    assert (tmp_path / "merged.gguf").read_bytes() == whole.read_bytes()


def test_split_by_size_keeps_each_part_under_the_limit_and_quantize_splits_too(model, tmp_path, cli):
    f16 = tmp_path / "f16.gguf"
    assert cli("convert", model, f16, "--quant", "F16", "-q").code == 0
    res = cli("quantize", f16, tmp_path / "q.gguf", "--type", "Q4_0", "--split-max-size", "60K", "--json")
    assert res.code == 0, res.stderr
    parts = sorted(tmp_path.glob("q-*-of-*.gguf"))
    assert len(parts) > 2
    pad = lambda n: -(-n // 32) * 32   # noqa: E731 - gguf-split counts tensor data padded to 32 bytes
    for part in parts:
        sizes = [pad(t.nbytes) for t in read_header(part).tensors]
        assert sum(sizes) <= 60_000 or len(sizes) == 1
    # gguf-split's cut: a part ends only where its next tensor would overflow it
    headers = [read_header(p) for p in parts]
    for a, b in zip(headers, headers[1:]):
        assert sum(pad(t.nbytes) for t in a.tensors) + pad(b.tensors[0].nbytes) > 60_000
    assert cli("quantize", f16, tmp_path / "q1.gguf", "--type", "Q4_0", "-q").code == 0
    # byte for byte gguf-split's parts (no tensor is over the limit here: gguf-split stops on one, modelport gives it
    # a part of its own)
    assert [p.read_bytes() for p in parts] == _gguf_split(tmp_path / "q1.gguf", max_size=60_000)
    assert cli("convert", parts[0], tmp_path / "merged.gguf", "-q").code == 0
    assert (tmp_path / "merged.gguf").read_bytes() == (tmp_path / "q1.gguf").read_bytes()


def test_split_errors_are_one_line(model, tmp_path, cli):
    assert cli("convert", model, tmp_path / "c.gguf", "--split-max-tensors", "10", "-q").code == 0
    parts = sorted(tmp_path.glob("c-*.gguf"))
    assert_one_line_error(cli("convert", model, tmp_path / "x.safetensors", "--split-max-size", "1GB"), "--shard-size")
    assert_one_line_error(cli("convert", model, tmp_path / "c.gguf", "--split-max-tensors", "10"), "already exists")
    renamed = tmp_path / "renamed.gguf"
    renamed.write_bytes(parts[0].read_bytes())
    assert_one_line_error(cli("inspect", renamed), "must keep its name", f"-00001-of-{len(parts):05d}.gguf")
    # every part is scanned, whichever one was named: hidden bytes after the second part's tensors refuse the set
    clean = parts[1].read_bytes()
    parts[1].write_bytes(clean + b"\x00hidden payload")
    assert_one_line_error(cli("inspect", parts[0]), parts[1].name, "trailing bytes")
    parts[1].unlink()
    assert_one_line_error(cli("inspect", parts[0]), "missing", parts[1].name)
