"""Mixture-of-experts families (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, gpt-oss) through both conversion paths.

Each tiny random model (transformers' own classes: 2 layers, 4 experts, 2 per token) is converted to GGUF F32 and
checked against the real oracles: llama.cpp's logits against transformers', our Q8_0 / Q4_K_M bytes against
`llama_model_quantize` run on our F32 file, GGUF -> HF -> GGUF bit for bit, and `estimate` against the file sizes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from modelport import families
from modelport.conversion import convert
from modelport.core.dtypes import DTYPES
from modelport.core.errors import UnsupportedError
from modelport.core.tensor import TensorRef
from modelport.estimate import estimate
from modelport.formats.gguf import open_gguf, read_header
from modelport.gguf import imatrix as imx
from modelport.runtime.activations import calibration_text
from tests.conftest import assert_one_line_error
from tests.factory import FAMILIES, TEST_TEXT, make_model
from tests.gguf.llama_activations import llama_cpp_imatrix
from tests.gguf.test_convert import _assert_same_as_llama_quantize, _gguf_logits, _hf_logits, _rel_rms
from tests.gguf.test_imatrix import imatrix_keys, llama_quantize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

MOE = {  # name: (factory arch, tokenizer style, llama.cpp arch)
    "mixtral": ("mixtral", "llama3", "llama"),
    "qwen2_moe": ("qwen2_moe", "qwen2", "qwen2moe"),
    "qwen3_moe": ("qwen3_moe", "qwen2", "qwen3moe"),
    "olmoe": ("olmoe", "gpt2", "olmoe"),
    "gpt_oss": ("gpt_oss", "gpt2", "gpt-oss"),
}


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """name -> (HF folder, its F32 GGUF), made once per module."""
    root = tmp_path_factory.mktemp("moe")
    made: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in made:
            arch, style, _ = MOE[name]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                folder = make_model(root / name, arch, style)
            f32 = root / f"{name}-F32.gguf"
            convert(folder, f32, quant="F32")
            made[name] = folder, f32
        return made[name]
    return get


def test_every_moe_family_is_covered_here():
    moe_families = {cls.hf_architectures[0] for cls in families.REGISTRY if issubclass(cls, families.Experts)}
    assert moe_families == {FAMILIES[arch][1] for arch, _, _ in MOE.values()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MOE))
def test_llama_cpp_logits_match_transformers(moe, name):
    folder, f32 = moe(name)
    meta = read_header(f32).metadata
    arch = MOE[name][2]
    assert meta["general.architecture"] == arch
    assert int(meta[f"{arch}.expert_count"]) == 4 and int(meta[f"{arch}.expert_used_count"]) == 2
    shapes = {t.name: tuple(t.shape) for t in read_header(f32).tensors}
    assert shapes["blk.1.ffn_gate_exps.weight"][0] == 4 and shapes["blk.1.ffn_down_exps.weight"][0] == 4
    assert not any(".experts." in n or n.endswith(("ffn_gate.weight", "ffn_up.weight")) for n in shapes)
    ids = transformers.AutoTokenizer.from_pretrained(folder).encode(TEST_TEXT)[:120]
    ref, got = _hf_logits(folder, ids), _gguf_logits(f32, ids)
    assert _rel_rms(got, ref) <= 2e-3, _rel_rms(got, ref)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MOE))
def test_quantized_bytes_equal_llama_quantize(moe, tmp_path, name):
    folder, f32 = moe(name)
    for ftype in ("Q8_0", "Q4_K_M"):
        ours = tmp_path / f"{ftype}.gguf"
        convert(folder, ours, quant=ftype)
        types = _assert_same_as_llama_quantize(ours, f32, ftype, tmp_path)
        assert types["blk.0.ffn_gate_inp.weight"] == "F32"            # the router is never quantized
        assert types["blk.0.ffn_up_exps.weight"] != "F32"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MOE))
def test_gguf_to_hf_to_gguf_is_bit_exact(moe, tmp_path, cli, name):
    folder, f32 = moe(name)
    back = tmp_path / "back"
    res = cli("convert", f32, back, "--to", "hf", "-q")
    assert res.code == 0, res.stderr
    a = safetensors_numpy.load_file(folder / "model.safetensors")
    b = safetensors_numpy.load_file(back / "model.safetensors")
    assert set(b) == set(a)                    # every expert back under its own name (or gpt-oss's fused tensors)
    for n in a:
        assert a[n].shape == b[n].shape and np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), n
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == json.loads((folder / "config.json").read_text())["architectures"]
    again = tmp_path / "again.gguf"
    res = cli("convert", back, again, "--quant", "F32", "-q")
    assert res.code == 0, res.stderr
    first, second = open_gguf(f32), open_gguf(again)
    try:
        arch = MOE[name][2]
        assert {k: v for k, v in first.metadata.items() if k.startswith(arch)} == \
               {k: v for k, v in second.metadata.items() if k.startswith(arch)}
        assert list(first.tensors) == list(second.tensors)
        for n, ref in first.tensors.items():
            assert bytes(np.asarray(ref.read_raw())) == bytes(np.asarray(second.tensors[n].read_raw())), n
    finally:
        first.close()
        second.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_estimate_equals_the_file_size_and_counts_active_parameters(moe, tmp_path, name):
    folder, f32 = moe(name)
    report = estimate(folder)
    assert report["weights"]["F32"]["bytes"] == f32.stat().st_size
    q4 = tmp_path / "q4.gguf"
    convert(folder, q4, quant="Q4_K_M")
    assert report["weights"]["Q4_K_M"]["bytes"] == q4.stat().st_size
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    ex = report["experts"]
    assert ex["count"] == 4 and ex["used"] == 2 and ex["total_parameters"] == model.num_parameters()
    # one expert's parameters, counted from transformers' own modules: each layer's experts hold 4 slices
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert ex["per_expert_parameters"] * 4 == experts
    assert ex["active_parameters"] == model.num_parameters() - 2 * ex["per_expert_parameters"]
    with open_gguf(q4) as g:           # one expert at Q4_K_M: a quarter of the stacked tensors' bytes
        stacked = sum(r.nbytes for n, r in g.tensors.items() if n.split(".", 2)[-1] in families.EXPERT_KINDS)
    assert ex["per_expert_bytes"]["Q4_K_M"] * 4 == stacked
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((folder / "config.json").read_bytes())
    assert estimate(bare)["weights"]["Q4_K_M"]["tensor_bytes"] == report["weights"]["Q4_K_M"]["tensor_bytes"]


@pytest.mark.parametrize("name", list(MOE))
def test_check_and_estimate_read_the_moe_gguf(moe, cli, name):
    """`check` expects the stacked experts' shapes (expert FFN sizes from the GGUF keys), on both sides."""
    folder, f32 = moe(name)
    for path in (folder, f32):
        res = cli("check", path, "--json")
        assert res.code == 0, res.stdout
    report = estimate(f32)
    assert report["experts"]["count"] == 4 and report["experts"]["used"] == 2
    assert report["weights"]["F32"]["bytes"] == f32.stat().st_size == report["file_size"]


