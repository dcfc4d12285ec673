"""The torch reader and writer against torch 2.13 itself (torch is the oracle here, never used by modelport).

Fixtures are written by `torch.save` in tmp_path; every tensor modelport reads must be bit-identical to
what `torch.load(weights_only=True)` returns, and every file modelport writes must load in torch.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import modelport
from modelport.core.errors import FormatError, UnsafeFileError, UnsupportedError
from modelport.formats import torch as torchfmt
from modelport.formats.registry import open_file as read_only_reader  # the reader alone, without the scanner in front


def raw_bytes(t: torch.Tensor) -> np.ndarray:
    """A tensor's elements as bytes, C order (comparison that is exact for NaNs and fp8 too)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def assert_same(array: np.ndarray, expected: torch.Tensor, name: str = "") -> None:
    assert tuple(array.shape) == tuple(expected.shape), name
    assert np.array_equal(np.ascontiguousarray(array).reshape(-1).view(np.uint8), raw_bytes(expected)), name


def every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, generator=g) * 100
    out = {
        "f32": base.clone(), "f16": base.half(), "bf16": base.bfloat16(), "f64": base.double(),
        "f8_e4m3": (base / 10).to(torch.float8_e4m3fn), "f8_e5m2": base.to(torch.float8_e5m2),
        "i8": base.to(torch.int8), "i16": base.to(torch.int16), "i32": base.to(torch.int32),
        "i64": base.to(torch.int64) * 2**40, "u8": base.abs().to(torch.uint8), "bool": base > 0,
        "c64": torch.complex(base, -base),
    }
    out["nan_inf"] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])
    return out


def layouts() -> dict[str, torch.Tensor]:
    base = torch.arange(60, dtype=torch.float32)
    grid = base.reshape(3, 4, 5)
    return {
        "grid": grid,
        "row_view": base[10:20],                         # offset view of the same storage
        "transposed": grid.transpose(0, 2),
        "permuted": grid.permute(1, 2, 0),
        "strided": grid[:, ::2, 1::2],
        "expanded": base[:4].reshape(4, 1).expand(4, 6),  # stride 0
        "empty": torch.zeros(0, 7),
        "empty_view": base[5:5],
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "param": torch.nn.Parameter(torch.ones(3, 2)),
        "bf16_t": torch.randn(4, 3).bfloat16().t(),
        "f8_view": torch.randn(8).to(torch.float8_e4m3fn)[2:6],
    }


def check_against_torch(path: Path, expected: dict | None = None) -> modelport.ModelSource:
    src = modelport.open(path)
    oracle = torch.load(path, weights_only=True) if expected is None else expected
    tensors = {k: v for k, v in oracle.items() if isinstance(v, torch.Tensor)}
    assert list(src.tensors) == list(tensors)
    for name, expected_tensor in tensors.items():
        ref = src[name]
        assert ref.dtype.torch == str(expected_tensor.dtype).removeprefix("torch."), name
        assert ref.shape == tuple(expected_tensor.shape)
        assert ref.nbytes == expected_tensor.numel() * expected_tensor.element_size()
        assert_same(ref.read(), expected_tensor, name)
    return src


# --- reading ------------------------------------------------------------------------------------

@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_every_dtype_matches_torch_load(tmp_path, zipped):
    sd = every_dtype()
    if not zipped:   # torch's legacy writer cannot store the v3 (UntypedStorage) dtypes
        sd = {k: v for k, v in sd.items() if not k.startswith("f8")}
    path = tmp_path / "dtypes.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    src = check_against_torch(path)
    assert src.format == "pytorch"
    assert src.details["container"] == ("zip" if zipped else "legacy")
    assert src.details["storages"] == len(sd)
    assert src.details["pickle_protocol"] == 2


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_layouts_match_torch_load(tmp_path, zipped):
    sd = layouts()
    if not zipped:
        del sd["f8_view"]
    path = tmp_path / "layouts.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zipped)
    src = check_against_torch(path)
    assert src["param"].extra.get("parameter") is True
    # contiguous tensors are zero-copy views of the file map
    grid = src["grid"].read()
    assert isinstance(grid.base, np.ndarray) and not grid.flags.writeable
    assert src["grid"].offset is not None and src["transposed"].offset is None


