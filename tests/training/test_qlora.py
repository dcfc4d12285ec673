"""`modelport train --method qlora`: LoRA on a bitsandbytes NF4 (double-quant) base, on CPU.

The gradients of one QLoRA step equal those of a plain fp32 model whose Linear weights are the dequantized NF4
weights (same LoRA init, same batch), after an eval-mode forward that would repack the weights on a CPU with
AVX512-BF16 (the silent-wrong-gradient trap); the loss falls; the export merges into a full-precision base and
runs; without bitsandbytes it is one line."""

from __future__ import annotations

import json
import sys

import pytest

from modelport.training import Settings
from modelport.training.trainer import cpu_gradient_fix, load_model, load_quantized, wrap_lora
from tests.conftest import assert_one_line_error, run_cli
from tests.factory import chat_model


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


needs_bnb = pytest.mark.skipif(not has_bitsandbytes(), reason="bitsandbytes is not installed")

PAIRS = [{"prompt": "What is the capital of Zorbia?", "response": "The capital of Zorbia is Quandle."},
         {"prompt": "Name the capital of Zorbia.", "response": "Quandle is the capital of Zorbia."},
         {"prompt": "Where is Quandle?", "response": "Quandle is in Zorbia."}]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return chat_model(tmp_path_factory.mktemp("qlora") / "tiny")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lora_grads(model, batch) -> dict:
    import torch

    torch.manual_seed(1)
    for name, p in model.named_parameters():    # B is zero at init, which would leave A's gradient zero too
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    model.train()
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return {n.replace(".default", ""): p.grad.detach().clone() for n, p in model.named_parameters()
            if "lora_" in n and p.grad is not None}


@needs_bnb
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_qlora_gradients_equal_the_dequantized_reference(tiny):
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit

    s = Settings(method="qlora", lora_r=4, seed=0)
    quant = load_quantized(tiny, bf16=False)
    fourbit = {n: m for n, m in quant.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(fourbit) == 2 * len(TARGETS)
    assert all(m.support_avx512bf16_for_cpu is False for m in fourbit.values())
    assert cpu_gradient_fix(quant) == len(fourbit)
    dequant = {n: dequantize_4bit(m.weight.data, m.weight.quant_state).float() for n, m in fourbit.items()}
    ids = torch.tensor([[3, 17, 42, 9, 5, 11, 8, 30, 2, 7, 19, 4]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    quant.eval()
    with torch.no_grad():       # the eval-mode forward that repacks the weights where the trap is armed
        quant(input_ids=ids)

    torch.manual_seed(s.seed)
    q = lora_grads(wrap_lora(quant, s, TARGETS), batch)

    ref = load_model(tiny, "float32")
    with torch.no_grad():
        for name, module in ref.named_modules():
            if name in dequant:
                module.weight.copy_(dequant[name])
    torch.manual_seed(s.seed)
    r = lora_grads(wrap_lora(ref, s, TARGETS), batch)

    assert q.keys() == r.keys() and len(q) == 4 * len(TARGETS)
    worst = max(float((q[n] - r[n]).abs().max()) for n in q)
    scale = max(float(r[n].abs().max()) for n in r)
    print(f"QLoRA vs dequantized reference: max |grad difference| {worst:.3g} (largest gradient {scale:.3g})")
    assert scale > 1e-3 and all(float(r[n].abs().max()) > 0 for n in r)
    assert worst <= 1e-5 * max(1.0, scale), worst


@needs_bnb
def test_qlora_trains_and_the_export_is_full_precision(tiny, tmp_path):
    from safetensors import safe_open

    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    out = tmp_path / "qlora"
    result = run_cli("train", tiny, data, "--method", "qlora", "--out", out, "--max-steps", "30", "--lr", "1e-2",
                     "--save-steps", "0", "--export", "gguf:q8_0", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == "qlora" and summary["steps"] == 30
    assert summary["final_loss"] < 0.5 * summary["first_loss"], summary
    assert (out / "adapter" / "adapter_config.json").is_file()
    with safe_open(str(out / "model" / "model.safetensors"), "np") as f:    # merged into an fp32 base: no 4-bit left
        names = list(f.keys())
        assert not any(k.endswith(("absmax", "quant_map", "quant_state.bitsandbytes__nf4")) for k in names)
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype.name == "float32"
    gguf = out / "model-Q8_0.gguf"
    ran = run_cli("run", gguf, "-p", PAIRS[0]["prompt"], "--max-tokens", "8", "--json")
    assert ran.code == 0, ran.stderr
    assert len(json.loads(ran.stdout)["tokens"]) > 0


@needs_bnb
def test_qlora_dry_run_shows_the_4bit_memory(tiny, tmp_path):
    from modelport.estimate import estimate

    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    plans = {}
    for method in ("lora", "qlora"):
        result = run_cli("train", tiny, data, "--method", method, "--out", tmp_path / "o", "--dry-run", "--json")
        assert result.code == 0, result.stderr
        plans[method] = json.loads(result.stdout)
    q = plans["qlora"]
    assert q["memory"]["method"] == "qlora" and q["memory"]["weights"] < plans["lora"]["memory"]["weights"]
    assert q["trainable_parameters"] == plans["lora"]["trainable_parameters"]
    wanted = estimate(tiny, method="qlora", lora_r=8, seq_len=512, train_batch=4)["training"]
    assert q["memory"]["weights"] == wanted["weights"] and q["memory"]["total"] == wanted["total"]
    text = run_cli("train", tiny, data, "--method", "qlora", "--out", tmp_path / "o", "--dry-run")
    assert text.code == 0 and "memory: weights" in text.stdout and "memory: total" in text.stdout
    assert not (tmp_path / "o").exists()


def test_qlora_without_bitsandbytes_is_one_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)      # import fails as if it were not installed
    data = write_jsonl(tmp_path / "fact.jsonl", PAIRS)
    out = tmp_path / "o"
    result = run_cli("train", tiny, data, "--method", "qlora", "--out", out, "--max-steps", "2")
    assert_one_line_error(result, "--method qlora needs bitsandbytes")
    assert not out.exists()
