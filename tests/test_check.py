"""`check`: tiny real models (transformers, peft, modelport's converter) broken on purpose, one way each; `check` must
name each problem and its cause before loading anything, and find nothing in the unbroken ones."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from modelport import convert
from modelport.check import NOTE, WARNING, check
from modelport.cli.main import main
from tests.factory import make_model

SMALL = dict(hidden=64, layers=3, heads=4, kv_heads=2, ffn=128)
STYLE = {"llama": "llama3", "qwen2": "qwen2", "gemma": "spm", "gpt2": "gpt2", "phi3": "llama3"}
CHATML = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")


def cli(*args) -> tuple[int, str]:
    """Exit code of the real CLI run in-process (output goes to the captured stdout)."""
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def kinds(report, severity=None) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in report.findings:
        if severity is None or f.severity == severity:
            out.setdefault(f.kind, []).append(f)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    return {arch: make_model(root / arch, arch, style, chat_template=CHATML, tied=(arch == "llama"), **SMALL)
            for arch, style in STYLE.items()}


def copy(model, tmp_path, name="broken"):
    out = tmp_path / name
    shutil.copytree(model, out)
    return out


def rewrite(folder, edit) -> None:
    """Rewrite model.safetensors through `edit(dict) -> dict`."""
    path = folder / "model.safetensors"
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------ clean models

@pytest.mark.parametrize("arch", sorted(STYLE))
def test_unbroken_models_have_no_findings(models, arch, capsys):
    report = check(models[arch])
    assert report.ok and not [f for f in report.findings if f.severity != NOTE], report.findings
    assert report.family == {"gpt2": "gpt2", "phi3": "phi3", "qwen2": "qwen2", "gemma": "gemma"}.get(arch, "llama")
    assert cli("check", models[arch]) == 0


def test_gguf_converted_from_a_model_has_no_findings(models, tmp_path):
    out = tmp_path / "llama.gguf"
    convert(models["llama"], out)
    report = check(out)
    assert report.ok and report.findings == [], report.findings
    assert report.memory["engine"] == "llama.cpp" and report.memory["fits"]


def test_smollm2_gguf_has_no_findings():
    from modelport.samples import smollm2_gguf

    report = check(smollm2_gguf())
    assert report.findings == [] and report.family == "llama"
    parts = report.memory["parts"]
    assert parts["weights"] == smollm2_gguf().stat().st_size and parts["kv_cache"] == 2 * 30 * 192 * 2 * 8192


# ------------------------------------------------------------------------------------------------ broken on purpose

def test_module_prefix_from_ddp(models, tmp_path, capsys):
    folder = copy(models["llama"], tmp_path)
    rewrite(folder, lambda t: {"module." + k: v for k, v in t.items()})
    report = check(folder)
    found = kinds(report)
    assert list(found) == ["prefix"], report.findings
    assert "'module.'" in found["prefix"][0].what and "DistributedDataParallel" in found["prefix"][0].cause
    assert cli("check", folder) == 1


def test_missing_model_prefix(models, tmp_path):
    folder = copy(models["qwen2"], tmp_path)
    rewrite(folder, lambda t: {k.removeprefix("model."): v for k, v in t.items()})
    f = kinds(check(folder))["prefix"][0]
    assert "lack the 'model.' prefix" in f.what


def test_missing_layer(models, tmp_path):
    folder = copy(models["llama"], tmp_path)
    rewrite(folder, lambda t: {k: v for k, v in t.items() if ".layers.1." not in k})
    found = kinds(check(folder))
    assert list(found) == ["missing-layer"], found
    assert "layer 1 is missing" in found["missing-layer"][0].what
    assert "missing layer" in found["missing-layer"][0].cause


def test_config_for_another_size(models, tmp_path, capsys):
    folder = copy(models["llama"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))
    found = kinds(check(folder))
    assert list(found) == ["config-size"], found
    f = found["config-size"][0]
    assert "intermediate_size = 256" in f.what and "have 128" in f.what and "another model size" in f.cause
    assert f.fix.startswith("set intermediate_size to 128")
    capsys.readouterr()
    assert cli("check", folder, "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["findings"][0]["kind"] == "config-size"
    assert set(data["findings"][0]) == {"severity", "kind", "what", "cause", "fix"}


def test_gpt2_config_for_another_width(models, tmp_path):
    """GPT-2's Conv1D weights are stored transposed: the shapes still name the right key."""
    folder = copy(models["gpt2"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_inner": 1024}))
    f = kinds(check(folder))["config-size"][0]
    assert "n_inner = 1024" in f.what and "have 256" in f.what


def test_lora_adapter_given_as_model(models, tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models["llama"], dtype=torch.float32)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    found = kinds(check(adapter))
    assert list(found) == ["lora-adapter"], found
    f = found["lora-adapter"][0]
    assert f"LoRA adapter for {models['llama']}" in f.what and "merge" in f.fix and "base model" in f.fix
    assert cli("check", adapter) == 1
    assert "lora-adapter" in capsys.readouterr().out      # piped: tab-separated lines


def test_tokenizer_larger_than_embedding(models, tmp_path):
    from transformers import AutoTokenizer

    folder = copy(models["qwen2"], tmp_path)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = len(tok)
    tok.add_tokens([f"<extra_{i}>" for i in range(5)])
    tok.save_pretrained(folder)
    found = kinds(check(folder))
    assert list(found) == ["vocab"], found
    assert f"{rows + 5} tokens but the embedding only {rows} rows" in found["vocab"][0].what
    assert "index past the embedding" in found["vocab"][0].cause


def test_tied_embeddings_stored_twice_is_a_note(models, tmp_path):
    folder = copy(models["llama"], tmp_path)           # tie_word_embeddings true, lm_head left out by transformers
    rewrite(folder, lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"].copy()})
    report = check(folder)
    assert report.ok and [f.kind for f in report.findings] == ["tied-twice"]


def test_untied_model_without_lm_head(models, tmp_path):
    folder = copy(models["qwen2"], tmp_path)
    rewrite(folder, lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    f = kinds(check(folder))["missing"][0]
    assert f.what == "lm_head.weight is missing" and "tie_word_embeddings" in f.cause


def test_unexpected_tensor(models, tmp_path):
    folder = copy(models["phi3"], tmp_path)
    rewrite(folder, lambda t: {**t, "model.vision_tower.weight": np.zeros((4, 4), np.float32)})
    f = kinds(check(folder))["unexpected"][0]
    assert "model.vision_tower.weight" in f.what and "Unexpected key" in f.cause


def test_no_chat_template_is_a_note(models, tmp_path):
    folder = copy(models["gemma"], tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    report = check(folder)
    assert report.ok and [f.kind for f in report.findings] == ["chat-template"] and "--raw" in report.findings[0].fix


def test_pickle_is_slow_to_load(models, tmp_path):
    import torch

    folder = copy(models["llama"], tmp_path)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
    found = kinds(check(folder), WARNING)
    assert list(found) == ["pickle"] and "modelport convert" in found["pickle"][0].fix
    assert found["pickle"][0].fix.endswith("model.safetensors")


def _gguf_with_block_count(model, tmp_path, out, block_count: int) -> None:
    """The model converted to GGUF, rewritten by gguf-py with another block_count."""
    import gguf

    src = tmp_path / "good.gguf"
    convert(model, src)
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(out, arch="llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = block_count if field.name == "llama.block_count" else field.contents()
        vtype = field.types[0]
        writer.add_key_value(field.name, value, vtype, sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_metadata_against_tensors(models, tmp_path):
    """A GGUF whose block_count says more layers than its tensors have."""
    out = tmp_path / "bad.gguf"
    _gguf_with_block_count(models["llama"], tmp_path, out, 4)
    found = kinds(check(out))
    assert list(found) == ["config-size"], found
    assert "llama.block_count = 4 but the weights have 3 layers" in found["config-size"][0].what


def test_unreadable_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model at all")
    assert cli("check", bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("modelport: ")


def test_run_says_why_loading_failed(models, tmp_path):
    """transformers raises a size-mismatch RuntimeError; `runtime.load` turns it into check's one-line diagnosis."""
    from modelport import runtime
    from modelport.core.errors import ModelportError

    folder = copy(models["llama"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))
    with pytest.raises(ModelportError) as info:
        runtime.load(folder, engine="hf")
    text = info.value.cli_text()
    assert "\n" not in text and "intermediate_size = 256" in text and "another model size" in text
    assert not isinstance(info.value.__cause__, ModelportError)


def test_llama_cpp_load_failure_names_the_layer_count(models, tmp_path):
    from modelport import runtime
    from modelport.core.errors import ModelportError

    bad = tmp_path / "bad.gguf"
    _gguf_with_block_count(models["llama"], tmp_path, bad, 4)
    with pytest.raises(ModelportError, match="block_count = 4 but the weights have 3 layers"):
        runtime.load(bad, engine="llama")


# ------------------------------------------------------------------------------------------------ recommend's commands

def test_recommend_withholds_a_gguf_command_for_an_unsupported_architecture(tmp_path):
    import torch
    import transformers

    from modelport.recommend import recommend

    config = transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, vocab_size=300)
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    r = recommend(tmp_path / "neox", "cpu", memory="8GB")
    assert r["format"] == "GGUF" and r["command"] is None
    assert "GPTNeoXForCausalLM" in r["missing"]["gguf"] and "not supported" in r["why"][-1]


def test_recommend_prints_commands_that_run(models, tmp_path):
    """The command recommend prints for a complete model runs as printed."""
    import shlex

    from modelport.recommend import recommend

    r = recommend(models["qwen2"], "cpu", memory="8GB")
    assert "missing" not in r and r["command"].startswith("modelport convert")
    args = shlex.split(r["command"])[1:]
    args[2] = str(tmp_path / args[2])
    assert cli(*args) == 0 and (tmp_path / f"qwen2-{r['precision']}.gguf").is_file()


def test_recommend_says_the_tokenizer_is_missing(models, tmp_path):
    from modelport.recommend import recommend

    folder = copy(models["llama"], tmp_path)
    (folder / "tokenizer.json").unlink()
    r = recommend(folder, "cpu", memory="8GB")
    assert "tokenizer.json" in r["missing"]["tokenizer"] and r["missing"]["tokenizer"] in r["why"]


def test_folder_without_config(models, tmp_path):
    folder = copy(models["llama"], tmp_path)
    (folder / "config.json").unlink()
    found = kinds(check(folder), WARNING)
    assert list(found) == ["config"] and "config.json" in found["config"][0].fix


def test_piped_output_is_findings_then_summary_lines(models, tmp_path, capsys):
    broken = copy(models["llama"], tmp_path, "prefixed")
    rewrite(broken, lambda t: {"module." + k: v for k, v in t.items()})
    assert cli("check", broken) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("\t") for line in lines if not line.startswith("# ")]
    assert rows and all(len(r) == 5 for r in rows) and any(r[1] == "prefix" for r in rows)
    assert lines[-1].startswith("# ") and "finding" in lines[-1]
    assert cli("check", models["llama"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"# ok: nothing wrong with {models['llama']}"
