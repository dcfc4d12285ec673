"""The onnxruntime engine on folders written by `modelport convert --to onnx`: the tiny llama exported once, then
run, chat, compare and perplexity through it with the transformers engine on the source folder as the oracle;
the real SmolLM2 (GGUF → ONNX) answers the capital of France with the transformers engine's greedy tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

import modelport
from modelport import runtime
from modelport.core.errors import UnsupportedError
from modelport.samples import smollm2_gguf
from tests.conftest import assert_one_line_error

from .conftest import make_model, run_cli

QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """The tiny llama exported with its int8 graph beside (not verified here: tests/onnx proves the exporter)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    modelport.convert(tiny, out, to="onnx", verify=False, quantize="int8")
    return out


@pytest.fixture(scope="module")
def engines(tiny, exported):
    with runtime.load(exported) as onnx, runtime.load(tiny) as hf:
        yield onnx, hf


def test_an_export_folder_runs_in_onnxruntime_with_the_sources_text_side(engines):
    onnx, hf = engines
    assert onnx.name == "onnxruntime" and hf.name == "transformers"
    assert (onnx.n_vocab, onnx.n_ctx, onnx.stop_ids, onnx.add_bos) == (hf.n_vocab, hf.n_ctx, hf.stop_ids, hf.add_bos)
    assert onnx.chat_ids(MESSAGES) == hf.chat_ids(MESSAGES)
    assert onnx.vocabulary() == hf.vocabulary()


def test_logits_and_the_cache_cut_back_for_a_shared_prefix(engines):
    onnx, hf = engines
    ids = onnx.chat_ids(MESSAGES)
    np.testing.assert_allclose(onnx.logits(ids), hf.logits(ids), atol=1e-4, rtol=0)
    onnx.prefill(ids + onnx.tokenize("Rome<|im_end|>\n"))      # a first answer, then a second one after the prompt:
    other = ids + onnx.tokenize("Paris, of course.")           # the cache is cut back to the prompt, not rebuilt
    np.testing.assert_allclose(onnx.prefill(other), hf.logits(other)[-1], atol=1e-4, rtol=0)
    assert onnx.prefill(ids).shape == (onnx.n_vocab,)


def test_greedy_run_through_the_cli_equals_the_transformers_engine(tiny, exported):
    args = ("-p", QUESTION, "--max-tokens", "24", "--ignore-eos", "--json")
    ours = json.loads(run_cli("run", exported, *args).stdout)
    reference = json.loads(run_cli("run", tiny, *args).stdout)
    assert ours["engine"] == "onnxruntime" and reference["engine"] == "transformers"
    assert ours["tokens"] == reference["tokens"] and len(ours["tokens"]) == 24
    assert ours["text"] == reference["text"]


def test_seeded_sampling_and_a_two_turn_chat_match_transformers(engines):
    onnx, hf = engines
    sampling = runtime.Sampling(temperature=0.9, top_p=0.95, seed=5)
    answers = []
    for engine in (onnx, hf):
        chat = runtime.Conversation(engine, settings=runtime.GenerationSettings(max_tokens=12, sampling=sampling))
        answers.append([chat.send(QUESTION).text, chat.send("And of Italy?").text])
    assert answers[0] == answers[1] and all(answers[0])


def test_chat_cli_on_the_export_answers_as_transformers(tiny, exported):
    turns = f"{QUESTION}\nAnd of Italy?\n/reset\n{QUESTION}\n"
    ours = run_cli("chat", exported, "--max-tokens", "8", stdin=turns)
    reference = run_cli("chat", tiny, "--max-tokens", "8", stdin=turns)
    assert ours.code == 0, ours.stderr
    assert ours.stdout == reference.stdout and len(ours.stdout.splitlines()) >= 3


def test_compare_and_perplexity_take_the_export(tiny, exported, tmp_path):
    report = json.loads(run_cli("compare", tiny, exported, "--engine-a", "hf", "--tokens", "48", "--json").stdout)
    assert report["engine_b"] == "onnxruntime" and report["argmax_agreement"] == 1.0 and report["mean_kl"] < 1e-6
    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris. Tell me a story about a dragon. " * 12)
    ours = json.loads(run_cli("perplexity", exported, "--text", text, "--ctx", "32", "--json").stdout)
    reference = json.loads(run_cli("perplexity", tiny, "--text", text, "--ctx", "32", "--json").stdout)
    assert ours["engine"] == "onnxruntime" and ours["windows"] == reference["windows"] >= 2
    assert ours["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-4)


def test_the_int8_graph_is_picked_by_its_path_and_compared(exported):
    report = json.loads(run_cli("compare", exported, exported / "model_int8.onnx", "--tokens", "48", "--json").stdout)
    assert report["engine_a"] == report["engine_b"] == "onnxruntime"
    assert 0 < report["mean_kl"] and report["argmax_agreement"] > 0.5   # quantized: close, not equal
    answer = run_cli("run", exported / "model_int8.onnx", "-p", QUESTION, "-n", "4", "--ignore-eos", "--json")
    assert answer.code == 0 and json.loads(answer.stdout)["completion_tokens"] == 4


def test_what_onnxruntime_cannot_run_is_one_line(tiny, exported, tmp_path):
    assert_one_line_error(run_cli("run", tiny, "-p", "x", "--engine", "onnx"), "onnxruntime runs ONNX exports",
                   "--to onnx")
    assert_one_line_error(run_cli("run", exported, "-p", "x", "--ctx", "1000"), "larger than the 256 positions")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in exported.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx.data").write_bytes(b"\0" * 64)                    # weights cut short
    result = run_cli("run", broken, "-p", "x")
    assert result.code in (1, 2) and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(UnsupportedError, match="unknown engine"):
        runtime.load(exported, engine="tensorrt")


def test_check_of_an_export_is_clean(exported):
    """The graph's initializers carry the exporter's names and constants: not a family's weights gone wrong."""
    result = run_cli("check", exported)
    assert result.code == 0 and "nothing wrong" in result.stdout, result.stdout


def test_another_model_is_not_the_same_graph(tmp_path, exported):
    """The oracle can tell: a different random llama disagrees with the export (the comparisons above can fail)."""
    other = make_model(tmp_path / "other", seed=1)
    report = json.loads(run_cli("compare", other, exported, "--tokens", "32", "--json").stdout)
    assert report["argmax_agreement"] < 0.9 and report["mean_kl"] > 0.01


@pytest.mark.long
def test_real_smollm2_exported_from_gguf_answers_paris(tmp_path_factory):
    """SmolLM2-135M-Instruct Q4_1 GGUF → ONNX (through GGUF → HF, dequantized), answered in onnxruntime; the
    transformers engine on the same GGUF (dequantized the same way) gives the same greedy tokens."""
    out = tmp_path_factory.mktemp("smollm2") / "onnx"
    modelport.convert(smollm2_gguf(), out, to="onnx", verify=False)
    prompt = "What is the capital of France? Answer in one sentence."
    ours = json.loads(run_cli("run", out, "-p", prompt, "--max-tokens", "24", "--json").stdout)
    reference = json.loads(run_cli("run", smollm2_gguf(), "--engine", "hf", "-p", prompt, "--max-tokens", "24",
                                   "--json").stdout)
    assert ours["engine"] == "onnxruntime" and "Paris" in ours["text"]
    assert ours["tokens"] == reference["tokens"], (ours["text"], reference["text"])