def _ref(name: str, values: np.ndarray, reads: dict) -> TensorRef:
    def load():
        reads[name] = reads.get(name, 0) + 1
        return values
    return TensorRef(name, DTYPES["F32"], values.shape, load)


def test_stacking_reads_each_expert_once_in_expert_order_and_unstacking_reads_the_stack_once():
    fam = families.for_config({"architectures": ["MixtralForCausalLM"], "num_local_experts": 3,
                               "num_experts_per_tok": 2, "num_hidden_layers": 1, "hidden_size": 8,
                               "num_attention_heads": 2, "vocab_size": 10})
    reads: dict[str, int] = {}
    parts = [_ref(f"model.layers.0.block_sparse_moe.experts.{x}.w1.weight", np.full((2, 8), x, np.float32), reads)
             for x in (2, 0, 1)]                                       # any order in the checkpoint
    assert {fam.gguf_name(p.name) for p in parts} == {"blk.0.ffn_gate_exps.weight"}
    stacked = fam.merge_tensors("blk.0.ffn_gate_exps.weight", parts)
    assert stacked.shape == (3, 2, 8) and not reads                   # lazy
    values = stacked.read()
    assert values[:, 0, 0].tolist() == [0, 1, 2] and set(reads.values()) == {1}
    template = fam.hf_name("blk.0.ffn_gate_exps.weight")
    back_reads: dict[str, int] = {}
    split = fam.split_tensor(template, _ref("blk.0.ffn_gate_exps.weight", values, back_reads))
    assert [n for n, _ in split] == [f"model.layers.0.block_sparse_moe.experts.{x}.w1.weight" for x in range(3)]
    assert [int(r.read()[0, 0]) for _, r in split] == [0, 1, 2] and back_reads == {"blk.0.ffn_gate_exps.weight": 1}
    with pytest.raises(Exception, match="lack expert"):
        fam.merge_tensors("blk.0.ffn_gate_exps.weight", parts[:2]).read()


