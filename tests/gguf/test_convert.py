"""`modelport convert HF_DIR out.gguf [--quant T]` and `modelport quantize`, end to end against llama.cpp.

Oracles: transformers (logits, tokenization) and llama.cpp through llama-cpp-python (loading, logits, and
`llama_model_quantize` for the bytes and per-tensor types of every quantized file).
"""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modelport.conversion import convert
from modelport.formats.gguf import open_gguf, read_header
from tests.conftest import assert_one_line_error
from tests.factory import CHATML, LLAMA3, PHI3, TEST_TEXT, long_rope, make_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

QUANTS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M",
          "Q5_K_S", "Q5_K_M", "Q6_K"]
MODELS = {  # name: (arch, tokenizer style, options)
    "llama": ("llama", "llama3", dict(chat_template=LLAMA3, rope_theta=500000.0)),
    "qwen2": ("qwen2", "qwen2", dict(chat_template=CHATML, tied=True, kv_heads=1)),   # n_gqa 4: the Q2_K attn_v rule
    "qwen3": ("qwen3", "qwen2", dict(chat_template=CHATML)),
    "gpt2": ("gpt2", "gpt2", dict()),
    "phi3": ("phi3", "spm", dict(kv_heads=4, chat_template=PHI3)),
    "phi3_long": ("phi3", "spm", dict(kv_heads=4, chat_template=PHI3, rope_scaling=long_rope(64), max_positions=4096)),
    "tinyllama": ("llama", "spm", dict(vocab_pad=3)),
    "gemma": ("gemma", "gemma", dict()),
    "gemma2": ("gemma2", "gemma", dict()),
    "gemma3": ("gemma3", "gemma", dict()),
    "smollm3": ("smollm3", "llama3", dict(chat_template=CHATML)),
    "olmo2": ("olmo2", "gpt2", dict(chat_template=CHATML)),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            arch, style, opts = MODELS[name]
            made[name] = make_model(root / name, arch, style, **opts)
        return made[name]
    return get


def _llama_cpp():
    return pytest.importorskip("llama_cpp")  # optional heavy dependency: compiled llama.cpp (llama-cpp-python)


def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _gguf_logits(path: Path, ids: list[int], n_ctx: int = 256) -> np.ndarray:
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False, seed=0)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def _rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("quant", ["F32", "F16", "BF16"])
def test_float_gguf_logits_match_transformers(models, tmp_path, cli, name, quant):
    folder = models(name)
    out = tmp_path / f"{name}-{quant}.gguf"
    res = cli("convert", folder, out, "--quant", quant, "-q")
    assert res.code == 0, res.stderr
    assert out.with_name(out.stem + ".Modelfile").is_file()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = hf_tok.encode(TEST_TEXT)[:120]
    llama_cpp = _llama_cpp()
    vocab = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    assert vocab.tokenize(TEST_TEXT.encode(), add_bos=True, special=False) == hf_tok.encode(TEST_TEXT)
    ref = _hf_logits(folder, ids)
    got = _gguf_logits(out, ids)
    err = _rel_rms(got, ref)
    assert err < (2e-3 if quant != "BF16" else 2e-2), err     # bf16 keeps 8 bits of mantissa
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > (0.95 if quant != "BF16" else 0.8)
    types = {t.dtype.name for t in read_header(out).tensors}
    assert types == {"F32", quant} if quant != "F32" else types == {"F32"}


@pytest.mark.slow
def test_phi3_long_rope_past_the_original_context(models, tmp_path):
    """Phi-3-128k style: beyond the pretraining context (512 here) both engines switch to the long factors
    and scale attention by sqrt(1 + ln(8)/ln(512)); the short-context case is in the test above."""
    folder = models("phi3_long")
    out = tmp_path / "long.gguf"
    convert(folder, out, quant="F32")
    meta = read_header(out).metadata
    assert float(meta["phi3.rope.scaling.attn_factor"]) == pytest.approx(np.sqrt(1 + np.log(8) / np.log(512)), rel=1e-6)
    ids = (transformers.AutoTokenizer.from_pretrained(folder).encode(TEST_TEXT) * 8)[:600]
    ref = _hf_logits(folder, ids)
    got = _gguf_logits(out, ids, n_ctx=1024)
    assert _rel_rms(got[520:], ref[520:]) < 2e-3


