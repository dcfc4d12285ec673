"""The corpus: every malicious sample flagged, every benign real file clean, no payload ever runs.

The corpus is written at test time by tests/security/corpus.py (torch, numpy, safetensors, gguf-py,
onnx and h5py make the benign files); samples are only ever handed to the scanner.
"""

from __future__ import annotations

import pytest

from modelport.security import DANGEROUS, SAFE, scan
from tests.conftest import measure_cost
from tests.security import corpus


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan-corpus")
    mal, ben = corpus.malicious(root / "malicious"), corpus.benign(root / "benign")
    return root, mal, ben


def test_corpus_size_and_distinct_techniques(samples):
    _, mal, ben = samples
    assert len(mal) >= 40 and len({s.technique for s in mal}) == len(mal)
    assert len(ben) >= 20


def test_every_malicious_sample_is_flagged(samples):
    _, mal, _ = samples
    missed = [(s.name, s.technique) for s in mal if scan(s.path).verdict == SAFE]
    assert missed == []


def test_every_benign_file_is_clean(samples):
    _, _, ben = samples
    flagged = {s.name: [(f.severity, f.what, f.member) for f in scan(s.path).findings] for s in ben}
    assert {k: v for k, v in flagged.items() if v} == {}


def test_folder_scan_and_no_payload_ran(samples):
    root, mal, ben = samples
    report = scan(root)
    assert len(report.files) >= len(mal) + len(ben)
    assert report.verdict == DANGEROUS
    assert not list(root.rglob("PWNED*"))


def _findings(path):
    return scan(path).findings


def test_findings_say_what_and_where(samples):
    root, _, _ = samples
    m = root / "malicious"
    (f,) = _findings(m / "reduce_os_system.pkl")
    assert (f.severity, f.what, f.offset, f.member) == (DANGEROUS, "os.system", 2, None) and "run code" in f.why
    # names resolved through the memo, INST, OBJ and NEWOBJ_EX
    for name, want in [("stack_global_memo.pkl", "os.system"), ("stack_global_memo_list.pkl", "os.system"),
                       ("inst_opcode.pkl", "os.system"), ("obj_opcode.pkl", "os.system"),
                       ("newobj_ex_popen.pkl", "subprocess.Popen"), ("builtin_eval_p0.pkl", "builtins.eval"),
                       ("pty_spawn_p0.pkl", "pty.spawn")]:
        assert want in {x.what for x in _findings(m / name) if x.severity == DANGEROUS}, name
    nested = [x for x in _findings(m / "nested_load_from_bytes.pkl") if x.member and "nested pickle" in x.member]
    assert [x.what for x in nested] == ["os.system"]
    whats = {x.what for x in _findings(m / "torch_bad_crc.pt")}
    assert {"bad CRC", "os.system"} <= whats
    assert any("encrypted" in x.what for x in _findings(m / "torch_encrypted_flag.pt"))
    assert any("name mismatch" in x.what for x in _findings(m / "torch_name_mismatch.pt"))
    assert any(x.what == "os.system" and x.member == "archive/extra/payload.bin" for x in _findings(m / "torch_extra_member.pt"))
    assert any(x.what == "os.system" and x.member.startswith("inner/model.pt>") for x in _findings(m / "nested_zip.zip"))
    assert [x.what for x in _findings(m / "model.7z")] == ["7z archive"]
    assert any(x.what.startswith("EXT1") for x in _findings(m / "ext_code.pkl"))
    for legacy in ("legacy_first_pickle.pt", "legacy_sysinfo.pt", "legacy_keys.pt"):
        assert "os.system" in {x.what for x in _findings(m / legacy)}, legacy
    assert any(x.what.startswith("BUILD on numpy.prod") for x in _findings(m / "build_on_global.pkl"))
    assert any(x.what == "STACK_GLOBAL with a computed name" for x in _findings(m / "computed_stack_global.pkl"))
    # one Lambda layer is one finding (not also its function entry and that function's module)
    assert [(x.severity, x.what) for x in _findings(m / "lambda.h5")] == [(DANGEROUS, "Lambda layer lam (Python bytecode)")]


def test_kinds_are_recognised_by_content(samples):
    root, _, _ = samples
    b = root / "benign"
    kinds = {name: scan(b / name).files[0].kind for name in (
        "every_dtype.pt", "every_dtype_legacy.pt", "arrays.npz", "array_f32.npy", "tiny.gguf",
        "every_dtype.safetensors", "keras2_model.h5", "keras3_model.keras", "onnx_ext/model.onnx")}
    assert kinds == {"every_dtype.pt": "pytorch-zip", "every_dtype_legacy.pt": "pytorch-legacy", "arrays.npz": "npz",
                     "array_f32.npy": "npy", "tiny.gguf": "gguf", "every_dtype.safetensors": "safetensors",
                     "keras2_model.h5": "hdf5", "keras3_model.keras": "keras", "onnx_ext/model.onnx": "onnx"}


def test_large_checkpoint_scans_without_reading_tensor_data(tmp_path):
    import torch
    path = tmp_path / "big.bin"
    torch.save({f"layer{i}": torch.empty(64 << 20 >> 2) for i in range(8)}, path)   # 512 MB of tensor data
    with measure_cost() as cost:
        report = scan(path)
    assert report.verdict == SAFE and report.files[0].kind == "pytorch-zip"
    assert cost.read_bytes < (1 << 20) and cost.peak_alloc < (8 << 20), cost
