"""HDF5 / Keras reader and writer: committed Keras fixtures (tf-keras 2.21, keras 3.15.1) and h5py as oracles."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import ml_dtypes
import numpy as np
import pytest

import modelport
from modelport.core import dtypes
from modelport.core.errors import FormatError, UnsafeFileError
from modelport.core.tensor import TensorRef
from modelport.formats.hdf5 import write_hdf5
from tests.conftest import measure_cost
from tests.fixtures.expected import fixture, load_expected


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ["keras2_model.h5", "keras2_weights.h5"])
def test_keras2_weights_equal_what_keras_read(name):
    expected = load_expected(name)
    with modelport.open(fixture(name)) as src:
        assert src.format == "hdf5"
        model = {k: r for k, r in src.tensors.items() if not k.startswith("optimizer_weights.")}
        assert sorted(model) == sorted(expected)
        for key, ref in model.items():
            arr = ref.read()
            _same(arr, expected[key])
            assert isinstance(arr, np.memmap) and ref.offset is not None  # contiguous: mapped, not copied
        assert src.details["keras_layers"] == 5  # Activation has no weights but is listed
    if name == "keras2_model.h5":
        assert src.details["keras_model"]["layer_classes"]["Dense"] == 2
        assert src.metadata["keras_version"] == "2.21.0"
        # model.save() with a compiled Adam keeps its state: the iteration count and m, v per trained weight
        assert src.details["optimizer_weights"] == 11 == len(src.tensors) - len(expected)
        with h5py.File(fixture(name), "r") as f:
            for wname in f["optimizer_weights"].attrs["weight_names"]:
                key = "optimizer_weights." + wname.removesuffix(":0").replace("/", ".")
                _same(src[key].read(), f["optimizer_weights"][wname][()])
    else:
        assert "optimizer_weights" not in src.details


def test_keras2_optimizer_weights_are_read(tmp_path):
    """Keras 2's full-model layout written by h5py (no TensorFlow needed): model_weights/<layer>/<weight> listed by
    layer_names/weight_names, optimizer_weights/<optimizer path> listed by its own weight_names, older Keras's
    split attribute chunks (weight_names0, weight_names1) included."""
    rng = np.random.default_rng(5)
    kernel, bias = rng.standard_normal((4, 3)).astype("f4"), rng.standard_normal(3).astype("f4")
    state = {"iter:0": np.array(7, "i8"), "training/Adam/dense/kernel/m:0": rng.standard_normal((4, 3)).astype("f4"),
             "training/Adam/dense/kernel/v:0": rng.standard_normal((4, 3)).astype("f2"),
             "training/Adam/dense/bias/m:0": rng.standard_normal(3).astype("f4")}
    path = tmp_path / "keras2_full.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.3.1"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense"}]}})
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"dense"]
        layer = mw.create_group("dense")
        layer.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        layer["dense/kernel:0"], layer["dense/bias:0"] = kernel, bias
        opt = f.create_group("optimizer_weights")
        names = [n.encode() for n in state]
        opt.attrs["weight_names0"], opt.attrs["weight_names1"] = names[:2], names[2:]
        for name, value in state.items():
            opt[name] = value
    with modelport.open(path) as src:
        assert list(src) == ["dense.kernel", "dense.bias", "optimizer_weights.iter",
                             "optimizer_weights.training.Adam.dense.kernel.m", "optimizer_weights.training.Adam.dense.kernel.v",
                             "optimizer_weights.training.Adam.dense.bias.m"]
        _same(src["dense.kernel"].read(), kernel)
        _same(src["dense.bias"].read(), bias)
        with h5py.File(path, "r") as f:
            for name in state:
                _same(src["optimizer_weights." + name[:-2].replace("/", ".")].read(), f["optimizer_weights"][name][()])
        assert src.details["optimizer_weights"] == 4 and src.details["layout"] == "keras2 model"


def test_keras3_archive_matches_h5py_and_keras():
    expected = load_expected("keras3.keras")
    path = fixture("keras3.keras")
    with modelport.open(path) as src:
        ours = {k: r.read() for k, r in src.tensors.items()}
        paths = {k: r.extra["hdf5_path"] for k, r in src.tensors.items()}
        assert all(r.offset is not None for r in src.tensors.values())  # mapped inside the stored zip member
    for key, arr in ours.items():
        _same(arr, expected[key])
    assert ours["layers.dense_1.vars.0"].dtype == ml_dtypes.bfloat16
    # keras' own variables, layer by layer: the `vars` group's `name` attribute is the layer name
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        for key, h5path in paths.items():
            layer = f[h5path].parent.attrs["name"]
            _same(ours[key], expected[f"keras:{layer}|{h5path.rsplit('/', 1)[1]}"])


def test_keras3_deflated_member_is_streamed(tmp_path):
    src_zip = zipfile.ZipFile(fixture("keras3.keras"))
    out = tmp_path / "deflated.keras"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src_zip.infolist():
            z.writestr(info.filename, src_zip.read(info.filename))
    expected = load_expected("keras3.keras")
    src = modelport.open(out)
    assert src.details["weights_member"].startswith("deflated")
    for key, ref in src.tensors.items():
        _same(ref.read(), expected[key])
    tmp_file = src.tensors[key].file
    src.close()
    assert not __import__("os").path.exists(tmp_file)


def test_plain_h5_layouts_links_and_dtypes(tmp_path):
    path = tmp_path / "plain.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["model/layer.0/w"] = rng.normal(size=(4, 5)).astype(np.float32)
        f.create_dataset("model/chunked", data=np.arange(1000, dtype=np.int16), chunks=(100,), compression="gzip", shuffle=True)
        f.create_dataset("be", data=np.arange(6, dtype=">f8").reshape(2, 3))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        sid = h5py.h5s.create_simple((3,))
        h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT32, sid, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.array([7, 8, 9], np.int32))
        f["flags"] = np.array([True, False])
        f["text"] = "not a tensor"
        f["tied"] = f["model/layer.0/w"]           # hard link: same dataset twice
        f["soft"] = h5py.SoftLink("/be")
        f["scalar"] = np.float32(2.5)
    with h5py.File(path, "r") as f:
        truth = {"model.layer.0.w": f["model/layer.0/w"][()], "model.chunked": f["model/chunked"][()],
                 "be": f["be"][()].astype("<f8"), "compact": f["compact"][()], "flags": f["flags"][()],
                 "scalar": f["scalar"][()]}
    src = modelport.open(path)
    assert sorted(src.tensors) == sorted(truth)
    for key, arr in truth.items():
        got = src[key].read()
        np.testing.assert_array_equal(got, arr)
        assert got.dtype == arr.dtype.newbyteorder("=")
    assert src["model.layer.0.w"].offset is not None
    assert src["model.chunked"].offset is None and src["compact"].offset is None
    assert src.aliases == {"tied": "model.layer.0.w", "soft": "be"}
    assert "text" in src.details["skipped_non_numeric"]


def test_keras2_split_name_attributes(tmp_path):
    path = tmp_path / "split.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = np.array([b"a"])
        f.attrs["layer_names1"] = np.array([b"b", b"noweights"])
    with h5py.File(path, "a") as f:
        for layer in ("a", "b", "noweights"):
            f.create_group(layer)
        f["a/a/kernel:0"] = np.ones((2, 2), np.float32)
        f["a"].attrs["weight_names"] = np.array([b"a/kernel:0"])
        f["b/b/bias:0"] = np.zeros(3, np.float32)
        f["b/b/kernel:0"] = np.full((1, 3), 2, np.float32)
        f["b"].attrs["weight_names0"] = np.array([b"b/kernel:0"])
        f["b"].attrs["weight_names1"] = np.array([b"b/bias:0"])
        f["noweights"].attrs["weight_names"] = np.zeros(0, np.float64)
    src = modelport.open(path)
    assert list(src.tensors) == ["a.kernel", "b.kernel", "b.bias"]  # weight_names order, chunks joined
    np.testing.assert_array_equal(src["b.kernel"].read(), np.full((1, 3), 2, np.float32))


def _ref(name, arr):
    arr = np.asarray(arr)
    return TensorRef(name, dtypes.from_numpy(arr.dtype), arr.shape, lambda a=arr: a)


def test_writer_round_trip_every_dtype(tmp_path):
    tensors = [
        _ref("model.embed.weight", np.arange(12, dtype=np.float32).reshape(3, 4)),
        _ref("bf16", np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)),
        _ref("fp8", np.array([0.5, -1.0], ml_dtypes.float8_e4m3fn)),
        _ref("int4", np.array([1, -2, 7], ml_dtypes.int4)),
        _ref("a/b", np.array([[1, 2]], np.int64)),
        _ref("scalar", np.array(3.0, np.float16)),
        _ref("mask", np.array([True, False])),
    ]
    out = tmp_path / "out.h5"
    write_hdf5(tensors, out, metadata={"source": "test"}, aliases={"lm_head.weight": "model.embed.weight"})
    with h5py.File(out, "r") as f:  # h5py sees plain datasets; bf16 as uint16 + a tag
        assert f["bf16"].dtype == np.uint16 and f["bf16"].attrs["modelport_dtype"] == "BF16"
        np.testing.assert_array_equal(f["model.embed.weight"][()], tensors[0].read())
        assert f["a\u2215b"].attrs["modelport_name"] == "a/b"
    back = modelport.open(out)
    assert list(back.tensors) == [t.name for t in tensors]
    for t in tensors:
        _same(back[t.name].read(), t.read())
    assert back.aliases == {"lm_head.weight": "model.embed.weight"}
    assert back.metadata == {"source": "test"}


def test_convert_keras_fixture_to_h5_and_back(tmp_path):
    src = modelport.open(fixture("keras2_model.h5"))
    out = tmp_path / "flat.h5"
    write_hdf5(src.tensors.values(), out)
    expected = load_expected("keras2_model.h5")
    back = modelport.open(out)
    for key, arr in expected.items():
        _same(back[key].read(), arr)


def test_external_storage_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 16)
    path = tmp_path / "ext.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="f4", external=[(str(secret), 0, 16)])
    with pytest.raises(UnsafeFileError, match="external file"):
        modelport.open(path)


def test_external_link_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(3)
    path = tmp_path / "link.h5"
    with h5py.File(path, "w") as f:
        f["w"] = h5py.ExternalLink(str(other), "/x")
    with pytest.raises(UnsafeFileError, match="external link"):
        modelport.open(path)


def test_virtual_dataset_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(3)
    path = tmp_path / "vds.h5"
    layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(3,))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("v", layout)
    with pytest.raises(UnsafeFileError, match="virtual"):
        modelport.open(path)


def test_shape_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("huge", shape=(1 << 20, 1 << 20), dtype="f4", chunks=(16, 16))
    with pytest.raises(FormatError, match="shape bomb"):
        modelport.open(path)


def test_truncated_and_garbage_files(tmp_path, cli):
    from tests.conftest import assert_one_line_error

    data = fixture("keras2_weights.h5").read_bytes()
    for cut in (100, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError):
            src = modelport.open(bad)
            for ref in src.values():
                ref.read()
    assert_one_line_error(cli("inspect", tmp_path / f"cut{len(data) // 2}.h5"), "HDF5")


def test_keras_archive_with_garbage_weights_and_lambda_config(tmp_path):
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "evil", "function": {
            "class_name": "__lambda__", "config": {"code": "YWJj"}}}},
        {"module": "os", "class_name": "system", "config": {"name": "x"}}]}}
    good = tmp_path / "lambda.keras"
    with zipfile.ZipFile(fixture("keras3.keras")) as z, zipfile.ZipFile(good, "w") as out:
        out.writestr("config.json", json.dumps(cfg))
        out.writestr("metadata.json", z.read("metadata.json"))
        out.writestr("model.weights.h5", z.read("model.weights.h5"))
    with pytest.raises(modelport.UnsafeFileError, match="Lambda"):  # open() scans first and refuses it
        modelport.open(good)
    from modelport.formats.registry import open_file  # the reader alone still reads it as data and flags it
    flagged = open_file(good).details["keras_model"]["flagged"]
    assert any("evil" in f for f in flagged) and any(f.startswith("os.") for f in flagged)
    bad = tmp_path / "garbage.keras"
    with zipfile.ZipFile(bad, "w") as out:
        out.writestr("config.json", "{}")
        out.writestr("metadata.json", "{}")
        out.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\xff" * 200)
    with pytest.raises(FormatError, match="HDF5"):
        modelport.open(bad)


def test_open_reads_no_tensor_data(tmp_path):
    """A 64 MB .h5 and the same inside a stored .keras zip: open reads the HDF5 structure, not the datasets."""
    h5 = tmp_path / "big.h5"
    write_hdf5([_ref(f"layer{i}.kernel", np.full((1024, 1024), i, np.float32)) for i in range(16)], h5)
    keras = tmp_path / "big.keras"
    with zipfile.ZipFile(keras, "w", zipfile.ZIP_STORED) as z:
        z.writestr("config.json", "{}")
        z.write(h5, "model.weights.h5")
    for path in (h5, keras):
        modelport.open(path).close()
        with measure_cost() as cost:
            src = modelport.open(path)
        assert len(src) == 16 and cost.read_bytes < (1 << 20) and cost.peak_alloc < (1 << 20), (path.name, cost)
        assert src["layer15.kernel"].read()[1023, 1023] == 15
        src.close()


def test_oversized_name_attribute_is_refused(tmp_path, monkeypatch):
    from modelport.formats import hdf5 as hdf5_fmt

    path = tmp_path / "big_attr.h5"
    with h5py.File(path, "w", libver="latest") as f:  # dense attribute storage: no 64 KB header limit
        f.attrs["layer_names"] = np.array([b"x" * 100] * 2000)
    monkeypatch.setattr(hdf5_fmt, "CONFIG_CAP", 100_000)
    with pytest.raises(FormatError, match="attribute 'layer_names'"):
        modelport.open(path)


def test_a_heap_hdf5_loops_on_is_refused(tmp_path, monkeypatch):
    """Found by the fuzzer: a Keras 2 file whose global heap (the variable-length strings of every Keras attribute)
    has its first objects zeroed sends HDF5's C code into an endless loop on the first attribute read, which no
    signal interrupts. `hdf5.preflight` walks the structure in a forked child first and refuses the file when the
    child does not finish."""
    from modelport.formats import hdf5

    data = bytearray(fixture("keras2_weights.h5").read_bytes())
    heap = data.index(b"GCOL")
    data[heap + 16:heap + 80] = bytes(64)
    path = tmp_path / "loop.h5"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(hdf5, "PREFLIGHT_SECONDS", 2.0)
    with pytest.raises(FormatError, match="did not finish reading the file's structure in 2 s"):
        hdf5.open_hdf5(path)
    hdf5.preflight(fixture("keras2_weights.h5"))          # the intact file passes at once


def test_preflight_forks_once_per_version_of_a_file(tmp_path, monkeypatch):
    """A scan, an open and an inspect of one file each run the preflight: the child is forked for the first only.
    The verdict belongs to that version of the file: the same path rewritten (same size, a looping heap) is walked
    again and refused."""
    import os

    from modelport.formats import hdf5

    intact = fixture("keras2_weights.h5").read_bytes()
    looping = bytearray(intact)
    heap = looping.index(b"GCOL")
    looping[heap + 16:heap + 80] = bytes(64)
    path = tmp_path / "model.h5"
    path.write_bytes(intact)
    forks = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    monkeypatch.setattr(hdf5, "PREFLIGHT_SECONDS", 2.0)
    for _ in range(3):
        hdf5.preflight(path)
    assert len(forks) == 1
    modelport.scan(path)
    with modelport.open(path) as src:
        assert src.tensors
    assert len(forks) == 1
    before = path.stat()
    path.write_bytes(bytes(looping))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))   # a later write (timestamps are coarse)
    with pytest.raises(FormatError, match="did not finish reading the file's structure in 2 s"):
        hdf5.preflight(path)
    with pytest.raises(FormatError, match="did not finish reading"):
        modelport.open(path)
    assert len(forks) == 2
