"""The engine interface on a tiny random llama in transformers; transformers itself is the oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modelport import runtime
from modelport.core.errors import FormatError, UnsupportedError
from modelport.runtime import Sampler, Sampling, TextStream
from modelport.runtime.evaluate import compare, log_softmax, perplexity

from .conftest import make_model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(tiny):
    with runtime.load(tiny) as eng:
        yield eng


@pytest.fixture(scope="module")
def oracle(tiny):
    return (AutoModelForCausalLM.from_pretrained(str(tiny), local_files_only=True, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(tiny), local_files_only=True))


def test_picks_transformers_for_a_folder(engine, oracle):
    model, tok = oracle
    assert engine.name == "transformers" and engine.n_vocab == model.config.vocab_size
    assert engine.n_ctx == model.config.max_position_embeddings
    assert engine.stop_ids == {tok.eos_token_id}
    ids = engine.chat_ids(QUESTION)
    assert ids == list(tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=False))


def test_greedy_matches_transformers_generate(engine, oracle):
    model, _ = oracle
    ids = engine.chat_ids(QUESTION)
    ours = engine.complete(ids, max_tokens=24, ignore_eos=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert ours.tokens == out[0, len(ids):].tolist()
    assert ours.stop_reason == "length" and ours.prompt_tokens == len(ids)


def test_logits_and_prefix_reuse(engine, oracle):
    model, _ = oracle
    ids = engine.chat_ids(QUESTION)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(engine.logits(ids), expected, rtol=1e-4, atol=1e-4)
    # A second turn that shares the prompt as prefix: the cached part is reused, the logits are the same.
    engine.prefill(ids)
    longer = ids + engine.tokenize("Paris<|im_end|>\n")
    reused = engine.prefill(longer)
    with torch.no_grad():
        fresh = model(torch.tensor([longer])).logits[0, -1].numpy()
    np.testing.assert_allclose(reused, fresh, rtol=1e-4, atol=1e-4)


def test_streaming_pieces_add_up_and_arrive_early(engine, oracle):
    _, tok = oracle
    seen_at = []
    pieces = []
    result_holder = {}

    def on_text(piece):
        pieces.append(piece)
        seen_at.append(len(result_holder["r"].tokens) if "r" in result_holder else None)

    ids = engine.chat_ids(QUESTION)
    # Drive generate directly to see when pieces come out relative to tokens.
    from modelport.runtime.base import Generation
    result = Generation()
    result_holder["r"] = result
    stream = TextStream(engine.detokenize)
    for token in engine.generate(ids, max_tokens=30, result=result, ignore_eos=True,
                                 sampling=Sampling(temperature=0.8, seed=3)):
        piece = stream.push(token)
        if piece:
            on_text(piece)
    tail = stream.flush()
    if tail:
        on_text(tail)
    assert "".join(pieces) == tok.decode(result.tokens, skip_special_tokens=True)
    assert len(pieces) > 3 and seen_at[0] < len(result.tokens)      # text came out while generating


def test_stream_never_splits_utf8():
    tok_bytes = {1: b"caf", 2: "é".encode()[:1], 3: "é".encode()[1:], 4: " 東".encode()[:2], 5: " 東".encode()[2:]}

    def detok(ids):
        return b"".join(tok_bytes[i] for i in ids).decode("utf-8", errors="replace")

    stream = TextStream(detok)
    out = [stream.push(i) for i in (1, 2, 3, 4, 5)]
    assert out == ["caf", "", "é", "", " 東"] and stream.flush() == ""


def test_stop_tokens(engine):
    ids = engine.chat_ids(QUESTION)
    free = engine.complete(ids, max_tokens=20, ignore_eos=True).tokens
    k = next(i for i in range(3, 20) if free[i] not in free[:i])
    stopped = engine.complete(ids, max_tokens=20, stop_ids={free[k]})
    assert stopped.tokens == free[:k] and stopped.stop_reason == "stop"


def test_seeded_sampling_is_reproducible(engine):
    ids = engine.chat_ids(QUESTION)
    settings = dict(max_tokens=16, ignore_eos=True)
    a = engine.complete(ids, sampling=Sampling(temperature=1.0, top_p=0.95, seed=7), **settings).tokens
    b = engine.complete(ids, sampling=Sampling(temperature=1.0, top_p=0.95, seed=7), **settings).tokens
    c = engine.complete(ids, sampling=Sampling(temperature=1.0, top_p=0.95, seed=8), **settings).tokens
    assert a == b and a != c


def test_sampler_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    sampler = Sampler(Sampling(temperature=1.0, top_p=0.8, seed=1))
    draws = np.bincount([sampler(logits) for _ in range(20000)], minlength=5) / 20000
    # nucleus 0.8: {0.5, 0.25, 0.15} (0.75 < 0.8), renormalised over 0.9
    np.testing.assert_allclose(draws, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0, 0], atol=0.015)
    sampler = Sampler(Sampling(temperature=2.0, top_k=2, seed=1))
    draws = np.bincount([sampler(logits) for _ in range(20000)], minlength=5) / 20000
    p = np.sqrt([0.5, 0.25])
    np.testing.assert_allclose(draws[:2], p / p.sum(), atol=0.015)
    assert draws[2:].sum() == 0
    assert Sampler(Sampling())(logits) == 0
    with pytest.raises(UnsupportedError):
        Sampling(top_p=0)


def test_pytorch_file_loads_without_unpickling(tmp_path, tiny, engine):
    # A .bin checkpoint beside a config: read by modelport's pickle-free reader, same model, same tokens.
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((tiny / name).read_bytes())
    model = AutoModelForCausalLM.from_pretrained(str(tiny), local_files_only=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    ids = engine.chat_ids(QUESTION)
    with runtime.load(folder / "pytorch_model.bin") as eng:
        assert eng.complete(ids, max_tokens=12, ignore_eos=True).tokens == \
            engine.complete(ids, max_tokens=12, ignore_eos=True).tokens


def test_weights_without_config_are_refused(tmp_path, tiny):
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    with pytest.raises(FormatError, match="config.json"):
        runtime.load(lone / "model.safetensors")
    with pytest.raises(UnsupportedError, match="llama.cpp runs GGUF"):
        runtime.load(tiny, engine="llama")
    with pytest.raises(UnsupportedError, match="onnxruntime runs ONNX exports, not safetensors"):
        runtime.load(tiny, engine="onnx")
    with pytest.raises(UnsupportedError, match="unknown engine"):
        runtime.load(tiny, engine="tensorrt")


def test_compare_same_and_different(engine, tmp_path):
    text = "The capital of France is Paris. Tell me a story about a dragon and a knight."
    same = compare(engine, engine, text)
    assert same.argmax_agreement == 1.0 and same.mean_kl < 1e-9 and same.top1_prob_gap < 1e-6
    other_dir = make_model(tmp_path / "other", seed=1)
    with runtime.load(other_dir) as other:
        diff = compare(engine, other, text)
        # Oracle: the same quantities straight from the two logits tables.
        ids = engine.tokenize(text, add_special=True)
        pa, pb = log_softmax(engine.logits(ids)), log_softmax(other.logits(ids))
        assert diff.argmax_agreement == pytest.approx(float((pa.argmax(1) == pb.argmax(1)).mean()))
        assert diff.mean_kl == pytest.approx(float((np.exp(pa) * (pa - pb)).sum(1).mean()), rel=1e-6)
        assert diff.argmax_agreement < 1.0 and diff.mean_kl > 0.01
        nll = -np.mean([pa[i, ids[i + 1]] for i in range(len(ids) - 1)])
        assert diff.perplexity_a == pytest.approx(math.exp(nll), rel=1e-6)


def test_compare_refuses_different_tokenizers(engine, tmp_path):
    folder = make_model(tmp_path / "vocab")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    by_id = {v: k for k, v in vocab.items()}
    a, b = by_id[300], by_id[301]
    vocab[a], vocab[b] = 301, 300           # same size, two entries swapped
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    text = engine.detokenize([300, 301]) + " Paris"
    with runtime.load(folder) as other:
        assert other.tokenize(text) != engine.tokenize(text)
        with pytest.raises(UnsupportedError, match="different ids"):
            compare(engine, other, text)


def test_perplexity_follows_llama_cpp_method(engine, oracle):
    model, tok = oracle
    text = " ".join(["The capital of France is Paris. The capital of Italy is Rome. Tell me a story."] * 12)
    n_ctx = 32
    result = perplexity(engine, text, n_ctx)
    ids = tok.encode(text)        # the tokenizer's own specials (none here)
    nll, count = 0.0, 0
    for w in range(len(ids) // n_ctx):
        window = ids[w * n_ctx:(w + 1) * n_ctx]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1)
        for j in range(n_ctx // 2, n_ctx - 1):
            nll -= float(logp[j, window[j + 1]])
            count += 1
    assert result.windows == len(ids) // n_ctx and result.scored_tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    with pytest.raises(UnsupportedError, match="needs at least"):
        perplexity(engine, "too short", n_ctx)