@pytest.mark.parametrize("protocol", [4, 5])
def test_newer_pickle_protocols(tmp_path, protocol):
    # torch.load(weights_only=True) refuses protocol >= 4 (FRAME); the saved tensors are the oracle.
    sd = {**every_dtype(), **layouts()}
    path = tmp_path / f"p{protocol}.pt"
    torch.save(sd, path, pickle_protocol=protocol)
    src = check_against_torch(path, expected=sd)
    assert src.details["pickle_protocol"] == protocol


def test_views_share_storage_identity(tmp_path):
    emb = torch.randn(10, 4)
    sd = {"embed.weight": emb, "lm_head.weight": emb, "half": emb[:5], "t": emb.t()}
    path = tmp_path / "tied.bin"
    torch.save(sd, path)
    src = check_against_torch(path)
    ids = {name: src[name].storage for name in sd}
    assert ids["embed.weight"] == ids["lm_head.weight"]
    assert len({ids["embed.weight"], ids["half"], ids["t"]}) == 3
    hash(ids["half"])


def test_mixed_dtypes_on_one_record(tmp_path):
    f8 = torch.randn(16).to(torch.float8_e4m3fn)
    sd = {"f8": f8, "bytes": f8.view(torch.uint8), "tail": f8[8:].view(torch.uint8)}
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    src = check_against_torch(path)
    assert src.details["storages"] == 1


