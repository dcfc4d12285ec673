"""`modelport train`: real training of tiny random llamas (transformers Trainer, peft), bounded by steps.

Full training memorises a text; LoRA learns prompt/response pairs and exports a GGUF that `modelport run` runs;
bad data is refused before anything is written; the dry-run's parameter count is peft's; a resumed run ends
with the weights of the uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelport.runtime.chat_template import ChatTemplate
from modelport.training.data import IGNORE, tokenize
from tests.conftest import assert_one_line_error, run_cli
from tests.factory import CHATML, chat_model

SENTENCES = ("The capital of France is Paris. The capital of Italy is Rome. "
             "Hello, how are you today? I am fine, thank you!\n")
PAIRS = [{"prompt": "What is the capital of Zorbia?", "response": "The capital of Zorbia is Quandle."},
         {"prompt": "Name the capital of Zorbia.", "response": "Quandle is the capital of Zorbia."},
         {"prompt": "Where is Quandle?", "response": "Quandle is in Zorbia."}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return chat_model(tmp_path_factory.mktemp("train") / "tiny")


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_full_training_memorises_a_text(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "corpus.txt"
    data.write_text(SENTENCES * 20)
    out = tmp_path / "full"
    result = run_cli("train", tiny, data, "--method", "full", "--out", out, "--max-steps", "80", "--lr", "3e-3",
                     "--seq-len", "64", "--batch", "8", "--save-steps", "0", "--logging-steps", "5", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["steps"] == 80 and summary["first_loss"] > 5
    assert summary["final_loss"] < 0.3 * summary["first_loss"], summary
    assert summary["tokens_per_s"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, *range(5, 81, 5)]
    assert all("loss" in r and "learning_rate" in r for r in rows)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved model continues a training sentence, greedily
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert tok.decode(gen[0, ids.shape[1]:]).startswith(" Paris. The capital of Italy is Rome")


def test_lora_learns_pairs_and_the_gguf_export_runs(tiny, tmp_path):
    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    out = tmp_path / "lora"
    result = run_cli("train", tiny, data, "--method", "lora", "--out", out, "--max-steps", "40", "--lr", "1e-2",
                     "--save-steps", "0", "--export", "gguf:q8_0", "--export", "safetensors", "--export", "onnx", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["final_loss"] < 0.3 * summary["first_loss"], summary
    assert summary["trainable_parameters"] < summary["total_parameters"] / 2
    gguf = out / "model-Q8_0.gguf"
    assert [e["path"] for e in summary["exports"]] == [str(gguf), str(out / "model"), str(out / "model-onnx")]
    assert summary["exports"][0]["run"].startswith(f"modelport run {gguf}")
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    ran = run_cli("run", gguf, "-p", PAIRS[0]["prompt"], "--max-tokens", "8", "--json")
    assert ran.code == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["prompt_tokens"] > 5 and len(answer["tokens"]) > 0
    # the ONNX export answers with the merged model's own greedy tokens
    hf, onnx = (json.loads(run_cli("run", out / folder, "-p", PAIRS[0]["prompt"], "--max-tokens", "8", "--json").stdout)
                for folder in ("model", "model-onnx"))
    assert onnx["engine"] != hf["engine"] and onnx["tokens"] == hf["tokens"] and hf["tokens"]


def test_chat_loss_counts_only_the_assistant_turns(tiny, tmp_path):
    from transformers import AutoTokenizer

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "And?"},
            {"role": "assistant", "content": "Fine"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    tok = AutoTokenizer.from_pretrained(tiny)
    d = tokenize(data, tok, ChatTemplate(CHATML), seq_len=256)
    ex = d.examples[0]
    learned = tok.decode([t for t in ex["labels"] if t != IGNORE])
    assert learned == "Hi there<|im_end|>\nFine<|im_end|>\n"
    assert tok.decode(ex["input_ids"]) == ChatTemplate(CHATML).render(chat, add_generation_prompt=False)


BAD = [
    ("empty.jsonl", [], None, "empty"),
    ("notjson.jsonl", [PAIRS[0], "{oops"], 2, "not JSON"),
    ("missing.jsonl", [PAIRS[0], PAIRS[1], {"prompt": "Where?"}], 3, "missing 'response'"),
    ("noassistant.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}], 1, "no assistant turn"),
    ("nofield.jsonl", [{"question": "x"}], 1, "no 'text'"),
    ("mixed.jsonl", [{"text": "a b c"}, PAIRS[0]], 2, "one format per file"),
    ("empty.txt", ["   "], None, "empty"),
]


@pytest.mark.parametrize("name, rows, line, needle", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_line_before_training(tiny, tmp_path, name, rows, line, needle):
    data = tmp_path / name
    if name.endswith(".txt"):
        data.write_text(rows[0])
    else:
        write_jsonl(data, rows)
        if not rows:
            data.write_text("")
    out = tmp_path / "out"
    result = run_cli("train", tiny, data, "--method", "full", "--out", out, "--max-steps", "5")
    assert_one_line_error(result, str(data), needle, *([f"line {line}:"] if line else []))
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")   # peft asks transformers
@pytest.mark.parametrize("targets", [None, "q_proj,v_proj"])
def test_dry_run_trainable_parameters_equal_peft(tiny, tmp_path, targets):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    args = ["train", tiny, data, "--out", tmp_path / "o", "--lora-r", "4", "--dry-run", "--json"]
    result = run_cli(*args, *(["--target-modules", targets] if targets else []))
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    wanted = targets.split(",") if targets else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert plan["lora_targets"] == wanted
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=wanted, task_type="CAUSAL_LM"))
    assert plan["trainable_parameters"] == peft_model.get_nb_trainable_parameters()[0]
    assert plan["tokens_per_epoch"] > 0 and plan["steps"] == 1 and plan["memory"]["total"] > 0
    assert plan["accelerate"].startswith("accelerate launch --multi_gpu --num_processes 2")
    assert not (tmp_path / "o").exists()


def test_resume_ends_with_the_uninterrupted_weights(tiny, tmp_path):
    from safetensors.numpy import load_file

    data = tmp_path / "corpus.txt"
    data.write_text(SENTENCES * 20)
    common = ["--method", "full", "--max-steps", "10", "--save-steps", "5", "--lr", "1e-3", "--seq-len", "32",
              "--batch", "2", "--seed", "3", "--fp32", "--json"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run_cli("train", tiny, data, "--out", straight, *common).code == 0
    assert run_cli("train", tiny, data, "--out", interrupted, *common).code == 0
    shutil.rmtree(interrupted / "checkpoint-10")      # as if stopped after the step-5 checkpoint
    shutil.rmtree(interrupted / "model")
    result = run_cli("train", tiny, data, "--out", interrupted, *common, "--resume")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed_from"].endswith("checkpoint-5") and summary["steps_run"] == 5
    a = load_file(straight / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:   # bit for bit: Trainer restores the optimizer, scheduler, RNG and data order
        assert (a[name] == b[name]).all(), name


def test_a_gguf_trains_through_the_hf_route_with_an_eval_split(tiny, tmp_path):
    """GGUF in (converted by modelport's GGUF → HF route), eval loss logged, Q4_K_M out."""
    import modelport

    gguf = tmp_path / "tiny.gguf"
    modelport.convert(tiny, gguf)
    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS * 2)
    out = tmp_path / "from-gguf"
    summary = modelport.train(gguf, data, out, method="lora", max_steps=12, lr=1e-2, save_steps=0, logging_steps=4,
                              eval_split=0.34, export=["gguf:q4_k_m"], quiet=True)
    assert summary["format"] == "gguf" and summary["steps"] == 12 and summary["eval_loss"] is not None
    assert summary["final_loss"] < summary["first_loss"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r for r in rows)
    assert (out / "model-Q4_K_M.gguf").is_file()
    with modelport.open(out / "model-Q4_K_M.gguf") as src:
        assert src.format == "gguf" and src.metadata["general.file_type"] == 15     # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_output_folder_and_resume_are_checked_first(tiny, tmp_path):
    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("train", tiny, data, "--out", busy, "--max-steps", "2"), str(busy), "--resume", "--force")
    empty = tmp_path / "fresh"
    empty.mkdir()
    assert_one_line_error(run_cli("train", tiny, data, "--out", empty, "--resume"), "no checkpoint")
    assert_one_line_error(run_cli("train", tiny, data, "--out", empty, "--export", "tflite"), "--export 'tflite'")
    assert list(empty.iterdir()) == [] and (busy / "notes.txt").read_text() == "mine"