def _types_and_bytes(path: Path) -> dict[str, tuple[str, bytes]]:
    src = open_gguf(path)
    try:
        return {n: (r.dtype.name, bytes(np.asarray(r.read_raw()))) for n, r in src.tensors.items()}
    finally:
        src.close()


def _llama_quantize(src: Path, dst: Path, ftype: str) -> None:
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0


def _assert_same_as_llama_quantize(ours: Path, f32: Path, ftype: str, tmp_path: Path) -> dict[str, str]:
    ref = tmp_path / f"ref-{ftype}.gguf"
    _llama_quantize(f32, ref, ftype)
    a, b = _types_and_bytes(ours), _types_and_bytes(ref)
    assert set(a) == set(b)
    types = {n: a[n][0] for n in a}
    assert types == {n: b[n][0] for n in b}, ftype
    bad = [n for n in a if a[n][1] != b[n][1]]
    assert not bad, (ftype, bad)
    assert ours.read_bytes() == ref.read_bytes(), ftype    # the whole file too: key order, tensor order, padding
    meta = read_header(ours).metadata
    assert int(meta["general.quantization_version"]) == 2
    assert int(meta["general.file_type"]) == getattr(_llama_cpp(), f"LLAMA_FTYPE_MOSTLY_{ftype}")
    return types


@pytest.mark.slow
@pytest.mark.parametrize("name,quants", [("llama", QUANTS), ("qwen2", ["Q4_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q6_K"]),
                                         ("gpt2", ["Q8_0", "Q5_1", "Q4_K_M", "Q5_K_M"]), ("phi3", ["Q4_K_S", "Q3_K_L"]),
                                         ("gemma2", ["Q4_K_M", "Q5_K_S"]), ("qwen3", ["Q4_K_M", "Q3_K_S"]),
                                         ("gemma3", ["Q4_K_M", "Q6_K"]), ("smollm3", ["Q4_K_M"]),
                                         ("olmo2", ["Q4_K_M", "Q5_K_S", "Q3_K_M", "Q8_0"])])
def test_quantized_files_are_byte_identical_to_llama_quantize(models, tmp_path, name, quants):
    folder = models(name)
    f32 = tmp_path / "f32.gguf"
    convert(folder, f32, quant="F32")
    seen_types = set()
    for q in quants:
        ours = tmp_path / f"{q}.gguf"
        convert(folder, ours, quant=q)
        types = _assert_same_as_llama_quantize(ours, f32, q, tmp_path)
        seen_types |= set(types.values())
        if name == "qwen2" and q == "Q4_K_M":       # tied embeddings: token_embd is the output tensor
            assert types["token_embd.weight"] == "Q6_K" and "output.weight" not in types
        if q == "Q4_K_M":
            llm = _llama_cpp().Llama(str(ours), n_ctx=64, logits_all=True, verbose=False)
            ids = llm.tokenize(b"hello world")
            assert len(ids) > 0
            llm.eval(ids)                               # scores rows are filled only with logits_all
            assert np.isfinite(np.array(llm.scores[: len(ids)])).all()
            llm.close()
    assert "F32" in seen_types


@pytest.mark.slow
def test_rows_not_divisible_by_256_fall_back_like_llama_cpp(tmp_path):
    folder = make_model(tmp_path / "small", "llama", "gpt2", hidden=64, ffn=128, heads=4, kv_heads=2)
    f32 = tmp_path / "f32.gguf"
    convert(folder, f32, quant="F32")
    for q in ("Q4_K_M", "Q2_K", "Q6_K"):
        ours = tmp_path / f"{q}.gguf"
        convert(folder, ours, quant=q)
        types = _assert_same_as_llama_quantize(ours, f32, q, tmp_path)
        assert "Q4_K" not in types.values()