@pytest.mark.slow
def test_converting_holds_about_one_stacked_tensor_not_the_model(tmp_path):
    """Python-side allocations (NumPy's are traced) while a Mixtral with 4 MiB stacked expert tensors streams to
    GGUF: about one stacked tensor, not the 26 MiB of weights (the source is memory-mapped, the writer streams)."""
    import tracemalloc

    import modelport
    from modelport.gguf.convert import hf_to_gguf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = make_model(tmp_path / "big", "mixtral", "gpt2", hidden=256, ffn=1024)
    stacked = 4 * 1024 * 256 * 4
    weights = (folder / "model.safetensors").stat().st_size
    with modelport.open(folder) as source:
        tracemalloc.start()
        try:
            hf_to_gguf(source, tmp_path / "out.gguf", "F32")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert weights > 6 * stacked and peak < 2.5 * stacked, (peak, stacked, weights)


def test_a_missing_expert_is_a_one_line_error_naming_the_model(moe, tmp_path, cli):
    folder, _ = moe("mixtral")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    weights = safetensors_numpy.load_file(folder / "model.safetensors")
    for kind in ("w1", "w2", "w3"):
        del weights[f"model.layers.1.block_sparse_moe.experts.3.{kind}.weight"]
    safetensors_numpy.save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    res = cli("convert", broken, tmp_path / "out.gguf")
    assert_one_line_error(res, "lack expert(s) [3]")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("arch,bad,match", [
    ("Qwen3MoeForCausalLM", dict(norm_topk_prob=False), "norm_topk_prob"),
    ("Qwen2MoeForCausalLM", dict(norm_topk_prob=True), "norm_topk_prob"),
    ("Qwen2MoeForCausalLM", dict(mlp_only_layers=[1]), "dense layers"),
    ("OlmoeForCausalLM", dict(num_key_value_heads=2), "grouped-query"),
    ("GptOssForCausalLM", dict(swiglu_limit=5.0), "swiglu_limit"),
    ("GptOssForCausalLM", dict(layer_types=["full_attention", "full_attention"]), "even layers"),
    ("MixtralForCausalLM", dict(num_experts_per_tok=8), "experts per token"),
])
def test_configs_llama_cpp_cannot_run_are_refused(arch, bad, match):
    config = {"architectures": [arch], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100, "num_experts": 4,
              "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 16, **bad}
    with pytest.raises(UnsupportedError, match=match):
        families.for_config(config).hparams()


def test_unsupported_architecture_names_the_nearest_family(tmp_path, cli):
    folder = tmp_path / "deepseek"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100, "n_routed_experts": 8,
        "n_shared_experts": 2, "num_experts_per_tok": 2}))
    safetensors_numpy.save_file({"model.embed_tokens.weight": np.zeros((100, 64), np.float32)},
                                folder / "model.safetensors")
    res = cli("convert", folder, tmp_path / "out.gguf")
    assert_one_line_error(res, "'DeepseekV2ForCausalLM' is not supported")
    assert "nearest supported family is Qwen2MoeForCausalLM (llama.cpp arch qwen2moe)" in res.stderr
    for arch, near in (("MambaForCausalLM", "Llama"), ("Qwen3NextForCausalLM", "Qwen3Moe"),
                       ("Phi3SmallForCausalLM", "Phi3"), ("OlmoForCausalLM", "Olmo2")):
        config = {"architectures": [arch], **({"num_experts": 8} if "Next" in arch else {})}
        assert families.nearest(config).__name__ == near, arch


