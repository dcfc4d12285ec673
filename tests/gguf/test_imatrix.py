"""Importance matrices end to end: the imatrix file formats (read back with gguf-py and parsed by hand), combining and
statistics, the collector against hooks computed here, the IQ/TQ mixes and refusals against llama.cpp's own
`llama_model_quantize` (through llama-cpp-python, importance data passed in its params), and `quantize --imatrix`
byte for byte against llama.cpp with the same importance weights."""

from __future__ import annotations

import contextlib
import ctypes
import math
import re
import struct

import numpy as np
import pytest

from gguf import GGUFReader
from modelport.conversion.gguf_requantize import requantize
from modelport.gguf import imatrix as imx
from modelport.gguf.mixes import FTYPES, ModelShape, choose_types
from modelport.opening import open as open_model
from modelport.runtime import activations
from tests.factory import make_model

from .test_mixes import _llama_tensors, _ref_types, _write_f32_gguf

NEW_FTYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
              "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "Q4_K_M", "Q4_0", "Q5_0")
NEEDS = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS")


def _matrix(rng) -> imx.ImportanceMatrix:
    entries = {
        "blk.0.attn_q.weight": imx.Entry(rng.random((1, 64), dtype=np.float32) * 10, np.array([1024])),
        "blk.1.attn_q.weight": imx.Entry(rng.random((1, 64), dtype=np.float32) * 10, np.array([1024])),
        "blk.0.ffn_down_exps.weight": imx.Entry(rng.random((3, 32), dtype=np.float32), np.array([100, 0, 924])),
    }
    return imx.ImportanceMatrix(entries, ["calib.txt"], chunk_count=2, chunk_size=512)


# ------------------------------------------------------------------------------------------------ formats

def test_gguf_format_reads_back_with_gguf_py(tmp_path):
    m = _matrix(np.random.default_rng(0))
    path = imx.write(m, tmp_path / "m.imatrix.gguf")
    r = GGUFReader(str(path))
    assert [f for f in r.fields if not f.startswith("GGUF.")] == ["general.type", "imatrix.datasets",
                                                                   "imatrix.chunk_count", "imatrix.chunk_size"]
    assert bytes(r.fields["general.type"].parts[-1]).decode() == "imatrix"
    ds = r.fields["imatrix.datasets"]
    assert [bytes(ds.parts[i]).decode() for i in ds.data] == ["calib.txt"]
    assert int(r.fields["imatrix.chunk_count"].parts[-1][0]) == 2
    assert int(r.fields["imatrix.chunk_size"].parts[-1][0]) == 512
    names = [t.name for t in r.tensors]
    entries = sorted(m.entries)                                          # by entry, its sums then its counts
    assert names == [n + suffix for n in entries for suffix in (".in_sum2", ".counts")]
    t = {t.name: t for t in r.tensors}
    assert t["blk.0.attn_q.weight.in_sum2"].shape.tolist() == [64]            # ggml_n_dims drops the trailing 1
    assert t["blk.0.ffn_down_exps.weight.in_sum2"].shape.tolist() == [32, 3]  # ne order: row length first
    assert t["blk.0.ffn_down_exps.weight.counts"].shape.tolist() == [1, 3]
    for name, e in m.entries.items():
        assert np.array_equal(np.asarray(t[name + ".in_sum2"].data).reshape(e.sums.shape), e.sums)
        assert np.array_equal(np.asarray(t[name + ".counts"].data).reshape(-1), e.counts.astype(np.float32))
    back = imx.read(path)
    assert back.datasets == ["calib.txt"] and back.chunk_count == 2 and not back.legacy
    experts = back.importance("blk.0.ffn_down_exps.weight")
    e = m.entries["blk.0.ffn_down_exps.weight"]
    assert experts.shape == (3, 32)
    assert np.array_equal(experts[0], e.sums[0] / np.float32(100)) and np.all(experts[1] == 1)   # no tokens: 1
    assert np.array_equal(back.importance("blk.0.attn_q.weight"), m.entries["blk.0.attn_q.weight"].sums[0] / 1024)
    assert back.importance("output.weight") is None