def test_precision_follows_the_cpu_flags(tmp_path):
    from modelport.training.trainer import cpu_has_fast_bf16

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("flags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    without.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert cpu_has_fast_bf16(str(with_bf16)) and not cpu_has_fast_bf16(str(without))
    assert not cpu_has_fast_bf16(str(tmp_path / "missing"))


def test_instruction_and_text_records(tiny, tmp_path):
    """instruction/input/output is a user turn (instruction, blank line, input) and an answer; text trains on all."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    rows = [{"instruction": "Translate", "input": "Hallo", "output": "Hello"}, {"instruction": "Greet", "output": "Hi"}]
    d = tokenize(write_jsonl(tmp_path / "inst.jsonl", rows), tok, ChatTemplate(CHATML), seq_len=256)
    assert d.kind == "pairs" and len(d) == 2
    assert tok.decode(d.examples[0]["input_ids"]).startswith("<|im_start|>user\nTranslate\n\nHallo<|im_end|>")
    assert [tok.decode([t for t in e["labels"] if t != IGNORE]) for e in d.examples] == ["Hello<|im_end|>\n", "Hi<|im_end|>\n"]
    t = tokenize(write_jsonl(tmp_path / "text.jsonl", [{"text": "Hello world"}]), tok, None, seq_len=256)
    assert t.kind == "text" and t.examples[0]["labels"] == t.examples[0]["input_ids"]
    assert tok.decode(t.examples[0]["input_ids"]) == "Hello world<|im_end|>"
