"""modelport.estimate against published llama.cpp sizes, real GGUF files written by gguf-py, real transformers
models (tensor layout from a bare config) and peft's own trainable-parameter count."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import peft
import pytest

from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gq
from modelport.estimate import (
    ACTIVATION_PEAK,
    LORA_TARGETS,
    ROWS,
    TRAINING_RUNTIME_BYTES,
    estimate,
    load_view,
    lora_parameter_count,
    tensors_from_config,
    training_memory,
)
from modelport.gguf import quants
from modelport.gguf.mixes import FTYPES, ModelShape, choose_types
from tests.conftest import assert_one_line_error
from tests.factory import long_rope, make_model, random_model, save_model

# Llama-2-7B's published hyperparameters (meta-llama/Llama-2-7b-hf config.json).
LLAMA2_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16"}


@pytest.fixture
def llama2_config(tmp_path):
    path = tmp_path / "llama-2-7b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA2_7B))
    return path


def test_llama2_7b_sizes_match_llama_cpp(llama2_config):
    r = estimate(llama2_config)
    assert r["source"] == "config"
    assert r["parameters"] == 6_738_415_616                    # Llama-2-7B's published parameter count
    w = {k: v["bytes"] for k, v in r["weights"].items()}
    # Sizes of the llama-2-7b GGUFs llama.cpp writes (TheBloke/Llama-2-7B-GGUF file list; llama.cpp's own log
    # says "file size = 3.80 GiB (4.84 BPW)" for Q4_K_M).
    for ftype, published in (("F16", 13.5e9), ("Q8_0", 7.16e9), ("Q4_K_M", 4.08e9), ("Q6_K", 5.53e9),
                             ("Q5_K_M", 4.78e9), ("Q4_0", 3.83e9), ("Q3_K_M", 3.30e9)):
        assert abs(w[ftype] / published - 1) < 0.02, (ftype, w[ftype], published)
    assert round(w["Q4_K_M"] / 2**30, 2) == 3.80
    assert r["weights"]["Q4_K_M"]["bits_per_weight"] == pytest.approx(4.84, abs=0.01)
    assert r["weights"]["Q4_K_M"]["tensor_types"] == {"Q4_K": 193, "F32": 65, "Q6_K": 33}
    # llama.cpp: "KV self size = 2048.00 MiB, K (f16): 1024.00 MiB, V (f16): 1024.00 MiB" at n_ctx 4096.
    assert r["inference"]["kv_cache"] == 2048 * 2**20
    assert estimate(llama2_config, kv_type="q8_0", ctx=4096)["inference"]["kv_cache"] == 1088 * 2**20
    assert estimate(llama2_config, ctx=512, batch=4)["inference"]["kv_cache"] == 1024 * 2**20


def test_gqa_kv_cache(tmp_path):
    cfg = dict(LLAMA2_7B, num_key_value_heads=8, intermediate_size=14336, vocab_size=128256)   # Llama-3-8B shape
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = estimate(tmp_path / "config.json", ctx=8192)
    assert r["inference"]["kv_cache"] == 1024 * 2**20             # llama.cpp: 1024 MiB for Llama-3-8B at 8192
    assert abs(r["weights"]["Q4_K_M"]["bytes"] / 2**30 / 4.58 - 1) < 0.02   # quantize README: 4.58 GiB


def test_device_fit(llama2_config):
    best = {d: estimate(llama2_config, device=d)["device"]["best"]
            for d in ("rtx3090", "a100-80gb", "cpu-16gb", "phone-8gb")}
    assert best == {"rtx3090": "F16", "a100-80gb": "F16", "cpu-16gb": "Q8_0", "phone-8gb": None}
    r = estimate(llama2_config, memory="8GB")
    assert r["device"]["best"] == "Q5_K_M" and r["device"]["usable"] == 8 * 10**9
    assert r["inference"]["total"]["Q5_K_M"] <= 8e9 < r["inference"]["total"]["Q6_K"]
    assert estimate(llama2_config, memory="4.3GB", ctx=512)["device"]["best"] == "Q4_0"


# ------------------------------------------------------------------------------ GGUF files written by gguf-py

N_LAYER, HIDDEN, N_HEAD, N_KV, FFN, VOCAB = 2, 256, 4, 2, 320, 384    # FFN 320: rows that force fallbacks


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    kv = HIDDEN // N_HEAD * N_KV

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    t = {"token_embd.weight": w(VOCAB, HIDDEN), "output_norm.weight": np.ones(HIDDEN, np.float32),
         "output.weight": w(VOCAB, HIDDEN)}
    for i in range(N_LAYER):
        p = f"blk.{i}."
        t |= {p + "attn_norm.weight": np.ones(HIDDEN, np.float32), p + "attn_q.weight": w(HIDDEN, HIDDEN),
              p + "attn_k.weight": w(kv, HIDDEN), p + "attn_v.weight": w(kv, HIDDEN),
              p + "attn_output.weight": w(HIDDEN, HIDDEN), p + "ffn_norm.weight": np.ones(HIDDEN, np.float32),
              p + "ffn_gate.weight": w(FFN, HIDDEN), p + "ffn_up.weight": w(FFN, HIDDEN),
              p + "ffn_down.weight": w(HIDDEN, FFN)}
    return t


def _encode(arr, qtype):
    """Bytes of one tensor: gguf-py's quantizers where it has them, modelport's K-quant kernels otherwise."""
    if qtype in ("F32", "F16"):
        return arr.astype(np.float32 if qtype == "F32" else np.float16)
    if qtype in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        return gq.quantize(arr, GGMLQuantizationType[qtype])
    return quants.quantize(arr, qtype)


def _write_gguf(path, tensors, ftype):
    """A llama GGUF as llama-quantize lays it out: per-tensor types from the mix rules, 32-byte alignment."""
    types = choose_types({n: (a.shape, "F32") for n, a in tensors.items()}, ftype, ModelShape(N_LAYER, N_HEAD, N_KV))
    wr = GGUFWriter(str(path), "llama")
    wr.add_context_length(256)
    wr.add_embedding_length(HIDDEN)
    wr.add_block_count(N_LAYER)
    wr.add_feed_forward_length(FFN)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_KV)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_dimension_count(HIDDEN // N_HEAD)
    wr.add_file_type(FTYPES[ftype])
    wr.add_quantization_version(2)
    wr.add_tokenizer_model("gpt2")
    wr.add_token_list([f"tok{i}" for i in range(VOCAB)])
    wr.add_token_types([1] * VOCAB)
    for name in types:                                      # llama-quantize's order
        data = _encode(tensors[name], types[name])
        if data.dtype == np.uint8:
            wr.add_tensor(name, data, raw_dtype=GGMLQuantizationType[types[name]])
        else:
            wr.add_tensor(name, data)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return types


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    tensors = _tensors()
    files = {}
    for ftype in ROWS:
        files[ftype] = folder / f"tiny-{ftype}.gguf"
        _write_gguf(files[ftype], tensors, ftype)
    return files


def test_estimate_matches_gguf_files_within_1_percent(gguf_files):
    from_f32 = estimate(gguf_files["F32"])
    assert from_f32["source"] == "gguf" and from_f32["file_type"] == "ALL_F32"
    assert from_f32["parameters"] == sum(math.prod(a.shape) for a in _tensors().values())
    for ftype, path in gguf_files.items():
        size = path.stat().st_size
        predicted = from_f32["weights"][ftype]["bytes"]
        assert abs(predicted / size - 1) < 0.01, (ftype, predicted, size)
        own = estimate(path)
        assert abs(own["weights"][ftype]["bytes"] / size - 1) < 0.01, (ftype, own["weights"][ftype]["bytes"], size)
        # The tensor types the estimate counts are the ones gguf-py reads back from the file.
        counts: dict[str, int] = {}
        for t in GGUFReader(path).tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        assert from_f32["weights"][ftype]["tensor_types"] == counts, ftype


def test_gguf_tensor_data_is_exact(gguf_files):
    """Tensor bytes (block geometry and alignment padding) are exact; only the header of another file type varies."""
    for ftype, path in gguf_files.items():
        reader = GGUFReader(path)
        data = path.stat().st_size - reader.data_offset
        assert estimate(gguf_files["F32"])["weights"][ftype]["tensor_bytes"] == data, ftype


def test_gguf_kv_cache_from_metadata(gguf_files):
    r = estimate(gguf_files["Q4_K_M"], ctx=100)
    hd = HIDDEN // N_HEAD
    assert r["hyperparameters"]["n_head_kv"] == N_KV and r["hyperparameters"]["head_dim"] == hd
    assert r["inference"]["kv_cache"] == 2 * N_LAYER * N_KV * hd * 2 * 100


# ------------------------------------------------------------------------------ GGUF files from modelport's converter

@pytest.mark.parametrize("arch,style,long", [("llama", "spm", False), ("qwen2", "llama3", False), ("gpt2", "gpt2", False),
                                             ("qwen3", "qwen2", False), ("gemma3", "gemma", False), ("smollm3", "llama3", False),
                                             ("phi3", "spm", True), ("olmo2", "gpt2", False)])
def test_estimate_matches_modelports_converter(tmp_path, arch, style, long):
    """HF folder -> GGUF at every row of the table, by modelport's converter (K-mixes included): the estimate made
    from the HF folder before converting is within 1 % of each file (header from the converter's own metadata plan)."""
    import modelport
    from modelport.gguf.convert import hf_to_gguf

    opts = dict(rope_scaling=long_rope(64), max_positions=4096) if long else {}   # + the rope factor tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = make_model(tmp_path / arch, arch, style, hidden=256, ffn=512, **opts)
    predicted = estimate(folder)["weights"]
    for ftype in ROWS:
        out = tmp_path / f"{arch}-{ftype}.gguf"
        with modelport.open(folder) as source:
            hf_to_gguf(source, out, ftype)
        size = out.stat().st_size
        assert abs(predicted[ftype]["bytes"] / size - 1) < 0.01, (ftype, predicted[ftype]["bytes"], size)
        assert predicted[ftype]["tensor_bytes"] == size - GGUFReader(out).data_offset, ftype


def test_olmo2_estimate_is_the_converted_file_to_the_byte(tmp_path):
    """A family added as one file (OLMo 2) is laid out, typed and sized exactly as the converter writes it."""
    import modelport
    from modelport.gguf.convert import hf_to_gguf
    from tests.factory import make_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = make_model(tmp_path / "olmo2", "olmo2", "gpt2", hidden=256, ffn=512)
    predicted = estimate(folder)["weights"]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_bytes((folder / "config.json").read_bytes())
    from_config = estimate(bare)["weights"]
    for ftype in ("F32", "F16", "Q8_0", "Q4_K_M", "Q2_K"):
        out = tmp_path / f"{ftype}.gguf"
        with modelport.open(folder) as source:
            hf_to_gguf(source, out, ftype)
        assert predicted[ftype]["bytes"] == out.stat().st_size, ftype
        assert from_config[ftype]["tensor_bytes"] == predicted[ftype]["tensor_bytes"], ftype


def test_estimate_matches_modelport_quantize(tmp_path):
    """`modelport quantize f32.gguf out.gguf --type T`: the estimate of the F32 GGUF predicts every output."""
    import modelport
    from modelport.conversion.gguf_requantize import requantize
    from modelport.gguf.convert import hf_to_gguf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = make_model(tmp_path / "llama", "llama", "spm", hidden=256, ffn=512)
    with modelport.open(folder) as source:
        hf_to_gguf(source, tmp_path / "f32.gguf", "F32")
    predicted = estimate(tmp_path / "f32.gguf")["weights"]
    for ftype in ROWS[1:]:
        out = tmp_path / f"{ftype}.gguf"
        requantize(tmp_path / "f32.gguf", out, ftype, modelfile=False)
        assert abs(predicted[ftype]["bytes"] / out.stat().st_size - 1) < 0.01, ftype


# ------------------------------------------------------------------------------ transformers models and peft

def _tiny(tmp_path, arch, name, **extra):
    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300)
    if arch == "gpt2":
        kw = dict(vocab_size=300, bos_token_id=0, eos_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = random_model(arch, **{**kw, **extra})
        return model, save_model(model, tmp_path / name)


FAMILIES = {   # name -> (tests.factory family, config fields)
    "llama": ("llama", {}),
    "llama-tied-bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=32)),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=32)),
    "gemma2": ("gemma2", dict(head_dim=16)),
    "gemma3": ("gemma3", dict(head_dim=16, num_hidden_layers=6)),
    "smollm3": ("smollm3", dict(pad_token_id=0, num_hidden_layers=4)),
    "phi3": ("phi3", dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)),
    "mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    "llama3.1-rope": ("llama", dict(max_position_embeddings=16384, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=3, n_head=4, n_positions=128)),
    "olmo2": ("olmo2", dict(pad_token_id=0)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_config_alone_gives_the_real_tensors(tmp_path, family):
    arch, extra = FAMILIES[family]
    model, folder = _tiny(tmp_path, arch, family, **extra)
    real = load_view(folder)                        # the saved weights, renamed to GGUF by gguf-py's name map
    synthesized = tensors_from_config(json.loads((folder / "config.json").read_text()))
    assert real.kind == "weights" and real.tensors == synthesized
    assert real.parameter_count == model.num_parameters()
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_bytes((folder / "config.json").read_bytes())
    bare, full = estimate(tmp_path / "bare")["weights"], estimate(folder)["weights"]
    for ftype in ROWS:
        assert bare[ftype]["tensor_bytes"] == full[ftype]["tensor_bytes"], ftype
        assert bare[ftype]["tensor_types"] == full[ftype]["tensor_types"], ftype


@pytest.mark.parametrize("targets,r", [(list(LORA_TARGETS), 8), (["q_proj", "v_proj"], 16), ("all-linear", 4)])
def test_lora_trainable_parameters_equal_peft(tmp_path, targets, r):
    model, folder = _tiny(tmp_path, "llama", "llama")
    base = model.num_parameters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules=targets))
    trainable, total = wrapped.get_nb_trainable_parameters()
    names = [targets] if isinstance(targets, str) else targets
    for view in (load_view(folder), load_view(folder / "config.json")):
        assert lora_parameter_count(view, r, names) == trainable
        for method in ("lora", "qlora"):
            t = training_memory(view, method, lora_r=r, targets=names)
            assert (t["trainable_parameters"], t["total_parameters"]) == (trainable, total)
    full = training_memory(load_view(folder), "full")
    assert full["trainable_parameters"] == full["total_parameters"] == base


