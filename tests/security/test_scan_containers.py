"""Containers opened by content: broken zip directories, hidden members, tar paths, headers, CLI."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile

import pytest
import torch

from modelport.security import DANGEROUS, SAFE, SUSPICIOUS, scan
from tests.conftest import measure_cost
from tests.security.corpus import call0, p2

EVIL = p2(call0("os", "system", "true"))


def _torch_zip(path):
    torch.save({"w": torch.ones(4)}, path)
    return path.read_bytes()


def _whats(path):
    return {f.what for f in scan(path).findings}


def test_broken_central_directory_falls_back_to_local_headers(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", EVIL)
        z.writestr("archive/version", "3\n")
    data = buf.getvalue()
    cut = data.rfind(b"PK\x01\x02")          # drop the end of the central directory
    (tmp_path / "m.pt").write_bytes(data[:cut])
    whats = _whats(tmp_path / "m.pt")
    assert {"zip central directory", "os.system"} <= whats


def test_member_hidden_between_listed_members(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "x")
    hidden = io.BytesIO()
    with zipfile.ZipFile(hidden, "w") as z:
        z.writestr("payload.pkl", EVIL)
    local = hidden.getvalue()[:hidden.getvalue().find(b"PK\x01\x02")]
    data = buf.getvalue()
    cd = data.find(b"PK\x01\x02")
    # insert the hidden local entry before the central directory and fix the directory's offset
    patched = bytearray(data[:cd] + local + data[cd:])
    eocd = patched.rfind(b"PK\x05\x06")
    patched[eocd + 16:eocd + 20] = (cd + len(local)).to_bytes(4, "little")
    (tmp_path / "h.zip").write_bytes(bytes(patched))
    assert zipfile.ZipFile(tmp_path / "h.zip").namelist() == ["a.txt"]
    assert {"hidden zip member", "os.system"} <= _whats(tmp_path / "h.zip")


def test_tar_path_traversal_and_links(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("../../evil.txt")
        ti.size = 1
        t.addfile(ti, io.BytesIO(b"x"))
        link = tarfile.TarInfo("weights.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    (tmp_path / "m.tar").write_bytes(buf.getvalue())
    report = scan(tmp_path / "m.tar")
    assert report.verdict == DANGEROUS
    assert any(f.what.startswith("tar link") for f in report.findings)


def test_benign_tar_and_nested_zip_are_clean(tmp_path):
    inner = _torch_zip(tmp_path / "inner.pt")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        ti = tarfile.TarInfo("model/pytorch_model.bin")
        ti.size = len(inner)
        t.addfile(ti, io.BytesIO(inner))
    (tmp_path / "m.tar.gz").write_bytes(buf.getvalue())
    assert scan(tmp_path / "m.tar.gz").verdict == SAFE


def test_safetensors_trailing_bytes_and_gguf_trailing(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    import gguf
    save_file({"x": np.ones(4, np.float32)}, str(tmp_path / "a.safetensors"))
    assert scan(tmp_path / "a.safetensors").verdict == SAFE
    with open(tmp_path / "a.safetensors", "ab") as f:
        f.write(EVIL)
    assert scan(tmp_path / "a.safetensors").verdict == SUSPICIOUS
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_tensor("t", np.ones((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert scan(tmp_path / "a.gguf").verdict == SAFE
    with open(tmp_path / "a.gguf", "ab") as f:
        f.write(b"\x01" * 100)
    assert "GGUF trailing bytes" in _whats(tmp_path / "a.gguf")


def test_onnx_symlinked_external_data(tmp_path):
    from tests.security.corpus import _onnx
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(64))
    folder = tmp_path / "m"
    _onnx(folder, "w.bin", make_file=False)
    os.symlink(secret, folder / "w.bin")
    findings = scan(folder / "model.onnx").findings
    assert [f.severity for f in findings] == [DANGEROUS] and "symlink" in findings[0].why


def test_cli_exit_codes_and_json(tmp_path, cli):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "bad.pkl").write_bytes(EVIL)
    r = cli("scan", tmp_path / "ok.pkl")
    assert r.code == 0 and "safe" in r.stdout
    r = cli("scan", tmp_path, "--json")
    assert r.code == 1
    data = json.loads(r.stdout)
    assert data["verdict"] == DANGEROUS
    by = {os.path.basename(f["path"]): f for f in data["files"]}
    assert by["ok.pkl"]["verdict"] == SAFE and by["bad.pkl"]["findings"][0]["what"] == "os.system"
    r = cli("scan", tmp_path / "bad.pkl")
    assert r.code == 1 and "os.system" in r.stdout
    r = cli("scan", tmp_path / "missing.bin")
    assert r.code == 2 and "no such file" in r.stderr
    r = cli("scan", tmp_path, "--severity", "nonsense")
    assert r.code == 2


def test_compressed_npz_inflates_only_member_headers(tmp_path):
    import numpy as np
    np.savez_compressed(tmp_path / "big.npz", a=np.zeros(64 << 20, np.uint8), b=np.ones((3, 3)))
    with measure_cost() as cost:                      # inflating the 64 MB member would allocate it
        assert scan(tmp_path / "big.npz").verdict == SAFE
    assert cost.peak_alloc < (4 << 20), cost


def test_deflate_bomb_is_capped(tmp_path, monkeypatch):
    from modelport.security import containers
    monkeypatch.setattr(containers, "MAX_INFLATE", 1 << 20)   # the cap, made small so the test is quick
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        info = zipfile.ZipInfo("archive/data.pkl")
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, b"\x80\x02" + bytes(8 << 20))     # 8 MB that deflate to 8 KB
    (tmp_path / "bomb.pt").write_bytes(out.getvalue())
    assert "oversized compressed member" in _whats(tmp_path / "bomb.pt")


def test_mutated_archives_never_crash_the_scanner(tmp_path):
    import random

    import numpy as np
    rng = random.Random(1)
    seeds = {"m.pt": _torch_zip(tmp_path / "seed.pt")}
    np.savez_compressed(tmp_path / "seed.npz", a=np.arange(50))
    seeds["m.npz"] = (tmp_path / "seed.npz").read_bytes()
    torch.save({"w": torch.ones(3)}, tmp_path / "seed_legacy.pt", _use_new_zipfile_serialization=False)
    seeds["legacy.pt"] = (tmp_path / "seed_legacy.pt").read_bytes()
    for name, seed in seeds.items():
        for i in range(60):
            data = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if i % 5 == 0:
                data = data[:rng.randrange(1, len(data))]
            p = tmp_path / f"{i}-{name}"
            p.write_bytes(bytes(data))
            report = scan(p)   # must not raise
            assert all(f.what != "unanalysable structure" for f in report.findings), (name, i, report.findings)


def test_guard_leaves_layout_checks_to_the_reader(tmp_path):
    """`scan` grades an HDF5 external link itself; `guard` skips that second open because the reader
    that opens the file next refuses the link on its own, with the same verdict for the user."""
    import h5py
    import numpy as np

    import modelport
    from modelport.core.errors import UnsafeFileError

    path = tmp_path / "linked.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.zeros(4, np.float32)
        f["elsewhere"] = h5py.ExternalLink("/etc/passwd", "/x")
    full = scan(path).files[0]
    assert [x.what for x in full.findings] == ["HDF5 layout"] and "external link" in full.findings[0].why
    assert scan(path, reader_checks=False).files[0].findings == []
    with pytest.raises(UnsafeFileError, match="external link"):
        modelport.open(path)


def test_cli_scan_of_a_big_tree_lists_only_flagged_files(tmp_path, cli):
    for i in range(30):
        (tmp_path / f"ok{i}.pkl").write_bytes(pickle.dumps({"a": i}))
    (tmp_path / "bad.pkl").write_bytes(EVIL)
    r = cli("scan", tmp_path)
    assert r.code == 1 and "bad.pkl" in r.stdout and "ok3.pkl" not in r.stdout
    assert "30 safe ones not listed" in r.stdout
    assert "ok3.pkl" in cli("scan", tmp_path, "--all").stdout