def test_legacy_dat_layout_and_round_trip(tmp_path):
    m = _matrix(np.random.default_rng(1))
    path = imx.write(m, tmp_path / "m.dat")
    data = path.read_bytes()
    (n,) = struct.unpack_from("<i", data, 0)
    assert n == 3
    pos, seen = 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<i", data, pos)
        name = data[pos + 4:pos + 4 + length].decode()
        ncall, nval = struct.unpack_from("<ii", data, pos + 4 + length)
        values = np.frombuffer(data, "<f4", nval, pos + 12 + length)
        seen[name] = (ncall, values)
        pos += 12 + length + 4 * nval
    chunks, dlen = struct.unpack_from("<ii", data, pos)
    assert chunks == 2 and data[pos + 8:pos + 8 + dlen] == b"calib.txt" and pos + 8 + dlen == len(data)
    ncall, values = seen["blk.0.attn_q.weight"]
    e = m.entries["blk.0.attn_q.weight"]
    assert ncall == 2                                                     # ceil(1024 / 512)
    assert np.allclose(values, e.sums[0] / 1024 * 2, rtol=1e-6)
    back = imx.read(path)
    assert back.legacy and back.chunk_count == 2 and back.datasets == ["calib.txt"]
    assert np.allclose(back.importance("blk.0.attn_q.weight"), e.sums[0] / 1024, rtol=1e-6)


def test_combine_adds_sums_and_counts(tmp_path):
    a, b = _matrix(np.random.default_rng(2)), _matrix(np.random.default_rng(3))
    both = imx.combine([a, imx.read(imx.write(b, tmp_path / "b.gguf"))])
    name = "blk.0.ffn_down_exps.weight"
    assert np.allclose(both.entries[name].sums, a.entries[name].sums + b.entries[name].sums)
    assert both.entries[name].counts.tolist() == [200, 0, 1848]
    assert both.chunk_count == 2048 // 512 and both.datasets == ["calib.txt", "calib.txt"]
    legacy = imx.read(imx.write(a, tmp_path / "a.dat"))                  # .dat: scaled back by the chunk size
    mixed = imx.combine([legacy, a])
    assert mixed.entries["blk.0.attn_q.weight"].counts.tolist() == [1024 + 1024]
    assert np.allclose(mixed.entries["blk.0.attn_q.weight"].sums, 2 * a.entries["blk.0.attn_q.weight"].sums, rtol=1e-5)
    other = imx.ImportanceMatrix({"blk.0.attn_q.weight": imx.Entry(np.ones((1, 8), np.float32), np.array([1]))})
    with pytest.raises(imx.FormatError, match="different models"):
        imx.combine([a, other])


def test_statistics_follow_their_definitions():
    m = _matrix(np.random.default_rng(4))
    rows = {r.name: r for r in imx.statistics(m)}
    act = m.entries["blk.1.attn_q.weight"].sums[0].astype(np.float64) / 1024
    r = rows["blk.1.attn_q.weight"]
    assert (r.layer, r.tensor, r.elements) == (1, "attn_q", 64)
    assert math.isclose(r.sum, act.sum(), rel_tol=1e-9) and math.isclose(r.std, act.std(), rel_tol=1e-6)
    p = act / act.sum()
    assert math.isclose(r.entropy, -(p * np.log2(p)).sum(), rel_tol=1e-9)
    assert math.isclose(r.zd, ((act - act.mean()) / act.std() > 1).mean(), rel_tol=1e-9)
    a, b = m.entries["blk.1.attn_q.weight"].sums[0], m.entries["blk.0.attn_q.weight"].sums[0]
    assert math.isclose(r.cos_sim, a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel_tol=1e-5)
    assert rows["blk.0.attn_q.weight"].cos_sim is None
    assert rows["blk.0.ffn_down_exps.weight"].elements == 64               # the expert without tokens is left out


def test_bad_files_are_one_line_errors(tmp_path, cli):
    (tmp_path / "junk.dat").write_bytes(b"\x01\x00\x00\x00\xff\xff")
    with pytest.raises(imx.FormatError, match="not a valid imatrix"):
        imx.read(tmp_path / "junk.dat")
    result = cli("imatrix", "--in-file", str(tmp_path / "junk.dat"), "--show-statistics")
    assert result.code == 2 and "junk.dat" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- the collector

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imatrix") / "llama"
    return make_model(folder, "llama", "gpt2", hidden=256, layers=2, heads=4, kv_heads=2, ffn=256, max_positions=128)


