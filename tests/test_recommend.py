"""modelport.recommend: the guide's decision tree (§6) on real inputs: Llama-2-7B's config, a tiny transformers
model saved by transformers, and GGUF files written by gguf-py."""

from __future__ import annotations

import json
import shlex
import warnings

import numpy as np
import pytest

from gguf import GGUFWriter
from modelport.estimate import estimate
from modelport.recommend import GOALS, recommend
from tests.conftest import assert_one_line_error
from tests.factory import random_model, save_model, save_tokenizer, train_tokenizer
from tests.test_estimate import LLAMA2_7B, _tensors, _write_gguf, llama2_config  # noqa: F401 - a fixture


@pytest.fixture
def tiny_hf(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = random_model("llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=300)
        folder = save_model(model, tmp_path / "tiny")
    save_tokenizer(train_tokenizer("gpt2", vocab_size=300), "gpt2", folder)     # what a GGUF command needs
    return folder


def test_no_command_that_would_fail_without_a_tokenizer(tiny_hf):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_hf / name).unlink()
    cpu = recommend(tiny_hf, "cpu")
    assert cpu["command"] is None and "tokenizer" in cpu["missing"] and "tokenizer" in " ".join(cpu["why"])


def test_cpu_picks_the_best_quantization_that_fits(llama2_config):
    sizes = estimate(llama2_config)
    r = recommend(llama2_config, "cpu", memory="8GB")
    assert (r["format"], r["precision"]) == ("GGUF", "Q5_K_M") and r["fits"] is True
    assert r["size"] == sizes["weights"]["Q5_K_M"]["bytes"] and r["guide_says"] == "GGUF"
    assert r["memory_needed"] == sizes["inference"]["total"]["Q5_K_M"] <= 8e9
    assert r["command"] is None and "no weights" in " ".join(r["why"])     # a bare config cannot be converted
    assert recommend(llama2_config, "cpu", device="cpu-16gb")["precision"] == "Q8_0"
    assert recommend(llama2_config, "cpu", memory="4.5GB", ctx=512)["precision"] == "Q4_K_M"
    nothing = recommend(llama2_config, "cpu", memory="2GB")
    assert nothing["precision"] == "IQ1_M" and nothing["fits"] is False and "does not fit" in " ".join(nothing["why"])
    iq3 = recommend(llama2_config, "cpu", memory=sizes["inference"]["total"]["IQ3_M"])      # Q4_0 and IQ4_XS do not
    assert iq3["precision"] == "IQ3_M" and iq3["fits"] is True and "importance matrix" in " ".join(iq3["why"])


def test_cpu_answers_an_iq_type_with_the_imatrix_command_that_makes_it(tiny_hf):
    totals = estimate(tiny_hf, ctx=64)["inference"]["total"]
    r = recommend(tiny_hf, "cpu", memory=totals["IQ2_M"], ctx=64)
    assert r["precision"].startswith("IQ") and r["fits"] is True, r
    imatrix = f"tiny-{r['precision']}.imatrix.gguf"
    assert r["command"] == (f"modelport imatrix {tiny_hf} -o {imatrix} && modelport convert {tiny_hf} "
                            f"tiny-{r['precision']}.gguf --quant {r['precision']} --imatrix {imatrix}")


def test_train_follows_the_guides_hardware_rule(llama2_config):
    # SEED.md §8: full fine-tuning of a 7B needs 8xA100, LoRA one 24 GB GPU, QLoRA one 10 GB GPU.
    assert recommend(llama2_config, "train", device="rtx3090")["method"] == "lora"
    assert recommend(llama2_config, "train", memory="10GB")["method"] == "qlora"
    assert recommend(llama2_config, "train", device="a100-80gb")["method"] == "lora"
    assert recommend(llama2_config, "train", memory="640GB")["method"] == "full"
    r = recommend(llama2_config, "train", device="rtx3090")
    assert r["format"].startswith("safetensors") and r["trainable_parameters"] == 19_988_480
    assert r["size"] == 2 * 6_738_415_616 and r["guide_says"].startswith("PyTorch")


def test_serve_gpu(llama2_config):
    r = recommend(llama2_config, "serve-gpu", device="rtx3090")
    assert (r["format"], r["precision"], r["fits"]) == ("safetensors (Hugging Face folder)", "BF16", True)
    small = recommend(llama2_config, "serve-gpu", memory="8GB")
    assert (small["format"], small["precision"]) == ("GGUF", "Q5_K_M")


def test_commands_for_a_hugging_face_folder(tiny_hf):
    cpu = recommend(tiny_hf, "cpu")
    assert cpu["precision"] == "Q8_0"                                  # a tiny model fits at the best type
    assert cpu["command"] == f"modelport convert {shlex.quote(str(tiny_hf))} tiny-Q8_0.gguf --quant Q8_0"
    mobile = recommend(tiny_hf, "mobile")
    assert (mobile["format"], mobile["precision"]) == ("GGUF", "Q4_0") and "TFLite" in mobile["why"][0]
    train = recommend(tiny_hf, "train")
    assert train["method"] == "full" and train["command"] is None      # already safetensors
    share = recommend(tiny_hf, "share")
    assert share["command"].endswith("tiny-hf --to hf --shard-size 5GB --dtype bf16")
    onnx = recommend(tiny_hf, "cross-platform")
    assert onnx["format"] == "ONNX" and onnx["size"] == 4 * estimate(tiny_hf)["parameters"]
    assert onnx["command"] is None and "torch.onnx.export" in onnx["why"][-1]   # no ONNX writer in modelport yet


def test_commands_for_gguf_files(tmp_path):
    tensors = _tensors()
    f16, q4 = tmp_path / "m-F16.gguf", tmp_path / "m-Q4_K_M.gguf"
    _write_gguf(f16, tensors, "F16")
    _write_gguf(q4, tensors, "Q4_K_M")
    r = recommend(f16, "cpu", memory="100MB")
    assert r["command"] == f"modelport quantize {shlex.quote(str(f16))} m-F16-{r['precision']}.gguf --type {r['precision']}"
    again = recommend(q4, "cpu", memory="100MB")
    assert again["precision"] == "Q4_K_M" and again["fits"] and again["size"] == q4.stat().st_size
    assert again["command"] == f"modelport run {shlex.quote(str(q4))}" and "use it as is" in again["why"][-1]
    train = recommend(q4, "train")
    assert train["command"] == f"modelport convert {shlex.quote(str(q4))} m-Q4_K_M-hf --to hf --dtype bf16"


def test_a_model_without_config_is_not_sent_to_llama_cpp_on_a_phone(tmp_path):
    wr = GGUFWriter(str(tmp_path / "plain.gguf"), "unknown")
    wr.add_tensor("dense.weight", np.ones((64, 64), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    r = recommend(tmp_path / "plain.gguf", "mobile")
    assert r["format"] == "ONNX"


@pytest.mark.parametrize("goal", GOALS)
def test_cli_json(llama2_config, cli, goal):
    result = cli("recommend", llama2_config, "--goal", goal, "--memory", "12GB", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(recommend(llama2_config, goal, memory="12GB")))


def test_cli_text_and_errors(llama2_config, cli):
    result = cli("recommend", llama2_config, "--goal", "cpu", "--device", "cpu-16gb")
    assert result.code == 0 and "GGUF, Q8_0" in result.stdout and "the guide says: GGUF" in result.stdout
    assert_one_line_error(cli("recommend", llama2_config, "--goal", "fly"), "unknown goal")
    assert_one_line_error(cli("recommend", llama2_config, "--goal", "cpu", "--device", "toaster"), "unknown device")