def test_training_checkpoint_names_and_metadata(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt = {"epoch": 7, "loss": 0.25, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": opt.state_dict(), "note": "run-3"}
    path = tmp_path / "ckpt.ckpt"
    torch.save(ckpt, path)
    src = modelport.open(path)
    loaded = torch.load(path, weights_only=True)
    assert_same(src["model_state_dict.0.weight"].read(), loaded["model_state_dict"]["0.weight"])
    assert_same(src["optimizer_state_dict.state.0.exp_avg"].read(), loaded["optimizer_state_dict"]["state"][0]["exp_avg"])
    assert_same(src["optimizer_state_dict.state.3.exp_avg_sq"].read(), loaded["optimizer_state_dict"]["state"][3]["exp_avg_sq"])
    assert "optimizer_state_dict.state.0.step" in src.tensors     # Adam keeps `step` as a tensor
    assert src.metadata["epoch"] == 7 and src.metadata["loss"] == 0.25 and src.metadata["note"] == "run-3"
    assert src.metadata["optimizer_state_dict.param_groups.0.lr"] == 1e-3
    assert src.metadata["optimizer_state_dict.param_groups.0.params"] == [0, 1, 2, 3]
    assert src.metadata["optimizer_state_dict.param_groups.0.betas"] == [0.9, 0.999]
    n_tensors = len(loaded["model_state_dict"]) + sum(len(s) for s in loaded["optimizer_state_dict"]["state"].values())
    assert len(src) == n_tensors


def test_bytes_and_containers_are_metadata(tmp_path):
    path = tmp_path / "misc.pt"
    torch.save({"w": torch.ones(2), "blob": b"\x00\x01", "nested": {"a": [1, 2], "b": None}, "dt": torch.float16,
                "size": torch.Size([2, 3]), "tags": {"x"}, "layers": [torch.zeros(1), {"k": torch.ones(1)}]}, path)
    src = modelport.open(path)
    assert list(src.tensors) == ["w", "layers.0", "layers.1.k"]
    assert src.metadata == {"blob": "<2 bytes>", "nested.a": [1, 2], "nested.b": None, "dt": "torch.float16",
                            "size": [2, 3], "tags": ["x"]}


def test_reading_is_lazy_and_reads_headers_only(tmp_path):
    path = tmp_path / "big.pt"
    torch.save({"a": torch.zeros(1024, 1024), "b": torch.ones(3)}, path)
    src = modelport.open(path)
    assert src["a"].nbytes == 4 * 1024 * 1024
    # corrupt tensor a's bytes after open: open() did not read them, read() sees the change
    raw = bytearray(path.read_bytes())
    offset = src["b"].offset
    raw[offset:offset + 4] = struct.pack("<f", 9.0)
    path.write_bytes(raw)
    assert src["b"].read()[0] == 9.0


# --- refusing code ------------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


def _malicious(tmp_path: Path, call=os.system) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = f"open({str(marker)!r}, 'w').close()" if call is exec else f"touch {marker}"
    torch.save({"w": torch.ones(2), "x": _RunsCode(call, payload)}, path)
    return path, marker


@pytest.mark.parametrize("call", [os.system, exec, eval], ids=["os.system", "exec", "eval"])
def test_malicious_pickle_is_refused(tmp_path, call):
    path, marker = _malicious(tmp_path, call)
    # protocol 2 spells builtins the Python 2 way, and the message quotes the file
    name = {os.system: r"posix\.system", exec: r"__builtin__\.exec", eval: r"__builtin__\.eval"}[call]
    with pytest.raises(UnsafeFileError, match=f"dangerous: .*{name.replace('__builtin__', 'builtins')} at byte"):
        modelport.open(path)            # open() runs the scanner first
    with pytest.raises(UnsafeFileError) as info:
        read_only_reader(path)                 # and the reader's own allowlist refuses it too
    found = re.search(f"refused global '{name}' at byte ([0-9]+) ", str(info.value))
    assert found and "run code" in str(info.value)
    module, _, attr = name.replace("\\", "").partition(".")
    at = int(found.group(1))        # the byte offset points at the GLOBAL opcode in the file
    assert path.read_bytes()[at:at + len(module) + len(attr) + 3] == f"c{module}\n{attr}\n".encode()
    assert not marker.exists()


def test_malicious_pickle_refused_in_legacy_and_protocol_4(tmp_path):
    marker = tmp_path / "marker"
    for i, kwargs in enumerate([{"_use_new_zipfile_serialization": False}, {"pickle_protocol": 4}]):
        path = tmp_path / f"evil{i}.pt"
        torch.save({"x": _RunsCode(os.system, f"touch {marker}")}, path, **kwargs)
        with pytest.raises(UnsafeFileError, match="posix.system"):
            modelport.open(path)
    assert not marker.exists()


def test_malicious_pickle_refused_by_cli(tmp_path, cli):
    path, marker = _malicious(tmp_path)
    for args in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "out.safetensors")]):
        run = cli(*args)
        assert run.code == 2, run.stderr
        assert "dangerous" in run.stderr and "posix.system at byte" in run.stderr
        assert "Traceback" not in run.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def test_code_global_named_before_user_classes(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "mixed.pt"
    torch.save({"net": TinyNet(), "x": _RunsCode(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeFileError, match="dangerous: .*posix.system"):
        modelport.open(path, trust=True)
    assert not marker.exists()


@pytest.mark.parametrize("model", [TinyNet, lambda: torch.nn.Sequential(torch.nn.Linear(2, 2))], ids=["user", "torch"])
def test_whole_module_is_refused_with_advice(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model(), path)
    with pytest.raises(UnsafeFileError, match="suspicious: .*--trust"):
        modelport.open(path)            # the scanner: classes outside the allowlist
    with pytest.raises(UnsafeFileError) as info:
        modelport.open(path, trust=True)  # trusted, the reader still refuses to build user classes
    message = str(info.value)
    assert "whole pickled model" in message and "torch.save(model.state_dict(), path)" in message


def test_stack_global_is_checked_at_load_time(tmp_path):
    # protocol 4 names globals with STACK_GLOBAL from memoized strings
    path = tmp_path / "sg.pt"
    torch.save({"x": _RunsCode(os.system, "true")}, path, pickle_protocol=4)
    with pytest.raises(UnsafeFileError, match=r"posix\.system' at byte \d+") as info:
        read_only_reader(path)
    at = int(re.search(r"at byte (\d+)", str(info.value)).group(1))
    assert path.read_bytes()[at:at + 1] == b"\x93"      # STACK_GLOBAL


# --- other torch archives -------------------------------------------------------------------------

def test_torchscript_is_named(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsupportedError, match="TorchScript"):
        read_only_reader(path)


def test_torch_export_pt2_is_named(tmp_path):
    path = tmp_path / "prog.pt2"
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(program, path)
    with pytest.raises(UnsupportedError, match="torch.export"):
        modelport.open(path)


def test_legacy_tar_is_named(tmp_path):
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            data = pickle.dumps({"x": 1}, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsupportedError, match="legacy torch tar"):
        modelport.open(path)


# --- corrupt and lying files ---------------------------------------------------------------------

def _saved(tmp_path, name="sd.pt", **kwargs) -> Path:
    path = tmp_path / name
    torch.save({"a": torch.arange(16, dtype=torch.float32), "b": torch.ones(2, 2)}, path, **kwargs)
    return path


def _rezip(src: Path, dst: Path, change) -> Path:
    """Copy a torch zip member by member, letting `change(name, data)` alter or drop (None) members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_zip(tmp_path, cut):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError):
        read_only_reader(path, format="pytorch")


@pytest.mark.parametrize("cut", [20, 200, -5])
def test_truncated_legacy(tmp_path, cut):
    path = _saved(tmp_path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(FormatError):
        modelport.open(path, format="pytorch")


def test_legacy_trailing_bytes_and_lying_count(tmp_path):
    path = _saved(tmp_path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    (tmp_path / "trail.pt").write_bytes(data + b"\0")
    with pytest.raises(FormatError, match="unexpected bytes"):
        modelport.open(tmp_path / "trail.pt")
    count_at = data.rindex(struct.pack("<q", 4))        # storage 'b' has 4 elements
    lying = data[:count_at] + struct.pack("<q", 5) + data[count_at + 8:]
    (tmp_path / "lie.pt").write_bytes(lying)
    with pytest.raises(FormatError):
        modelport.open(tmp_path / "lie.pt")


def test_wrong_record_size(tmp_path):
    path = _rezip(_saved(tmp_path), tmp_path / "short.pt", lambda n, d: d[:-4] if n.endswith("data/0") else d)
    with pytest.raises(FormatError, match=r"record data/0 is 60 bytes but its storage declares 16 x 4"):
        modelport.open(path)


def test_missing_record(tmp_path):
    path = _rezip(_saved(tmp_path), tmp_path / "missing.pt", lambda n, d: None if n.endswith("data/1") else d)
    with pytest.raises(FormatError, match="no record"):
        modelport.open(path)


def test_compressed_record_refused(tmp_path):
    src = _saved(tmp_path)
    dst = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("data/0") else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    with pytest.raises(FormatError, match="compressed"):
        modelport.open(dst)


def test_local_header_must_match_central_directory(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("sd/data/1")
    name_at = info.header_offset + 30
    assert data[name_at:name_at + 9] == b"sd/data/1"
    data[name_at + 8] = ord("7")
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="local header names"):
        read_only_reader(path)


def _pickle_zip(tmp_path: Path, pickle_bytes: bytes, records: dict[str, bytes]) -> Path:
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("crafted/data.pkl", pickle_bytes)
        for key, data in records.items():
            zf.writestr(f"crafted/data/{key}", data)
    return path


def _one_tensor_pickle(numel: int, shape, stride, offset=0) -> bytes:
    p = torchfmt._Pickler()
    p.out += b"}("
    p.str("w")
    p.tensor("0", modelport.DTYPES["F32"], numel, offset, shape, stride)
    p.out += b"u."
    return bytes(p.out)


@pytest.mark.parametrize("shape,stride,offset", [((3, 4), (4, 1), 0), ((4,), (1,), 1), ((2, 2), (1, 3), 0)])
def test_view_past_its_storage(tmp_path, shape, stride, offset):
    path = _pickle_zip(tmp_path, _one_tensor_pickle(4, shape, stride, offset), {"0": bytes(16)})
    with pytest.raises(FormatError, match="runs past its storage"):
        modelport.open(path)


def test_lying_numel(tmp_path):
    path = _pickle_zip(tmp_path, _one_tensor_pickle(1 << 40, (4,), (1,)), {"0": bytes(16)})
    with pytest.raises(FormatError, match="declares"):
        modelport.open(path)


def test_crafted_zip_opens_when_honest(tmp_path):
    data = np.arange(4, dtype=np.float32).tobytes()
    src = modelport.open(_pickle_zip(tmp_path, _one_tensor_pickle(4, (2, 2), (1, 2)), {"0": data}))
    assert np.array_equal(src["w"].read(), np.arange(4, dtype=np.float32).reshape(2, 2).T)


@pytest.mark.parametrize("body", [
    b"\x80\x02\x8e" + struct.pack("<Q", 1 << 60) + b"xx.",          # BINBYTES8 with a huge length
    b"\x80\x02\x8b" + struct.pack("<I", 1 << 30) + b".",            # LONG4 with a huge length
    b"\x80\x02}r" + struct.pack("<I", 0xFFFFFFF0) + b".",           # memo index far out
    b"\x80\x02K\x01\x82.",                                          # EXT1 (extension registry)
    b"\x80\x02(S'x'\ni",                                            # INST, truncated
    b"\x80\x02}(X\x01\x00\x00\x00a",                                # truncated
    b"\x80\x02" + b"]" * 200 + b"a" * 199 + b".",                   # nesting deeper than any checkpoint
    b"\x80\x02}X\x01\x00\x00\x00aQ.",                              # persistent id that is not a storage
    b"garbage",
])
def test_malformed_pickles(tmp_path, body):
    with pytest.raises(FormatError):
        read_only_reader(_pickle_zip(tmp_path, body, {}))


def test_unknown_torch_global_is_refused(tmp_path):
    body = b"\x80\x02ctorch\nload\n)R."
    with pytest.raises(UnsafeFileError, match="refused global 'torch.load' at byte"):
        read_only_reader(_pickle_zip(tmp_path, body, {}))


def test_unsupported_tensor_kind(tmp_path):
    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, path)
    with pytest.raises(UnsupportedError, match="quantized"):
        modelport.open(path)


def test_big_endian_byteorder_record(tmp_path):
    sd = {"f32": torch.randn(3, 4), "bf16": torch.randn(5).bfloat16(), "c64": torch.randn(2, dtype=torch.complex64),
          "i64": torch.arange(6).reshape(2, 3).t(), "u8": torch.arange(4, dtype=torch.uint8)}
    little = tmp_path / "little.pt"
    torch.save(sd, little)
    units = {}   # storage key -> byte-swap unit
    with zipfile.ZipFile(little) as zf:
        keys = [n.rsplit("/", 1)[1] for n in zf.namelist() if "/data/" in n]
    for key, t in zip(keys, sd.values()):
        units[key] = t.element_size() // (2 if t.is_complex() else 1)

    def swap(name, data):
        if name.endswith("byteorder"):
            return b"big"
        if "/data/" in name:
            unit = units[name.rsplit("/", 1)[1]]
            return np.frombuffer(data, f"u{unit}").byteswap().tobytes() if unit > 1 else data
        return data

    big = _rezip(little, tmp_path / "big.pt", swap)
    loaded = torch.load(big, weights_only=True)
    for name, t in sd.items():
        assert torch.equal(loaded[name], t)
    src = check_against_torch(big)
    assert src.details["byteorder"] == "big"


# --- writing ------------------------------------------------------------------------------------

def _roundtrip(tmp_path: Path, sd: dict, name="out.pt", **kwargs) -> tuple[Path, dict]:
    src_path = tmp_path / "src.pt"
    torch.save(sd, src_path)
    out = tmp_path / name
    torchfmt.write_torch(modelport.open(src_path), out, **kwargs)
    return out, torch.load(out, weights_only=True)


def test_written_files_load_in_torch(tmp_path):
    sd = {**every_dtype(), **layouts(), "u16": torch.arange(5).to(torch.uint16),
          "big_i64": torch.tensor([2**62, -2**62, -1])}
    out, loaded = _roundtrip(tmp_path, sd)
    assert list(loaded) == list(sd)
    for name, t in sd.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        assert np.array_equal(raw_bytes(loaded[name]), raw_bytes(t)), name
    assert torch.serialization.get_unsafe_globals_in_checkpoint(out) == []
    mapped = torch.load(out, weights_only=True, mmap=True)
    assert torch.equal(mapped["grid"], sd["grid"])


def test_written_layout_is_torch_like(tmp_path):
    out, _ = _roundtrip(tmp_path, {"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.float16)}, name="model.bin")
    data = out.read_bytes()
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert names == ["model/data.pkl", "model/.format_version", "model/.storage_alignment", "model/byteorder",
                         "model/data/0", "model/data/1", "model/version", "model/.data/serialization_id"]
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
        assert zf.read("model/byteorder") == b"little" and zf.read("model/version") == b"3\n"
    src = modelport.open(out)
    assert src.details["prefix"] == "model" and src.details["pickle_protocol"] == 2


def test_archive_name_sees_through_atomic_temporary():
    assert torchfmt._archive_name(Path(".pytorch_model.bin.k2j4_x9a.tmp")) == "pytorch_model"
    assert torchfmt._archive_name(Path("weird.name.tar.pth")) == "weird.name.tar"


def test_ties_survive_writing(tmp_path):
    emb = torch.randn(6, 4)
    sd = {"embed.weight": emb, "other": torch.ones(2), "lm_head.weight": emb, "t": emb.t()}
    out, loaded = _roundtrip(tmp_path, sd)
    assert loaded["embed.weight"].data_ptr() == loaded["lm_head.weight"].data_ptr()
    assert loaded["t"].data_ptr() != loaded["embed.weight"].data_ptr()
    assert torch.equal(loaded["t"], emb.t())
    with zipfile.ZipFile(out) as zf:
        assert sum("/data/" in n for n in zf.namelist()) == 3


def test_aliases_argument_writes_views(tmp_path):
    src_path = tmp_path / "src.pt"
    torch.save({"embed.weight": torch.randn(5, 3), "bias": torch.zeros(3)}, src_path)
    out = tmp_path / "aliased.pt"
    torchfmt.write_torch(modelport.open(src_path), out, aliases={"lm_head.weight": "embed.weight"},
                         metadata={"format": "pt", "epoch": 3})
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == ["embed.weight", "bias", "lm_head.weight"]
    assert loaded["lm_head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()


def test_writer_streams_through_progress(tmp_path):
    src_path = tmp_path / "src.pt"
    torch.save({"a": torch.ones(2), "b": torch.ones(3)}, src_path)
    seen = []
    torchfmt.write_torch(modelport.open(src_path), tmp_path / "o.pt", progress=lambda ref: seen.append(ref.name))
    assert seen == ["a", "b"]


def test_writer_refuses_types_torch_lacks(tmp_path):
    ref = modelport.TensorRef("q", modelport.DTYPES["Q4_K"], (256,), lambda: np.zeros(144, np.uint8))
    with pytest.raises(UnsupportedError, match="Q4_K"):
        torchfmt.write_torch([ref], tmp_path / "q.pt")


def test_registry_detects_and_writes(tmp_path):
    from modelport.formats import registry

    path = _saved(tmp_path)
    assert registry.detect(path).name == "pytorch"
    assert registry.detect(_saved(tmp_path, "legacy.pt", _use_new_zipfile_serialization=False)).name == "pytorch"
    assert registry.for_output(tmp_path / "x.bin").name == "pytorch"
    np.savez(tmp_path / "arrays.npz", a=np.ones(2))
    assert registry.detect(tmp_path / "arrays.npz").name != "pytorch"


@pytest.mark.parametrize("name", ["U32", "U64", "C128", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I64", "BOOL"])
def test_writer_from_plain_arrays(tmp_path, name):
    dtype = modelport.DTYPES[name]
    rng = np.random.default_rng(1)
    values = rng.integers(0, 200, size=(3, 5)).astype(np.float32)
    if dtype.kind == "complex":
        values = values + 1j * values[::-1]
    array = values.astype(dtype.numpy)
    ref = modelport.TensorRef("x", dtype, array.shape, lambda: array)
    out = tmp_path / "x.pt"
    torchfmt.write_torch([ref], out)
    loaded = torch.load(out, weights_only=True)["x"]
    assert str(loaded.dtype) == f"torch.{dtype.torch}"
    assert np.array_equal(raw_bytes(loaded), array.reshape(-1).view(np.uint8))
    assert_same(modelport.open(out)["x"].read(), loaded)