def _independent_sums(folder, chunks):
    """Per HF module, the sum of squared inputs and the row count, from forward (post) hooks set up here."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    sums, counts = {}, {}

    def hook(name):
        def f(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x ** 2).sum(0).numpy()
            counts[name] = counts.get(name, 0) + x.shape[0]
        return f

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        for ids in chunks:
            model(torch.tensor([ids]))
    return sums, counts


HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


@pytest.mark.slow
def test_collector_matches_hooks_computed_here(tiny_llama, tmp_path):
    text = activations.calibration_text()[:6000]
    with open_model(tiny_llama) as source:
        got = activations.collect(source, text, ctx=64, chunks=3, dataset="cal")
    m = got.imatrix
    assert got.chunks == 3 and m.chunk_count == 3 and m.chunk_size == 64 and m.datasets == ["cal"]
    assert len(m.entries) == 2 * 7 and all(n.startswith("blk.") for n in m.entries)
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(str(tiny_llama)).encode(text)
    chunks = [ids[i * 64:(i + 1) * 64] for i in range(3)]
    sums, counts = _independent_sums(tiny_llama, chunks)
    for hf, count in counts.items():
        layer = int(re.search(r"layers\.(\d+)\.", hf).group(1))
        name = f"blk.{layer}.{HF_TO_GGUF[hf.split(f'layers.{layer}.')[1]]}.weight"
        e = m.entries[name]
        assert e.counts.tolist() == [count] == [192]
        np.testing.assert_allclose(e.sums[0], sums[hf], rtol=1e-4)


@pytest.mark.slow
def test_imatrix_cli_gguf_source_statistics_and_combining(tiny_llama, tmp_path, cli):
    f32 = tmp_path / "tiny.gguf"
    assert cli("convert", str(tiny_llama), str(f32), "--quant", "F32").code == 0
    text = tmp_path / "calib.txt"
    text.write_text(activations.calibration_text()[:4000], encoding="utf-8")
    out = tmp_path / "tiny.imatrix.gguf"
    result = cli("imatrix", str(f32), "--text", str(text), "--ctx", "64", "--chunks", "2", "-o", str(out), "--json")
    assert result.code == 0, result.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]      # the staged HF folder is gone
    from_gguf = imx.read(out)
    with open_model(tiny_llama) as source:                                  # the same model from its HF folder
        direct = activations.collect(source, text.read_text(encoding="utf-8"), ctx=64, chunks=2).imatrix
    for name, e in direct.entries.items():
        np.testing.assert_allclose(from_gguf.entries[name].sums, e.sums, rtol=1e-3, atol=1e-5)
    assert cli("imatrix", str(f32), "--text", str(text), "-c", "64", "--chunks", "2", "-o", str(out)).code == 2
    stats = cli("imatrix", "--in-file", str(out), "--show-statistics", "--json")
    assert stats.code == 0, stats.stderr
    import json
    data = json.loads(stats.stdout)
    assert len(data["tensors"]) == 14 and [r["layer"] for r in data["layers"]] == [0, 1]
    table = cli("imatrix", "--in-file", str(out), "--show-statistics")
    assert table.code == 0 and "attn_q" in table.stdout and "cos sim" in table.stdout
    both = tmp_path / "both.dat"
    assert cli("imatrix", "--in-file", str(out), "--in-file", str(out), "-o", str(both)).code == 0
    combined = imx.read(both)                 # twice the sums over twice the tokens: the same importance
    assert combined.legacy and sorted(combined.entries) == sorted(from_gguf.entries)
    for name in from_gguf.entries:
        np.testing.assert_allclose(combined.importance(name), from_gguf.importance(name), rtol=1e-5)


# ------------------------------------------------------------------------- mixes against llama.cpp (dry run)

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@contextlib.contextmanager
def _llama_log(llama_cpp):
    """llama.cpp's log lines, collected while the block runs (its own logger put back after)."""
    from llama_cpp import _logger

    lines = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _importance_param(tensors: dict, weights: dict):
    keep = []
    arr = (pytest.importorskip("llama_cpp").llama_model_imatrix_data * (len(weights) + 1))()
    for i, (name, v) in enumerate(weights.items()):
        v = np.ascontiguousarray(v, np.float32).reshape(-1)
        b = name.encode()
        keep += [v, b]
        arr[i].name, arr[i].size = b, v.size
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    arr[len(weights)].name = None
    return arr, keep