def test_inspect_families_lists_what_converts(cli):
    res = cli("inspect", "--families", "--json")
    assert res.code == 0, res.stderr
    rows = {r["family"]: r for r in json.loads(res.stdout)["families"]}
    assert set(rows) == {cls.__name__ for cls in families.REGISTRY}
    assert rows["Mixtral"]["llama_cpp_arch"] == "llama" and rows["Mixtral"]["mixture_of_experts"]
    assert rows["GptOss"]["llama_cpp_arch"] == "gpt-oss" and rows["Qwen2Moe"]["hf_architectures"] == ["Qwen2MoeForCausalLM"]
    assert not rows["Llama"]["mixture_of_experts"]
    supported = {a for r in rows.values() for a in r["hf_architectures"]}
    assert supported == set(families.supported())
    table = cli("inspect", "--families")
    assert table.code == 0 and "qwen3moe" in table.stdout and "Qwen3MoeForCausalLM" in table.stdout


def _mxfp4_checkpoint(folder: Path, dst: Path) -> dict[str, np.ndarray]:
    """gpt-oss as released: the float folder's experts replaced by MXFP4 blocks and scales (random codes, exponents
    2^-8..2^-5), with the quantization_config transformers reads them with."""
    dst.mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    weights = safetensors_numpy.load_file(folder / "model.safetensors")
    rng = np.random.default_rng(0)
    for name in [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        n_expert, n_in, n_out = weights.pop(name).shape             # HF float layout: (experts, in, out)
        weights[f"{name}_blocks"] = rng.integers(0, 256, (n_expert, n_out, n_in // 32, 16), dtype=np.uint8)
        weights[f"{name}_scales"] = rng.integers(119, 123, (n_expert, n_out, n_in // 32), dtype=np.uint8)
    safetensors_numpy.save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(config))
    return weights


@pytest.mark.slow
def test_gpt_oss_mxfp4_experts_are_kept_as_they_are_both_ways(moe, tmp_path, cli):
    from transformers.integrations.mxfp4 import _convert_moe_packed_tensors

    folder, _ = moe("gpt_oss")
    mx = tmp_path / "mxfp4"
    weights = _mxfp4_checkpoint(folder, mx)
    f32, q4 = tmp_path / "f32.gguf", tmp_path / "q4.gguf"
    convert(mx, f32, quant="F32")
    convert(mx, q4, quant="Q4_K_M")
    for path in (f32, q4):                 # MXFP4 whatever the output type, as llama.cpp's converter writes it
        types = {t.name: t.dtype.name for t in read_header(path).tensors}
        assert {types[f"blk.{i}.ffn_{k}_exps.weight"] for i in range(2) for k in ("gate", "up", "down")} == {"MXFP4"}
    # the values: gguf-py's dequantization of our ggml blocks == transformers' dequantization of the checkpoint's
    with open_gguf(f32) as g:
        for i in range(2):
            def hf(proj, i=i):
                return _convert_moe_packed_tensors(torch.tensor(weights[f"model.layers.{i}.mlp.experts.{proj}_blocks"]),
                                                   torch.tensor(weights[f"model.layers.{i}.mlp.experts.{proj}_scales"]),
                                                   dtype=torch.float32).numpy()     # (experts, in, out)
            gate_up = hf("gate_up_proj")
            assert np.array_equal(g.tensors[f"blk.{i}.ffn_gate_exps.weight"].read(), np.swapaxes(gate_up[..., 0::2], 1, 2))
            assert np.array_equal(g.tensors[f"blk.{i}.ffn_up_exps.weight"].read(), np.swapaxes(gate_up[..., 1::2], 1, 2))
            assert np.array_equal(g.tensors[f"blk.{i}.ffn_down_exps.weight"].read(), np.swapaxes(hf("down_proj"), 1, 2))
    # llama.cpp runs it (its MXFP4 kernels quantize activations to Q8_0: within 5 %, not the 0.2 % of F32 weights)
    ids = transformers.AutoTokenizer.from_pretrained(mx).encode(TEST_TEXT)[:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _hf_logits(mx, ids)                                    # transformers dequantizes MXFP4 on CPU
    got = _gguf_logits(f32, ids)
    assert _rel_rms(got, ref) < 5e-2 and (got.argmax(-1) == ref.argmax(-1)).mean() > 0.9
    # estimate knows they stay MXFP4; the way back gives the checkpoint's bytes and its quantization_config
    sizes = estimate(mx)["weights"]
    assert sizes["F32"]["bytes"] == f32.stat().st_size and sizes["Q4_K_M"]["bytes"] == q4.stat().st_size
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((mx / "config.json").read_bytes())
    assert estimate(bare)["weights"]["Q4_K_M"]["tensor_bytes"] == sizes["Q4_K_M"]["tensor_bytes"]
    back = tmp_path / "back"
    res = cli("convert", f32, back, "--to", "hf", "-q")
    assert res.code == 0, res.stderr
    again = safetensors_numpy.load_file(back / "model.safetensors")
    assert set(again) == set(weights)
    for n in weights:
        assert np.array_equal(weights[n].view(np.uint8), again[n].view(np.uint8)), n
    assert json.loads((back / "config.json").read_text())["quantization_config"]["quant_method"] == "mxfp4"
    assert cli("check", mx, "--json").code == 0 and cli("check", back, "--json").code == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixtral", "gpt_oss"])    # concatenated gate|up; interleaved, biased, clamped
def test_imatrix_collects_each_expert_as_llama_cpp_and_quantize_weighs_each_expert_with_its_own(moe, tmp_path, cli,
                                                                                                   name):
    """llama-imatrix's MUL_MAT_ID rows: per expert, the squared inputs of the tokens routed to it and their count
    (llama.cpp's own activations through the eval callback are the oracle); `quantize --imatrix` then gives each
    expert's slice its own weights, as llama_model_quantize does with the same data (the whole file equal)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    folder, f32 = moe(name)
    text = calibration_text()[:8000]
    (tmp_path / "calib.txt").write_text(text, "utf-8")
    imat = tmp_path / "moe.imatrix.gguf"
    res = cli("imatrix", str(folder), "-f", str(tmp_path / "calib.txt"), "-c", "64", "--chunks", "2", "-o", str(imat))
    assert res.code == 0, res.stderr
    m = imx.read(imat)
    theirs = llama_cpp_imatrix(f32, text, 64, 2)
    assert set(theirs) - set(m.entries) == {"blk.0.ffn_gate_inp.weight", "blk.1.ffn_gate_inp.weight"}  # routers
    assert set(m.entries) <= set(theirs)
    for n, e in m.entries.items():
        sums, counts = theirs[n]
        assert e.counts.tolist() == counts.tolist(), n
        np.testing.assert_allclose(e.sums, sums, rtol=2e-3, atol=2e-3 * np.abs(sums).max(), err_msg=n)
    down = m.entries["blk.1.ffn_down_exps.weight"]
    assert down.sums.shape == (4, 512) and down.counts.sum() == 2 * 128 and (down.counts > 0).all()

    ours, ref = tmp_path / "ours.gguf", tmp_path / "llama.gguf"
    assert cli("quantize", str(f32), str(ours), "--type", "IQ4_XS", "--imatrix", str(imat)).code == 0
    weights = {n: m.importance(n).reshape(-1) for n in m.entries}
    assert llama_quantize(llama_cpp, f32, ref, "IQ4_XS", weights, keys=imatrix_keys(imat, m)) == 0
    assert ours.read_bytes() == ref.read_bytes()
    for e in m.entries.values():       # the same counts for every expert: only the per-expert sums set them apart
        e.sums[:] = e.sums.mean(axis=0) if len(e.counts) > 1 else e.sums
        e.counts[:] = int(e.counts.mean()) if len(e.counts) > 1 else e.counts
    pooled = imx.write(m, tmp_path / "pooled.imatrix.gguf")
    assert cli("quantize", str(f32), str(tmp_path / "pooled.gguf"), "--type", "IQ4_XS", "--imatrix", str(pooled)).code == 0
    a, b = open_gguf(ours), open_gguf(tmp_path / "pooled.gguf")
    try:
        assert bytes(np.asarray(a.tensors["blk.0.ffn_down_exps.weight"].read_raw())) != \
            bytes(np.asarray(b.tensors["blk.0.ffn_down_exps.weight"].read_raw()))
        assert bytes(np.asarray(a.tensors["blk.0.attn_q.weight"].read_raw())) == \
            bytes(np.asarray(b.tensors["blk.0.attn_q.weight"].read_raw()))
    finally:
        a.close()
        b.close()
