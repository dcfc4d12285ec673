"""Issue 21: a scanner that never calls an unread file safe, content recognised whatever its name, the
pickle-family formats people ship graded by the same allowlist, and published bypasses of other scanners."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from modelport.security import DANGEROUS, SAFE, SUSPICIOUS, UNKNOWN, scan
from tests.security.corpus import _bytes, _protobuf, _saved_model, _str0, _uni, call0, call4, p2, p4

EVIL = p2(call0("os", "system", "true"))


def _verdict(path):
    return scan(path).verdict


def _whats(path):
    return {f.what for f in scan(path).findings}


# ---- unknown: never safe -----------------------------------------------------------------------

def test_random_binary_is_unknown_not_safe(tmp_path, cli):
    p = tmp_path / "weights.bin"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert _verdict(p) == UNKNOWN
    r = cli("scan", str(p))
    assert r.code == 1 and "unknown" in r.stdout
    assert cli("scan", str(p), "--allow-unknown").code == 0


@pytest.mark.parametrize("magic,kind", [(b"7z\xbc\xaf\x27\x1c\x00\x04", "7z"), (b"Rar!\x1a\x07\x01\x00", "RAR")])
def test_archives_it_cannot_open_are_unknown_with_the_reason(tmp_path, magic, kind):
    p = tmp_path / "model.archive"
    p.write_bytes(magic + bytes(64))
    (f,) = scan(p).findings
    assert f.severity == UNKNOWN and f.what == f"{kind} archive" and "cannot open" in f.why


def test_really_encrypted_zip_member_is_unknown(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("weights.bin", os.urandom(256))
    data = bytearray(buf.getvalue())
    data[6] |= 1                                         # local header: encrypted
    cd = data.find(b"PK\x01\x02")
    data[cd + 8] |= 1                                    # central directory: encrypted
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    findings = scan(tmp_path / "enc.zip").findings
    assert [f.severity for f in findings] == [UNKNOWN] and "encrypted zip member" in findings[0].what


def test_zip_inside_tar_is_opened(tmp_path):
    import tarfile
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("archive/data.pkl", EVIL)
    with tarfile.open(tmp_path / "m.tar", "w") as t:
        ti = tarfile.TarInfo("model.pt")
        ti.size = len(inner.getvalue())
        t.addfile(ti, io.BytesIO(inner.getvalue()))
    assert "os.system" in _whats(tmp_path / "m.tar")


def test_text_starting_with_a_pickle_opcode_is_text(tmp_path):
    """The false alarm of issue 21: llama.cpp's pwa.e2e.ts starts with `import`, and 'i' is the INST opcode;
    CMakeLists.txt starts with 'c' (GLOBAL) and names no importable module."""
    for name, text in (("pwa.e2e.ts", "import { test, expect } from '@playwright/test';\n\ntest('x', () => {});\n."),
                       ("CMakeLists.txt", "cmake_minimum_required(VERSION 3.14)\nproject(llama)\n(\ntR.")):
        (tmp_path / name).write_text(text)
        report = scan(tmp_path / name)
        assert report.verdict == SAFE and report.files[0].kind == "text", name


def test_protocol0_pickle_that_breaks_after_the_import_is_still_a_pickle(tmp_path):
    """Weak evidence is not an excuse: text-like bytes that import os.system before breaking are reported."""
    (tmp_path / "notes.txt").write_bytes(call0("os", "system", "true") + b"\nthis is junk, no STOP")
    assert _verdict(tmp_path / "notes.txt") == DANGEROUS


# ---- TF graphs by content -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["saved_model.pb", "model.bin", "weights", "README"])
def test_savedmodel_with_file_ops_is_dangerous_under_any_name(tmp_path, name):
    (tmp_path / name).write_bytes(_saved_model(["Placeholder", "WriteFile", "ReadFile", "Identity"]))
    report = scan(tmp_path / name)
    assert report.verdict == DANGEROUS and {"TF op WriteFile", "TF op ReadFile"} <= {f.what for f in report.findings}


def test_graphdef_with_the_library_first_is_found(tmp_path):
    """TensorFlow parses fields in any order: a GraphDef whose function library comes before its nodes (so no
    first-bytes test sees a node) still reaches WriteFile."""
    fn = _protobuf([(3, _protobuf([(1, "w"), (2, "WriteFile")]))])
    graph = _protobuf([(2, _protobuf([(1, fn)])), (1, _protobuf([(1, "x"), (2, "Const")]))])
    (tmp_path / "frozen.dat").write_bytes(graph)
    assert "TF op WriteFile" in _whats(tmp_path / "frozen.dat")


def test_benign_graph_is_safe(tmp_path):
    (tmp_path / "graph.bin").write_bytes(_saved_model(["Placeholder", "MatMul", "Identity"]))
    report = scan(tmp_path / "graph.bin")
    assert report.verdict == SAFE and report.files[0].kind == "tf-savedmodel"


# ---- the pickle family -----------------------------------------------------------------------------

def _joblib_like(arrays, payload: bytes = b"", align: bool = True) -> bytes:
    """The stream `joblib.dump` writes (joblib.numpy_pickle.NumpyPickler): per array a NumpyArrayWrapper
    object, BUILD, then (one padding-length byte + padding) and the raw bytes, inside the pickle stream.
    Written opcode by opcode (joblib is not a dependency); the layout follows joblib 1.x's write_array."""
    out = bytearray(b"\x80\x04" + b"(")
    for a in arrays:
        out += _uni("joblib.numpy_pickle") + _uni("NumpyArrayWrapper") + b"\x93)\x81}("
        out += _uni("subclass") + _uni("numpy") + _uni("ndarray") + b"\x93"
        out += _uni("shape") + b"(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t"
        out += _uni("order") + _uni("C")
        out += _uni("dtype") + _uni("numpy") + _uni("dtype") + b"\x93" + _uni(a.dtype.str[1:]) + b"\x89\x88\x87R"
        out += b"(K\x03" + _uni("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        out += _uni("allow_mmap") + b"\x88"
        if align:
            out += _uni("numpy_array_alignment_bytes") + b"K\x10"
        out += b"ub"
        if align:
            pad = 16 - (len(out) + 1) % 16
            out += bytes([pad]) + b"\xff" * pad
        out += a.tobytes()
    return bytes(out + b"l" + payload + b".")


def test_joblib_arrays_are_data_not_gadgets(tmp_path):
    """joblib's own test pickles were graded dangerous: NumpyArrayWrapper (how every joblib.dump, every
    scikit-learn model, stores an array) is a data wrapper, and the raw array bytes that follow it inside
    the stream are skipped, not misread as opcodes."""
    arrays = [np.arange(37, dtype=np.float64), np.arange(12, dtype=np.int16).reshape(3, 4)]
    (tmp_path / "model.joblib").write_bytes(_joblib_like(arrays))
    report = scan(tmp_path / "model.joblib")
    assert report.verdict == SAFE and report.findings == [], report.findings


def test_payload_after_joblib_arrays_is_still_found(tmp_path):
    """Skipping the array bytes must not skip what follows them."""
    data = _joblib_like([np.ones(5, np.float32)], payload=call4("os", "system", "true"))
    (tmp_path / "model.joblib").write_bytes(data)
    assert _verdict(tmp_path / "model.joblib") == DANGEROUS and "os.system" in _whats(tmp_path / "model.joblib")


def test_joblib_grades_tell_os_system_from_the_wrapper(tmp_path):
    from modelport.security import rules
    assert rules.classify("joblib.numpy_pickle", "NumpyArrayWrapper")[0] == SAFE
    assert rules.classify("joblib.numpy_pickle_compat", "NDArrayWrapper")[0] == SAFE
    assert rules.classify("joblib", "load")[0] == DANGEROUS
    assert rules.classify("os", "system")[0] == DANGEROUS
    sev, why = rules.classify("sklearn.linear_model._logistic", "LogisticRegression")
    assert sev == SUSPICIOUS and "scikit-learn" in why


def test_old_joblib_array_file_outside_the_folder_is_dangerous(tmp_path):
    body = (b"cjoblib.numpy_pickle\nNDArrayWrapper\n)\x81}(" + _uni("filename") + _uni("../../etc/passwd.npy")
            + _uni("subclass") + b"cnumpy\nndarray\nub")
    (tmp_path / "old.pkl").write_bytes(p2(body))
    assert "joblib array file '../../etc/passwd.npy'" in _whats(tmp_path / "old.pkl")


def test_dill_and_cloudpickle_code_is_dangerous(tmp_path):
    (tmp_path / "f.dill").write_bytes(p2(call0("dill._dill", "_create_function", "x")))
    (tmp_path / "f.cloudpickle").write_bytes(p2(call0("cloudpickle.cloudpickle", "_make_function", "x")))
    assert _verdict(tmp_path / "f.dill") == DANGEROUS and _verdict(tmp_path / "f.cloudpickle") == DANGEROUS


def test_compressed_pickles_every_codec(tmp_path):
    import bz2
    import gzip
    import lzma
    import zlib
    for name, data in (("m.pkl.gz", gzip.compress(EVIL)), ("m.pkl.bz2", bz2.compress(EVIL)),
                       ("m.pkl.xz", lzma.compress(EVIL)), ("m.pkl.lzma", lzma.compress(EVIL, lzma.FORMAT_ALONE)),
                       ("m.pkl.z", zlib.compress(EVIL))):
        (tmp_path / name).write_bytes(data)
        assert "os.system" in _whats(tmp_path / name), name


# ---- published bypasses ----------------------------------------------------------------------------

BYPASSES = {
    # picklescan #30 ("add asyncio as malicious"), CVE-2025-10157: asyncio's subprocess functions
    "asyncio_exec": call0("asyncio.subprocess", "create_subprocess_exec", "sh"),
    "asyncio_shell": call0("asyncio", "create_subprocess_shell", "true"),
    "asyncio_base_events": call0("asyncio.base_events", "BaseEventLoop", "x"),
    # _io.FileIO opens (and with mode 'w' truncates) any file
    "io_fileio": call0("_io", "FileIO", "/etc/passwd", "w"),
    "shutil_copy": call0("shutil", "copyfile", "/etc/passwd", "/tmp/x"),
    "shutil_move": call0("shutil", "move", "/etc/passwd", "/tmp/x"),
    # picklescan advisories listed in mmaitre314/picklescan#49: functions of torch and the standard library
    # that run commands
    "torch_collect_env": call0("torch.utils.collect_env", "run", "touch /tmp/x"),
    "torch_bottleneck": call0("torch.utils.bottleneck.__main__", "run_autograd_prof", "x", "y"),
    "pip_main": call0("pip", "main", "install", "x"),
    "pip_internal": call0("pip._internal.cli.main", "main", "install", "x"),
    "spawnv_passfds": call0("os", "spawnv_passfds", "/bin/sh", "x"),
    "mp_spawnv_passfds": call0("multiprocessing.util", "spawnv_passfds", "/bin/sh", "x"),
    "posixsubprocess": call0("_posixsubprocess", "fork_exec", "x"),
    # protectai/modelscan#269: pandas readers fetch URLs (read_pickle even unpickles them)
    "pandas_read_csv": call0("pandas", "read_csv", "https://example.invalid/x.csv"),
    "pandas_read_pickle": call0("pandas.io.pickle", "read_pickle", "https://example.invalid/x.pkl"),
    "pandas_eval": call0("pandas", "eval", "1"),
    # nested unpicklers (modelscan #267)
    "nested_pickle_loads": b"cpickle\nloads\n(" + _bytes(EVIL) + b"tR",
    "nested__pickle_loads": b"c_pickle\nloads\n(" + _bytes(EVIL) + b"tR",
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_published_bypass_is_dangerous(tmp_path, name):
    p = tmp_path / f"{name}.pkl"
    p.write_bytes(p2(BYPASSES[name]))
    assert _verdict(p) == DANGEROUS, scan(p).findings


def test_nested_pickle_payload_is_analysed(tmp_path):
    p = tmp_path / "n.pkl"
    p.write_bytes(p2(BYPASSES["nested_pickle_loads"]))
    assert any(f.what == "os.system" and "nested pickle" in (f.member or "") for f in scan(p).findings)


@pytest.mark.parametrize("tail", [b"", b"\x8c\xffjunk", b"junk after REDUCE", b"\x00" * 64])
def test_pickle_that_breaks_after_the_payload(tmp_path, tail):
    """STOP missing or junk after REDUCE: the loader has already run the call when it fails (picklescan
    reports such files as errors only; fickling stops at the first bad opcode)."""
    p = tmp_path / "broken.pkl"
    p.write_bytes(b"\x80\x02" + call0("os", "system", "true") + tail)
    assert "os.system" in _whats(p)


def _torch_zip_with(tmp_path, name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/version", "3\n")
        z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("name,what", [
    ("archive/../../data.pkl", "zip path 'archive/../../data.pkl'"),
    ("/abs/data.pkl", "zip path '/abs/data.pkl'"),
    ("archive\\data.pkl", "zip name 'archive\\\\data.pkl' with backslashes"),
])
def test_zip_name_tricks(tmp_path, name, what):
    p = tmp_path / "m.pt"
    p.write_bytes(_torch_zip_with(tmp_path, name, EVIL))
    assert {what, "os.system"} <= _whats(p)


def test_data_pkl_under_an_unexpected_name(tmp_path):
    """Scanners that only open members called data.pkl miss a pickle stored as anything else."""
    p = tmp_path / "m.pt"
    p.write_bytes(_torch_zip_with(tmp_path, "archive/constants.bin", p4(call4("posix", "system", "true"))))
    assert "posix.system" in _whats(p)


def test_local_and_central_headers_disagree(tmp_path):
    data = bytearray(_torch_zip_with(tmp_path, "archive/data.pkl", EVIL))
    lh = data.find(b"archive/data.pkl")                 # the local header's copy of the name comes first
    data[lh:lh + 16] = b"archive/data.txt"
    p = tmp_path / "m.pt"
    p.write_bytes(bytes(data))
    whats = _whats(p)
    assert "os.system" in whats and any(w.startswith("zip name mismatch") for w in whats)


def test_encrypted_flag_on_a_plain_member(tmp_path):
    data = bytearray(_torch_zip_with(tmp_path, "archive/data.pkl", EVIL))
    lh = data.find(b"PK\x03\x04", data.find(b"PK\x03\x04") + 4)
    data[lh + 6] |= 1
    cd = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    data[cd + 8] |= 1
    p = tmp_path / "m.pt"
    p.write_bytes(bytes(data))
    whats = _whats(p)
    assert "os.system" in whats and "zip member 'archive/data.pkl' flagged encrypted" in whats


def test_legacy_multi_pickle_torch_file(tmp_path):
    """Legacy torch.save streams are five pickles in a row; the payload in any of them is found."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    parts = [magic, pickle.dumps(1001, protocol=2), pickle.dumps({"little_endian": True}, protocol=2),
             pickle.dumps({"w": 1}, protocol=2), pickle.dumps([], protocol=2)]
    for i in range(1, 5):
        p = tmp_path / f"legacy{i}.pt"
        p.write_bytes(b"".join(parts[:i] + [EVIL] + parts[i + 1:]) + bytes(16))
        assert "os.system" in _whats(p), i


def test_protocol0_string_payload_in_text_file(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"(" + _str0("true") + b"ios\nsystem\n.")
    assert _verdict(tmp_path / "x.txt") == DANGEROUS


def test_what_model_folders_and_wheels_hold_is_identified(tmp_path):
    """Unknown must stay rare to mean something: text, native libraries, images, SentencePiece models and ONNX
    tensor protos are recognised by content (and graded safe), under any name."""
    import struct as st
    import sys
    import zlib

    from onnx import numpy_helper
    png = b"\x89PNG\r\n\x1a\n" + st.pack(">I", 13) + b"IHDR" + bytes(13)
    spm = _protobuf([(1, _protobuf([(1, "<unk>"), (3, 2)])), (1, _protobuf([(1, "\u2581the")]))])
    with open(sys.executable, "rb") as f:
        elf = f.read(4096)
    files = {"README": b"# model card\n\nweights for x\n", "logo.bin": png, "native.so": elf, "tokenizer.model": spm,
             "input_0.pb": numpy_helper.from_array(np.ones(3, np.float32), "x").SerializeToString(),
             "notes.z": zlib.compress(b"plain text inside zlib\n")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    report = scan(tmp_path)
    kinds = {os.path.basename(r.path): r.kind for r in report.files}
    assert report.verdict == SAFE, [(r.path, r.findings) for r in report.files if r.findings]
    assert kinds == {"README": "text", "logo.bin": "image", "native.so": "native-code", "tokenizer.model": "sentencepiece",
                     "input_0.pb": "onnx-tensor", "notes.z": "zlib"}


def test_compressed_tar_is_streamed_member_by_member(tmp_path, monkeypatch):
    """An sdist (.tar.gz) larger than what the scanner holds in memory is read as a stream: every member is
    checked, a payload in the last one too, and a member too big to hold is unknown, not safe."""
    import tarfile

    from modelport.security import containers
    monkeypatch.setattr(containers, "MAX_INFLATE", 4096)
    with tarfile.open(tmp_path / "pkg-1.0.tar.gz", "w:gz") as t:
        for i in range(8):
            data = (f"# module {i}\n" + "x = 1\n" * 600).encode()
            ti = tarfile.TarInfo(f"pkg-1.0/m{i}.py")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        big = np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes()
        for name, data in (("pkg-1.0/blob.bin", big), ("pkg-1.0/tests/model.pkl", EVIL)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    report = scan(tmp_path / "pkg-1.0.tar.gz")
    by = {(f.severity, f.what) for f in report.findings}
    assert (DANGEROUS, "os.system") in by and (UNKNOWN, "oversized member of a compressed tar") in by, by
    assert not any(f.what.startswith("oversized gzip") for f in report.findings)


def test_savedmodel_side_files(tmp_path):
    """A Keras SavedModel's keras_metadata.pb holds each layer's JSON config, Lambda bytecode included;
    fingerprint.pb is hashes. Neither is left unknown."""
    lam = {"class_name": "Lambda", "config": {"name": "lam", "function": ["4wEAAAAA", None, None]}}
    dense = {"class_name": "Dense", "config": {"name": "d", "units": 2}}
    nodes = [_protobuf([(2, i), (3, "root.layer"), (4, "_tf_keras_layer"), (5, json.dumps(c))])
             for i, c in enumerate((dense, lam))]
    (tmp_path / "keras_metadata.pb").write_bytes(_protobuf([(1, n) for n in nodes]))
    (tmp_path / "fingerprint.pb").write_bytes(_protobuf([(1, 123456789), (2, 42), (3, 7), (4, 9), (5, 1)]))
    report = scan(tmp_path)
    kinds = {os.path.basename(r.path): (r.kind, r.verdict) for r in report.files}
    assert kinds == {"keras_metadata.pb": ("keras-metadata", DANGEROUS), "fingerprint.pb": ("tf-fingerprint", SAFE)}


def test_a_pickle_named_like_json_is_analysed(tmp_path):
    """Names are never trusted: bytes that do not parse as JSON are analysed by content."""
    (tmp_path / "config.json").write_bytes(EVIL)
    assert _verdict(tmp_path / "config.json") == DANGEROUS