def _kv_overrides(llama_cpp, meta: dict):
    """llama-quantize's `--imatrix` keys as the overrides it passes (strings, and integers written as u32)."""
    arr = (llama_cpp.llama_model_kv_override * (len(meta) + 1))()
    for o, (key, value) in zip(arr, meta.items()):
        o.key = key.encode()
        if isinstance(value, str):
            o.tag, o.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()
        else:
            o.tag, o.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, int(value)
    return arr


def imatrix_keys(path, m: imx.ImportanceMatrix) -> dict:
    """The keys llama-quantize's front end adds for `--imatrix path` (quantize.imatrix.*), in its order."""
    keys = {"quantize.imatrix.file": str(path)}
    if m.datasets:
        keys["quantize.imatrix.dataset"] = m.datasets[0]
    keys["quantize.imatrix.entries_count"] = len(m.entries)
    if m.chunk_count:
        keys["quantize.imatrix.chunks_count"] = m.chunk_count
    return keys


def llama_quantize(llama_cpp, src, dst, ftype, weights=None, dry_run=False, keys=None):
    """`llama_model_quantize` (what llama-quantize runs) with importance `weights` (name -> flat float32) and the
    metadata `keys` its front end would add."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.dry_run = FTYPES[ftype], 2, dry_run
    keep = None
    if weights is not None:
        arr, keep = _importance_param(None, weights)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    overrides = _kv_overrides(llama_cpp, keys) if keys else None
    if overrides is not None:
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    del keep, overrides
    return rc


_DRY = re.compile(r"\]\s+(\S+)\s+- \[[^\]]*\], type =\s+(\S+), size =\s+[\d.]+ MiB(?: ->\s+[\d.]+ MiB \((\S+)\))?")


MIX_MODELS = {"h256_l8_gqa4": (8, 256, 8, 2, 512, 48, False), "h256_l8_gqa1_tied": (8, 256, 4, 4, 352, 48, True),
              "h96_l2_fallbacks": (2, 96, 4, 2, 160, 32, False)}


@pytest.mark.parametrize("model", list(MIX_MODELS))
def test_mixes_match_llama_quantize(llama_cpp, tmp_path, model):
    n_layer, hidden, n_head, n_kv, ffn, vocab, tied = MIX_MODELS[model]
    tensors = _llama_tensors(n_layer, hidden, n_head, n_kv, ffn, vocab, tied)
    src = tmp_path / "f32.gguf"
    _write_f32_gguf(src, tensors, n_layer, hidden, n_head, n_kv, ffn, vocab)
    weights = {n: np.ones(a.shape[-1], np.float32) for n, a in tensors.items() if n.startswith("blk.") and a.ndim == 2}
    shape = ModelShape(n_layer, n_head, n_kv)
    for ftype in NEW_FTYPES:
        for with_imatrix in (False, True):
            with _llama_log(llama_cpp) as lines:
                rc = llama_quantize(llama_cpp, src, tmp_path / "dry.gguf", ftype,
                                     weights if with_imatrix else None, dry_run=True)
            assert rc == 0
            got = {m.group(1): (m.group(3) or m.group(2)).upper() for m in _DRY.finditer("".join(lines))}
            want = choose_types(_ref_types(tensors), ftype, shape, has_imatrix=with_imatrix)
            assert got == want, (model, ftype, with_imatrix, {k: (got.get(k), v) for k, v in want.items()
                                                              if got.get(k) != v})


def test_refusals_without_imatrix_match_llama_quantize(llama_cpp, tmp_path, cli):
    tensors = _llama_tensors(2, 256, 4, 2, 256, 32, False)
    src = tmp_path / "f32.gguf"
    _write_f32_gguf(src, tensors, 2, 256, 4, 2, 256, 32)
    for ftype in FTYPES:
        with _llama_log(llama_cpp):
            refused = llama_quantize(llama_cpp, src, tmp_path / "llama.gguf", ftype) != 0 if ftype in NEEDS else False
        result = cli("quantize", str(src), str(tmp_path / f"{ftype}.gguf"), "--type", ftype) if ftype in NEEDS else None
        if ftype in NEEDS:
            assert refused, ftype
            assert result.code == 2 and "needs an importance matrix" in result.stderr, (ftype, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
            assert not (tmp_path / f"{ftype}.gguf").exists()
        else:
            types = choose_types(_ref_types(tensors), ftype, ModelShape(2, 4, 2))
            assert not any(t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS") and n.startswith("blk.")
                           for n, t in types.items()), ftype


# ------------------------------------------------------------------ quantize --imatrix against llama.cpp's bytes

@pytest.mark.slow
@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q4_0", "IQ4_XS", "Q3_K_S"])
def test_quantize_with_imatrix_equals_llama_quantize(llama_cpp, tmp_path, ftype):
    tensors = _llama_tensors(2, 256, 4, 2, 512, 32, False, seed=5)
    src = tmp_path / "f32.gguf"
    _write_f32_gguf(src, tensors, 2, 256, 4, 2, 512, 32)
    rng = np.random.default_rng(6)
    m = imx.ImportanceMatrix({n: imx.Entry((rng.random((1, a.shape[-1]), dtype=np.float32) ** 4) * 50, np.array([300]))
                              for n, a in tensors.items() if n.startswith("blk.") and a.ndim == 2}, ["t"], 1, 256)
    path = imx.write(m, tmp_path / "m.imatrix.gguf")
    ours = tmp_path / "ours.gguf"
    requantize(src, ours, ftype, imatrix=path, modelfile=False)
    weights = {n: m.importance(n) for n in m.entries}
    with _llama_log(llama_cpp):
        assert llama_quantize(llama_cpp, src, tmp_path / "llama.gguf", ftype, weights, keys=imatrix_keys(path, m)) == 0
    assert ours.read_bytes() == (tmp_path / "llama.gguf").read_bytes()    # the whole file: keys, order, padding
    theirs = {t.name: t for t in GGUFReader(str(tmp_path / "llama.gguf")).tensors}
    mine = GGUFReader(str(ours))
    for t in mine.tensors:
        assert t.tensor_type == theirs[t.name].tensor_type, t.name
        assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(theirs[t.name].data).view(np.uint8)), \
            f"{ftype}: {t.name} ({t.tensor_type.name}) differs"
    assert int(mine.fields["quantize.imatrix.entries_count"].parts[-1][0]) == len(m.entries)
    plain = tmp_path / "plain.gguf"
    requantize(src, plain, ftype, modelfile=False)
    differ = [t.name for t, u in zip(mine.tensors, GGUFReader(str(plain)).tensors)
              if not np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(u.data).view(np.uint8))]
    assert any(n.startswith("blk.") for n in differ)                      # the weights did change the bytes


@pytest.mark.slow
@pytest.mark.parametrize("option,patterns", [("--include-weights", ["attn_v", "ffn_down"]),
                                             ("--exclude-weights", ["attn"]), ("--include-weights", ["no-such"])])
def test_include_and_exclude_weights_choose_entries_as_llama_quantize(llama_cpp, tmp_path, cli, option, patterns):
    """Entries kept or dropped by name substring, the count in quantize.imatrix.entries_count; none left: the file
    is made as without an imatrix (no imatrix keys, the plain mix), as llama-quantize's front end does."""
    tensors = _llama_tensors(2, 256, 4, 2, 256, 32, False, seed=7)
    src = tmp_path / "f32.gguf"
    _write_f32_gguf(src, tensors, 2, 256, 4, 2, 256, 32)
    rng = np.random.default_rng(8)
    m = imx.ImportanceMatrix({n: imx.Entry((rng.random((1, a.shape[-1]), dtype=np.float32) ** 4) * 50, np.array([64]))
                              for n, a in tensors.items() if n.startswith("blk.") and a.ndim == 2}, ["t"], 1, 64)
    path = imx.write(m, tmp_path / "m.imatrix.gguf")
    ours = tmp_path / "ours.gguf"
    args = [a for p in patterns for a in (option, p)]
    res = cli("quantize", str(src), str(ours), "--type", "Q4_0", "--imatrix", str(path), *args)
    assert res.code == 0, res.stderr
    keep = [n for n in m.entries if (any(p in n for p in patterns) == (option == "--include-weights"))]
    assert keep or patterns == ["no-such"]
    kept = imx.ImportanceMatrix({n: m.entries[n] for n in keep}, ["t"], 1, 64)
    weights = {n: m.importance(n) for n in keep} or None
    with _llama_log(llama_cpp):
        assert llama_quantize(llama_cpp, src, tmp_path / "llama.gguf", "Q4_0", weights,
                              keys=imatrix_keys(path, kept) if keep else None) == 0
    assert ours.read_bytes() == (tmp_path / "llama.gguf").read_bytes()
    both = cli("quantize", str(src), str(tmp_path / "x.gguf"), "--imatrix", str(path), "--include-weights", "a",
               "--exclude-weights", "b")
    assert both.code == 2 and "cannot be used together" in both.stderr and not (tmp_path / "x.gguf").exists()


