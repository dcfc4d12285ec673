"""NumPy .npy/.npz: NumPy itself is the oracle; object arrays are never unpickled."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import modelport
from modelport.formats.numpy import write_npz

ARRAYS = {
    "f32": np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32),
    "f16": np.arange(10, dtype=np.float16),
    "i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
    "u8": np.arange(7, dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "c64": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    "scalar": np.array(2.5, dtype=np.float64),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
}


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reads_like_numpy(tmp_path, compressed):
    path = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **ARRAYS)
    src = modelport.open(path)
    assert src.format == "numpy" and list(src.keys()) == list(ARRAYS)
    with np.load(path) as ref:
        for name in ARRAYS:
            ours = src[name].read()
            assert ours.shape == ref[name].shape and np.array_equal(ours, ref[name]), name
            assert ours.dtype.byteorder in "=<|"


def test_stored_members_are_memory_mapped(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, w=ARRAYS["f32"])
    ref = modelport.open(path)["w"]
    assert ref.offset is not None and not ref.read().flags.owndata


def test_npy_file(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, ARRAYS["fortran"])
    src = modelport.open(path)
    assert list(src.keys()) == ["weights"] and np.array_equal(src["weights"].read(), ARRAYS["fortran"])


def test_writer_round_trips_bf16_and_fp8(tmp_path):
    bf = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    f8 = np.array([0.5, -2, 448], dtype=ml_dtypes.float8_e4m3fn)
    refs = [modelport.TensorRef(n, modelport.DTYPES[d], a.shape, (lambda a=a: a))
            for n, d, a in (("bf", "BF16", bf), ("f8", "F8_E4M3", f8), ("x", "F32", ARRAYS["f32"]))]
    out = tmp_path / "out.npz"
    write_npz(refs, out)
    src = modelport.open(out)
    assert src["bf"].dtype.name == "BF16" and src["f8"].dtype.name == "F8_E4M3"
    assert src["bf"].read().tobytes() == bf.tobytes() and src["f8"].read().tobytes() == f8.tobytes()
    with np.load(out) as ref:  # plain NumPy still reads the file (bf16/fp8 as raw void bytes)
        assert np.array_equal(ref["x"], ARRAYS["f32"])


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    arr = np.empty(1, dtype=object)
    arr[0] = Payload()
    path = tmp_path / "evil.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(modelport.UnsafeFileError, match="pickle"):
        modelport.open(path)
    npz = tmp_path / "evil.npz"
    np.savez(npz, ok=ARRAYS["f32"], evil=arr)
    with pytest.raises(modelport.UnsafeFileError):
        modelport.open(npz)
    assert not marker.exists()


def test_lying_npy_header(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(10, np.float32))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(10,)", b"(99,)"))
    with pytest.raises(modelport.FormatError, match="header needs"):
        modelport.open(path)
    path.write_bytes(data[:-8])
    with pytest.raises(modelport.FormatError):
        modelport.open(path)