@pytest.mark.slow
def test_quantize_command_matches_llama_quantize_from_f16(models, tmp_path, cli):
    f16 = tmp_path / "f16.gguf"
    assert cli("convert", models("qwen2"), f16, "--quant", "F16", "-q").code == 0
    out = tmp_path / "q.gguf"
    res = cli("quantize", f16, out, "--type", "Q4_K_M", "-q")
    assert res.code == 0, res.stderr
    _assert_same_as_llama_quantize(out, f16, "Q4_K_M", tmp_path)
    assert "PARAMETER stop \"<|im_end|>\"" in out.with_name("q.Modelfile").read_text()
    res = cli("quantize", out, tmp_path / "again.gguf", "--type", "Q4_0")
    assert_one_line_error(res, "already Q")
    assert not (tmp_path / "again.gguf").exists()


def test_verify_bounds_quantization_error_and_catches_a_scrambled_tensor(models, tmp_path, cli):
    """--verify re-reads the GGUF: float tensors bit for bit, quantized ones within their type's bound; a tensor
    written in the wrong orientation (the bug a permutation or transpose mistake makes) fails the check."""
    from modelport.core.errors import CheckFailed
    from modelport.gguf.convert import VERIFY_BOUNDS, parse_ftype, plan_hf, verify_gguf

    folder = models("llama")
    out = tmp_path / "q.gguf"
    res = cli("convert", folder, out, "--quant", "Q4_K_M", "--verify", "--json", "-q")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["verified"] and {"Q4_K", "Q6_K"} <= set(data["errors"])
    assert all(0 < e <= VERIFY_BOUNDS[t] for t, e in data["errors"].items())
    f16 = tmp_path / "f16.gguf"
    assert cli("convert", folder, f16, "--quant", "F16", "--verify", "-q").code == 0
    res = cli("quantize", f16, tmp_path / "q2.gguf", "--type", "Q2_K", "--verify")
    assert res.code == 0 and "verified" in res.stdout and "Q2_K" in res.stdout, res.stderr
    res = cli("convert", out, tmp_path / "back", "--to", "hf", "--verify")
    assert res.code == 0 and "every tensor matches the source" in res.stdout, res.stderr

    import modelport
    with modelport.open(folder) as source:
        plan = plan_hf(source, parse_ftype("Q4_K_M"), source.config, source.side_files)
    verify_gguf(plan.tensors, out)                                  # the real plan passes
    p = next(p for p in plan.tensors if p.name == "blk.0.attn_q.weight")
    load = p.load
    p.load = lambda: load()[::-1]                                   # rows in the wrong order
    with pytest.raises(CheckFailed, match="blk.0.attn_q.weight"):
        verify_gguf(plan.tensors, out)