def test_training_memory_parts(llama2_config):
    view = load_view(llama2_config)
    p = view.parameter_count
    full = training_memory(view, "full", optimizer="adamw")           # bf16 autocast, as on a GPU
    assert (full["weights"], full["gradients"], full["optimizer_states"]) == (6 * p, 4 * p, 8 * p)   # + bf16 copies
    assert training_memory(view, "full", bf16=False)["weights"] == 4 * p                            # fp32 masters only
    assert training_memory(view, "full", optimizer="adamw8bit")["optimizer_states"] == 2 * p
    assert training_memory(view, "full", optimizer="sgd")["optimizer_states"] == 0
    lora = training_memory(view, "lora", lora_r=8)
    assert lora["trainable_parameters"] == 19_988_480            # peft's figure for Llama-2-7B, r=8, 7 modules
    assert lora["weights"] == 2 * p and lora["lora_parameters"] == 4 * lora["trainable_parameters"]
    fp32 = training_memory(view, "lora", lora_r=8, bf16=False)   # a CPU without fast bf16: fp32 base, fp32 activations
    logits = ACTIVATION_PEAK * 16 * 32000 * 512                  # fp32 in both: only the layers' values double
    assert fp32["weights"] == 4 * p and abs(fp32["activations"] - (2 * lora["activations"] - logits)) < 2
    qlora = training_memory(view, "qlora", lora_r=8)
    assert 4.2e9 < qlora["weights"] < 4.6e9                      # NF4 + double quant; embeddings, lm_head fp32
    assert lora["runtime"] == TRAINING_RUNTIME_BYTES and lora["total"] > lora["weights"] + lora["activations"]
    ckpt = training_memory(view, "lora", grad_checkpointing=True)
    assert ckpt["activations"] < lora["activations"]
    assert training_memory(view, "lora", seq_len=1024)["activations"] == 2 * lora["activations"]
    # The guide's hardware rule: LoRA on one 24 GB GPU, QLoRA on a 10 GB GPU, full needs several A100s.
    assert lora["total"] < 24e9 and qlora["total"] < 10e9 and full["total"] > 80e9


