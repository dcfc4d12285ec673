"""Limits before allocation: a file's claims (counts, lengths, nesting, a zip member's sizes) are refused by a
bound derived from the file's size before anything of the claimed size is allocated.

Each case builds a small file that claims something enormous, opens and reads it through the public API, and
checks that it is refused with a one-line `ModelportError` while Python allocated no more than `PEAK` (tracemalloc
sees every Python and NumPy buffer, the buffered reads and zip reads where such claims used to land).
"""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import modelport
from modelport.core.errors import ModelportError

PEAK = 32 << 20    # every claim below is 4 GB or more; reading the small file itself takes well under this


def refused(path, match: str) -> str:
    """Open, read every tensor and inspect `path`; it must be refused (matching `match`) within PEAK bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelportError, match=match) as info:
            with modelport.open(path, trust=True) as src:
                for ref in src.values():
                    np.asarray(ref.read()).tobytes()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK, f"allocated {peak} bytes before refusing"
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


# --- counts: billions of tensors, keys, elements --------------------------------------------------

def _gguf(n_tensors: int, n_kv: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body


def _gguf_string(s: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(s) if length is None else length) + s


@pytest.mark.parametrize("n_tensors, n_kv, body, match", [
    (1 << 60, 0, b"", "runs past the end|cannot|tensor"),                               # a billion billion tensors
    (0, 1 << 60, b"", "runs past the end|cannot|key"),                                  # as many metadata keys
    (0, 1, _gguf_string(b"general.name") + struct.pack("<I", 8) + _gguf_string(b"x", 1 << 60), "runs past the end"),
    (0, 1, _gguf_string(b"k", 1 << 60), "limit|runs past"),                               # a 2^60-byte key
    (0, 1, _gguf_string(b"a") + struct.pack("<IIQ", 9, 0, 1 << 60), "runs past|cannot fit|elements"),   # 2^60 u8 array
    (0, 1, _gguf_string(b"a") + struct.pack("<IIQ", 9, 8, 1 << 40), "cannot fit|elements"),         # 2^40 strings
])
def test_gguf_counts_and_lengths(tmp_path, n_tensors, n_kv, body, match):
    path = tmp_path / "claims.gguf"
    path.write_bytes(_gguf(n_tensors, n_kv, body) + bytes(64))
    refused(path, match)


def test_safetensors_header_and_shape_claims(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b'{"a":{}}')
    refused(path, "header length|not a model file")      # not even detected as safetensors
    header = b'{"w":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,4]}}'
    path = tmp_path / "shape.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    refused(path, "shape|bytes|offsets")


def test_npy_shape_claim(tmp_path):
    path = tmp_path / "big.npy"
    buf = io.BytesIO()
    np.save(buf, np.zeros(4, "f4"))
    path.write_bytes(buf.getvalue().replace(b"(4,)", b"(1099511627776,)".ljust(4)).replace(b"(4,)", b""))
    refused(path, "header needs|bytes")


# --- strings of 2^60 bytes -----------------------------------------------------------------------

def test_pickle_string_length_claim(tmp_path):
    """A legacy torch file whose system-info pickle has a BINUNICODE claiming 4 GB: found by the fuzzer (the
    buffered file read of that length allocated 4 GB before failing); reads are now clamped to the file."""
    import torch

    path = tmp_path / "legacy.bin"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    at = data.index(b"X", 20)                  # the first BINUNICODE after the magic and protocol pickles
    data[at + 1:at + 5] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    refused(path, "malformed or truncated")


def test_msgpack_length_claims(tmp_path):
    cases = {"bin32": b"\x81\xa1w\xc6\xff\xff\xff\xff", "str32": b"\x81\xdb\xff\xff\xff\xff",
             "array32": b"\x81\xa1w\xdd\xff\xff\xff\xff", "map32": b"\x81\xa1w\xdf\xff\xff\xff\xff"}
    for name, data in cases.items():
        path = tmp_path / f"{name}.msgpack"
        path.write_bytes(data + bytes(16))
        refused(path, "needs|ends|past|elements")


def test_protobuf_length_claim(tmp_path):
    """An ONNX model whose graph field claims 2^60 bytes."""
    path = tmp_path / "long.onnx"
    path.write_bytes(b"\x08\x08" + b"\x3a" + bytes([0xFF] * 8 + [0x0F]) + bytes(32))   # ir_version 8, graph (7) LEN 2^60
    refused(path, "past|truncated|length|end")


# --- deep nesting ---------------------------------------------------------------------------------

def test_msgpack_nesting(tmp_path):
    path = tmp_path / "deep.msgpack"
    path.write_bytes(b"\x81\xa1w" + b"\x91" * 200_000 + b"\x01")
    refused(path, "deeper")


def test_pickle_nesting(tmp_path):
    """A torch checkpoint whose object nests 10,000 lists deep (the C unpickler builds it without recursing;
    the reader must refuse it before anything recurses over it)."""
    path = tmp_path / "deep.pt"
    import torch

    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = b"\x80\x02" + b"]" * 1 + b"(]" * 10_000 + b"e" * 10_000 + b"."   # [[[[...]]]]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    refused(path, "deeper|nest|not a dict|state")


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    n, size = len(payload), bytearray()
    while True:
        size.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            break
    return bytes([number << 3 | 2]) + bytes(size) + payload


def test_protobuf_nesting(tmp_path):
    """An ONNX graph whose If nodes nest subgraphs 40 deep (onnx's own serializer refuses to build it: 120 message
    levels; the reader follows subgraphs to 32), written field by field."""
    graph = _field(2, b"leaf")
    for depth in range(40):
        attribute = _field(1, b"then_branch") + _field(6, graph) + bytes([0xA0, 0x01, 5])   # AttributeProto type GRAPH
        graph = _field(1, _field(4, b"If") + _field(5, attribute)) + _field(2, f"g{depth}".encode())
    path = tmp_path / "deep.onnx"
    path.write_bytes(bytes([0x08, 0x08]) + _field(7, graph) + _field(8, bytes([2 << 3, 18])))
    refused(path, "nested more than")


def test_json_nesting(tmp_path):
    """A safetensors header nesting 100,000 arrays (Python's JSON parser would recurse once per level)."""
    header = b'{"__metadata__":{"a":"b"},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    refused(path, "nests deeper")


# --- zip bombs --------------------------------------------------------------------------------------

def _patch_sizes(path, member_suffix: str, file_size: int | None = None, compress_size: int | None = None) -> None:
    """Rewrite a member's declared sizes in its local header and the central directory (what readers believe)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    central = data.index(b"PK\x01\x02")
    while not data[central + 46:].startswith(info.filename.encode()):
        central = data.index(b"PK\x01\x02", central + 4)
    for base, at in ((info.header_offset, 18), (central, 20)):
        if compress_size is not None:
            data[base + at:base + at + 4] = struct.pack("<I", compress_size)
        if file_size is not None:
            data[base + at + 4:base + at + 8] = struct.pack("<I", file_size)
    path.write_bytes(bytes(data))


def test_npz_deflate_bomb(tmp_path):
    """A compressed .npz member claiming 4 GB from a few hundred bytes: more than deflate can expand."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, w=np.zeros(1000, "f4"))
    _patch_sizes(path, "w.npy", file_size=0xFFFFFFF0)
    refused(path, "zip bomb")


def test_npz_real_bomb_within_deflate_ratio_reads_only_what_it_declares(tmp_path):
    """1 MB of zeros deflates 1000x: a real ratio, read; the shape in its header must match the declared size."""
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, w=np.zeros(1 << 18, "f4"))
    assert path.stat().st_size < 4096
    with modelport.open(path) as src:
        assert src["w"].read().nbytes == 1 << 20


def test_torch_stored_member_claims_more_than_the_file(tmp_path):
    import torch

    path = tmp_path / "bomb.pt"
    torch.save({"w": torch.zeros(2)}, path)
    _patch_sizes(path, "data.pkl", file_size=0xFFFFFFF0, compress_size=0xFFFFFFF0)
    refused(path, "claims|bytes")


def test_keras_member_bomb(tmp_path):
    import h5py

    h5 = tmp_path / "w.h5"
    with h5py.File(h5, "w") as f:
        f["w"] = np.zeros(1000, "f4")
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.write(h5, "model.weights.h5")
    _patch_sizes(path, "model.weights.h5", file_size=0xFFFFFFF0)
    refused(path, "zip bomb")


def test_pickle_memo_claim(tmp_path):
    """LONG_BINPUT at index 2^31: the C unpickler sizes its memo table by the largest index."""
    path = tmp_path / "memo.pt"
    import torch

    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = b"\x80\x02}r" + struct.pack("<I", 1 << 31) + b"."
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    refused(path, "memo")
    assert pickle.loads(b"\x80\x02}q\x00.") == {}   # the same pickle with index 0 is fine for the real unpickler