def test_a_config_llama_cpp_cannot_run_is_a_one_line_error_naming_the_model(models, tmp_path, cli):
    folder = tmp_path / "broken-phi3"
    shutil.copytree(models("phi3_long"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"]["long_factor"] = [1.0, 2.0, 3.0]
    (folder / "config.json").write_text(json.dumps(config))
    res = cli("convert", folder, tmp_path / "out.gguf", "--quant", "Q4_K_M")
    assert_one_line_error(res, "broken-phi3", "long_factor must list 32 numbers")
    assert not (tmp_path / "out.gguf").exists()


def test_values_the_quantizer_refuses_are_a_one_line_error_naming_file_and_tensor(models, tmp_path, cli):
    """A NaN in one weight: `convert --quant` (HF source) and `quantize` (F32 GGUF source) both stop with exit 2,
    naming the source and the tensor; nothing is left at the destination."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "nan-llama"
    shutil.copytree(models("llama"), folder)
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][2, 7] = np.nan
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for quant, kernel in (("Q4_0", "Q4_0"), ("Q4_K_M", "Q")):
        out = tmp_path / f"out-{quant}.gguf"
        res = cli("convert", folder, out, "--quant", quant)
        assert_one_line_error(res, "nan-llama", "blk.1.ffn_down.weight", f"cannot quantize to {kernel}", "NaN")
        assert not out.exists()

    f32 = tmp_path / "nan-f32.gguf"
    assert cli("convert", folder, f32, "--quant", "F32", "-q").code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli("quantize", f32, tmp_path / "q.gguf", "--type", "IQ4_XS")
    assert_one_line_error(res, "nan-f32.gguf", "blk.1.ffn_down.weight", "NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_single_safetensors_file_with_config(models, tmp_path, cli):
    folder = models("gpt2")
    lone = tmp_path / "weights.safetensors"
    shutil.copy(folder / "model.safetensors", lone)
    out = tmp_path / "lone.gguf"
    res = cli("convert", lone, out, "--config", folder / "config.json", "--quant", "Q8_0", "-q")
    assert res.code == 0, res.stderr
    ref = tmp_path / "dir.gguf"
    convert(folder, ref, quant="Q8_0")
    assert _types_and_bytes(out) == _types_and_bytes(ref)
    meta = read_header(out).metadata
    assert meta["general.architecture"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    res = cli("convert", lone, tmp_path / "noconf.gguf", "--quant", "Q8_0")
    assert_one_line_error(res, "config.json")


def test_streaming_reads_each_tensor_once(models, tmp_path):
    """The writer pulls tensors one at a time; each source tensor is read exactly once."""
    from modelport.gguf.convert import hf_to_gguf
    from modelport.opening import open as open_model

    reads: dict[str, int] = {}
    with open_model(models("gpt2")) as source:
        for ref in source.values():
            orig = ref.loader

            def counted(orig=orig, name=ref.name):
                reads[name] = reads.get(name, 0) + 1
                return orig()
            ref.loader = counted
        plan = hf_to_gguf(source, tmp_path / "s.gguf", "Q4_K_M")
    assert set(reads.values()) == {1}
    assert len(reads) == len(plan.tensors)


def _break(folder: Path, tmp_path: Path, fix) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    fix(broken)
    return broken


def test_validation_errors_are_one_line_and_write_nothing(models, tmp_path, cli):
    folder = models("gpt2")

    def dup(d):
        tj = json.loads((d / "tokenizer.json").read_text())
        vocab = tj["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[50:52]
        tj["added_tokens"].append({"id": vocab[b], "content": a, "special": False})   # id of b now spells a
        (d / "tokenizer.json").write_text(json.dumps(tj))

    def mismatch(d):
        cfg = json.loads((d / "config.json").read_text())
        tj = json.loads((d / "tokenizer.json").read_text())
        tj["added_tokens"].append({"id": cfg["vocab_size"], "content": "<extra>", "special": True})
        (d / "tokenizer.json").write_text(json.dumps(tj))

    def unknown(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"], cfg["model_type"] = ["FalconMambaForCausalLM"], "falcon_mamba"
        (d / "config.json").write_text(json.dumps(cfg))

    for i, (fix, needle) in enumerate([(dup, "appears twice"), (mismatch, "but the embedding has"),
                                       (unknown, "supported: GPT2LMHeadModel")]):
        broken = _break(folder, tmp_path / str(i), fix)
        out = tmp_path / f"bad{i}.gguf"
        res = cli("convert", broken, out, "--quant", "Q4_K_M")
        assert_one_line_error(res, needle)
        assert not out.exists() and not out.with_name(out.stem + ".Modelfile").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".bad{i}")]


@pytest.mark.slow
def test_peak_memory_is_about_one_tensor_not_the_model(tmp_path):
    """Converting a ~230 MB F32 model to Q4_K_M raises peak RSS by far less than the model size."""
    import subprocess
    import sys

    folder = make_model(tmp_path / "mid", "llama", "spm", hidden=1024, ffn=4096, layers=4, heads=8, kv_heads=2)
    model_mb = (folder / "model.safetensors").stat().st_size / 2**20
    largest_mb = 4096 * 1024 * 4 / 2**20
    code = f"""
import json
from modelport.conversion import convert
import gguf, numpy, modelport.gguf.convert, modelport.formats.gguf, tokenizers
status = lambda key: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) / 1024
before = status('VmRSS')
convert({str(folder)!r}, {str(tmp_path / 'out.gguf')!r}, quant="Q4_K_M")
print(json.dumps({{"before": before, "peak": status('VmHWM')}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grew = r["peak"] - r["before"]
    assert model_mb > 200
    assert grew < 5 * largest_mb, (grew, model_mb)    # 16 MB largest tensor; the whole model would be > 200 MB


def test_verify_has_a_bound_for_every_type_the_quantizer_writes():
    """--verify looks the written type up in VERIFY_BOUNDS: a type without an entry would be a KeyError."""
    from modelport.core.dtypes import DTYPES
    from modelport.gguf import quants
    from modelport.gguf.convert import VERIFY_BOUNDS

    written = {t for t in quants.SUPPORTED if DTYPES[t].is_quantized}
    assert {"IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0"} <= written
    assert written <= set(VERIFY_BOUNDS), written - set(VERIFY_BOUNDS)
    assert all(0 < b <= 1.0 for b in VERIFY_BOUNDS.values())      # an uncorrelated tensor is off by more than 1


#: The types --verify had bounds for before the importance-matrix types came.
OLDER_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def _newer_types():
    from modelport.core.dtypes import DTYPES
    from modelport.gguf import quants
    return [t for t in quants.SUPPORTED if DTYPES[t].is_quantized and t not in OLDER_TYPES]


@pytest.mark.parametrize("qtype", _newer_types())
def test_verify_bounds_the_imatrix_era_types(qtype, tmp_path):
    """--verify knows every type added with the importance matrix (IQ4, ternary, MXFP4, and the grid types once
    iq_grid registers them): a file of the type, quantized with importance weights where ggml uses them, passes
    on Gaussian and on heavy-tailed rows, and the same tensor with its rows out of order fails."""
    from modelport.core import dtypes
    from modelport.core.errors import CheckFailed
    from modelport.core.tensor import TensorRef
    from modelport.formats.gguf import write_gguf
    from modelport.gguf import quants
    from modelport.gguf.convert import VERIFY_BOUNDS, Planned, verify_gguf

    rng = np.random.default_rng(7)
    tensors = {"blk.0.ffn_up.weight": (rng.standard_normal((16, 512)) * 0.02).astype(np.float32),
               "blk.0.ffn_down.weight": (rng.standard_t(3, (16, 512)) * 0.01).astype(np.float32)}
    imatrix = rng.lognormal(0, 1, 512).astype(np.float32)
    planned = [Planned(name, x.shape, lambda x=x: x, qtype) for name, x in tensors.items()]
    refs = [TensorRef(p.name, dtypes.DTYPES[qtype], p.shape, loader=lambda: pytest.fail("blocks are copied raw"),
                      raw_loader=lambda x=tensors[p.name]:
                      quants.quantize(x, qtype, imatrix=imatrix).reshape(-1), extra={"gguf_type": qtype})
            for p in planned]
    out = tmp_path / f"{qtype}.gguf"
    write_gguf(refs, out, metadata={"general.architecture": "llama"})
    worst = verify_gguf(planned, out)
    assert 0 < worst[qtype] <= VERIFY_BOUNDS[qtype]
    planned[0].load = lambda x=tensors["blk.0.ffn_up.weight"]: x[::-1]
    with pytest.raises(CheckFailed, match="blk.0.ffn_up.weight"):
        verify_gguf(planned, out)