# ------------------------------------------------------------------------------ CLI

def test_cli_json_and_table(llama2_config, cli):
    result = cli("estimate", llama2_config, "--json", "--method", "qlora", "--device", "rtx3090")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["weights"]["Q4_K_M"]["bytes"] == estimate(llama2_config)["weights"]["Q4_K_M"]["bytes"]
    assert data["training"]["method"] == "qlora" and data["device"]["training_fits"] is True
    result = cli("estimate", llama2_config, "--memory", "8GB")
    assert result.code == 0 and "Q4_K_M" in result.stdout and "best that fits: Q5_K_M" in result.stdout


def test_cli_errors(tmp_path, llama2_config, cli):
    assert_one_line_error(cli("estimate", llama2_config, "--device", "toaster"), "unknown device")
    assert_one_line_error(cli("estimate", llama2_config, "--kv-type", "q9"), "KV cache type")
    assert_one_line_error(cli("estimate", llama2_config, "--method", "dpo"), "training method")
    assert_one_line_error(cli("estimate", llama2_config, "--memory", "lots"), "size")
    (tmp_path / "bert.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "vocab_size": 10}))
    assert_one_line_error(cli("estimate", tmp_path / "bert.json"), "bert.json", "give the weights")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert_one_line_error(cli("estimate", tmp_path / "list.json"), "list.json", "JSON object")