# ----------------------------------------------------------------------- convert --quant --imatrix and estimate

@pytest.mark.slow
def test_convert_with_imatrix_makes_iq_files_estimate_predicts_and_llama_cpp_runs(tiny_llama, tmp_path, cli):
    from modelport.conversion import convert
    from modelport.estimate import estimate

    out = tmp_path / "tiny.imatrix.gguf"
    assert cli("imatrix", str(tiny_llama), "--ctx", "64", "--chunks", "2", "-o", str(out)).code == 0
    predicted = estimate(tiny_llama)["weights"]
    plain = cli("convert", str(tiny_llama), str(tmp_path / "refused.gguf"), "--quant", "IQ2_M")
    assert plain.code == 2 and "needs an importance matrix" in plain.stderr
    for ftype in ("IQ2_M", "IQ4_XS"):
        dst = tmp_path / f"tiny-{ftype}.gguf"
        convert(tiny_llama, dst, quant=ftype, imatrix=out)
        r = GGUFReader(str(dst))
        types = {}
        for t in r.tensors:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        assert types == predicted[ftype]["tensor_types"], ftype
        assert predicted[ftype]["tensor_bytes"] == dst.stat().st_size - r.data_offset, ftype
        assert abs(predicted[ftype]["bytes"] / dst.stat().st_size - 1) < 0.01
        assert bytes(r.fields["quantize.imatrix.file"].parts[-1]).decode() == str(out)
        llama = pytest.importorskip("llama_cpp").Llama(str(dst), n_ctx=64, verbose=False)
        assert len(llama.tokenize(b"The capital of France")) > 0 and llama.eval(llama.tokenize(b"Hello")) is None


