"""The symbolic pickle machine and the rules, on pickles made by the real `pickle` module (never loaded)."""

from __future__ import annotations

import collections
import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from modelport.security import DANGEROUS, SAFE, SUSPICIOUS, pickle_vm, rules, scan


class _Payload:
    """Pickles as a call to `func(*args)`; the object is only ever dumped, never loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _run(data: bytes):
    found = []
    results = pickle_vm.scan_stream(data, 0, len(data), lambda *f, **kw: found.append(f))
    return found, results


@pytest.mark.parametrize("protocol", range(6))
def test_plain_data_is_clean_in_every_protocol(protocol):
    obj = {"a": [1, 2.5, None, True, b"xy", "s" * 300, (1, 2), {3}, frozenset({4})], "o": collections.OrderedDict(b=1),
           "big": 2**80, "nested": [[[]]], "bytes": bytearray(b"12")}
    found, results = _run(pickle.dumps(obj, protocol=protocol))
    assert found == [] and results[0].complete


@pytest.mark.parametrize("protocol", range(6))
def test_system_call_found_in_every_protocol(protocol):
    data = pickle.dumps(_Payload(os.system, "true"), protocol=protocol)
    found, _ = _run(data)
    assert [(f[0], f[1]) for f in found] == [(DANGEROUS, f"{os.system.__module__}.system")]
    assert data[found[0][3]:found[0][3] + 1] in (b"c", b"\x93")   # offset points at the import opcode


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_in_a_pickle_are_clean(protocol):
    data = pickle.dumps({"x": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(1.5),
                         "d": np.dtype("int16")}, protocol=protocol)
    assert _run(data)[0] == []


def test_torch_data_pkl_uses_only_allowlisted_imports(tmp_path):
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16), "p": torch.nn.Parameter(torch.zeros(1))}, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert _run(data)[0] == []


def test_every_truncation_is_a_finding_not_a_crash():
    data = pickle.dumps(_Payload(os.system, "true"), protocol=2)
    for cut in range(1, len(data)):
        found, _ = _run(data[:cut])
        assert found, cut
        assert all(f[0] in (SUSPICIOUS, DANGEROUS) for f in found)


def test_random_corruption_never_crashes(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        data = bytearray(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    rng = random.Random(0)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        _run(bytes(mutated))  # must not raise


def test_huge_length_fields_do_not_allocate():
    # BINBYTES8 / BINUNICODE8 claiming 2**62 bytes in a tiny stream
    for op in (b"\x8e", b"\x8d", b"\x96"):
        found, _ = _run(b"\x80\x05" + op + (2**62).to_bytes(8, "little") + b"ab.")
        assert found and found[0][1] == "truncated or corrupt pickle"


def test_multiple_pickles_and_trailing_data():
    ok = pickle.dumps([1, 2], protocol=2)
    found, results = _run(ok + ok + ok)
    assert found == [] and len(results) == 3
    found, _ = _run(ok + b"hidden bytes that are not a pickle")
    assert [f[1] for f in found] == ["data after the pickle"]


def test_nested_pickle_through_codecs_encode_is_followed():
    inner = pickle.dumps(_Payload(os.system, "true"), protocol=0)
    outer = pickle.dumps(_Payload(pickle.loads, inner), protocol=2)   # protocol 2 wraps bytes in _codecs.encode
    found, _ = _run(outer)
    assert any(f[1].endswith(".system") and "nested pickle" in f[4] for f in found)


def test_rules():
    assert rules.classify("torch._utils", "_rebuild_tensor_v2")[0] == SAFE
    assert rules.classify("collections", "OrderedDict")[0] == SAFE
    assert rules.classify("__builtin__", "set")[0] == SAFE
    assert rules.classify("numpy._core.multiarray", "_reconstruct")[0] == SAFE
    assert rules.classify("__builtin__", "eval")[0] == DANGEROUS
    assert rules.classify("torch", "_utils._rebuild_tensor_v2")[0] == SAFE          # dotted name, same object
    assert rules.classify("numpy", "core._internal.sys.modules")[0] == DANGEROUS    # attribute walk
    assert rules.classify("numpy", "__builtins__")[0] == DANGEROUS
    assert rules.classify("torch.storage", "_load_from_bytes")[0] == DANGEROUS
    assert rules.classify("my_package.layers", "Thing")[0] == SUSPICIOUS
    assert rules.classify("os system", "")[0] == DANGEROUS


def test_scan_api_accepts_several_paths_and_rejects_missing(tmp_path):
    from modelport.core.errors import ModelportError
    (tmp_path / "a.pkl").write_bytes(pickle.dumps([1]))
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(_Payload(os.system, "true")))
    report = scan([tmp_path / "a.pkl", tmp_path / "b.pkl"])
    assert [r.verdict for r in report.files] == [SAFE, DANGEROUS] and report.verdict == DANGEROUS
    assert report.to_dict()["files"][1]["findings"][0]["what"].endswith(".system")
    with pytest.raises(ModelportError):
        scan(tmp_path / "missing.bin")


def test_guard_refuses_dangerous_and_untrusted_suspicious(tmp_path):
    from modelport.core.errors import UnsafeFileError
    from modelport.security import guard
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(_Payload(os.system, "true")))
    (tmp_path / "odd.pkl").write_bytes(pickle.dumps(_Payload(collections.Counter, "abc")) + b"tail")
    assert guard(tmp_path / "ok.pkl").verdict == SAFE
    with pytest.raises(UnsafeFileError, match="system"):
        guard(tmp_path / "bad.pkl", trust=True)
    with pytest.raises(UnsafeFileError, match="--trust"):
        guard(tmp_path / "odd.pkl")
    assert guard(tmp_path / "odd.pkl", trust=True).verdict == SUSPICIOUS


def test_endless_pickle_is_cut_short():
    data = b"\x80\x02" + b"N0" * (pickle_vm.MAX_OPS // 2 + 10) + b"N."
    found, results = _run(data)
    assert [f[1] for f in found] == ["oversized pickle"] and not results[0].complete