def test_ggml_gguf_reader_reads_our_file_as_llama_imatrix_does(tmp_path):
    """ggml's own GGUF reader (libggml-base from llama-cpp-python, what common_imatrix_load calls): every tensor
    with its data, the keys where llama-quantize looks for them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from pathlib import Path

    lib = ctypes.CDLL(str(next(iter(sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))))))

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    lib.gguf_find_key.restype = ctypes.c_int64
    lib.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_get_val_u32.restype = ctypes.c_uint32
    lib.gguf_get_val_u32.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_val_str.restype = ctypes.c_char_p
    lib.gguf_get_val_str.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    m = _matrix(np.random.default_rng(7))
    path = imx.write(m, tmp_path / "m.imatrix.gguf")
    ggml_ctx = ctypes.c_void_p()
    g = lib.gguf_init_from_file(str(path).encode(), InitParams(False, ctypes.pointer(ggml_ctx)))
    assert g, "ggml could not read the file"
    try:
        assert lib.gguf_get_val_str(g, lib.gguf_find_key(g, b"general.type")) == b"imatrix"
        assert lib.gguf_get_val_u32(g, lib.gguf_find_key(g, b"imatrix.chunk_count")) == 2
        assert lib.gguf_get_val_u32(g, lib.gguf_find_key(g, b"imatrix.chunk_size")) == 512
        assert lib.gguf_find_key(g, b"imatrix.datasets") >= 0
        names = [lib.gguf_get_tensor_name(g, i).decode() for i in range(lib.gguf_get_n_tensors(g))]
        assert names == [n + s for n in sorted(m.entries) for s in (".in_sum2", ".counts")]
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ggml_ctx)
