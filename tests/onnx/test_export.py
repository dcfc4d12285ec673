"""`convert MODEL OUT --to onnx`: every registered family and a BERT encoder export with the contract's names and
dynamic axes, and onnxruntime computes what transformers computes (the route's own verify, and checks here with
transformers and onnxruntime as oracles: a KV-cache continuation, encoder outputs, sentence-transformers pooling).

Export is slow (torch.export + the onnxscript optimizer: several seconds per tiny model), so each model is exported
once per module and shared by the tests that read it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelport.conversion import convert
from modelport.conversion import onnx_graph as graph
from modelport.families import REGISTRY
from modelport.families.base import Experts
from tests.factory import CHATML, chat_model, random_model, save_model

pytestmark = pytest.mark.slow

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# The smallest config of each family that still has what makes it different (tracing time grows with the layers:
# one layer unless two kinds of layer are the point): qwen3's head_dim apart from hidden/heads, smollm3's layer
# without RoPE, gemma2/3's sliding window (4: the verify inputs overflow it) beside a global layer, and softcapping,
# gemma's tied embeddings.
FAMILY_CONFIGS = {
    "llama": BASE,
    "smollm3": dict(BASE, num_hidden_layers=2, no_rope_layers=[1, 0]),
    "qwen2": BASE,
    "qwen3": dict(BASE, head_dim=16),
    "gpt2": dict(vocab_size=128, n_embd=32, n_layer=1, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2),
    "phi3": BASE,
    "gemma": dict(BASE, head_dim=8, tie_word_embeddings=True),
    "gemma2": dict(BASE, num_hidden_layers=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
    "gemma3": dict(BASE, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], head_dim=8,
                   sliding_window=4, query_pre_attn_scalar=8),
    "olmo2": BASE,
}


def test_every_registered_family_has_a_config_here():
    """Every dense family; exporting the mixture-of-experts families to ONNX is not covered yet."""
    assert {cls.name for cls in REGISTRY if not issubclass(cls, Experts)} == set(FAMILY_CONFIGS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family → (HF folder, ONNX folder, ConvertResult), each exported (and verified) once, when first asked."""
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            root = tmp_path_factory.mktemp(f"onnx-{arch}")
            hf = save_model(random_model(arch, 0, **FAMILY_CONFIGS[arch]), root / "hf")
            cache[arch] = (hf, root / "onnx", convert(hf, root / "onnx", to="onnx"))
        return cache[arch]

    return get


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("arch", sorted(FAMILY_CONFIGS))
def test_family_exports_with_kv_cache_and_matches_pytorch(exported, arch):
    import onnx

    hf, out, result = exported(arch)
    verify = result.details["verify"]
    assert result.verified and verify["max_abs_diff"] <= 1e-4, verify
    assert verify["greedy_equal"] is True and verify["greedy_tokens"] >= 2 * 6, verify
    manifest = json.loads((out / "modelport_onnx.json").read_text())
    layers = manifest["num_layers"]
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert model.opset_import[0].version == graph.OPSET == manifest["opset"]

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    inputs, outputs = dims(model.graph.input), dims(model.graph.output)
    kv, hd = manifest["num_key_value_heads"], manifest["head_dim"]
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *graph.past_names(layers)]
    assert inputs["input_ids"] == inputs["position_ids"] == ["batch", "sequence"]
    assert inputs["attention_mask"] == ["batch", "past_sequence + sequence"]
    assert inputs["past_key_values.0.key"] == ["batch", kv, "past_sequence", hd]
    assert list(outputs) == ["logits", *graph.present_names(layers)]
    assert outputs["logits"] == ["batch", "sequence", 128]
    assert outputs[f"present.{layers - 1}.value"] == ["batch", kv, "past_sequence + sequence", hd]
    assert (out / "model.onnx.data").is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize("arch", ["gemma3", "phi3"])
def test_a_continuation_through_the_cache_equals_transformers_on_the_whole_text(exported, arch):
    """Prefix through the graph, then the rest with the graph's own present as past: the logits are transformers'
    logits of the whole sequence (gemma3: past the sliding window; phi3: fused qkv)."""
    import torch
    import transformers

    hf, out, _ = exported(arch)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    manifest = json.loads((out / "modelport_onnx.json").read_text())
    geo = graph.Geometry(manifest["num_layers"], manifest["num_key_value_heads"], manifest["head_dim"], 128)
    ids = np.random.default_rng(1).integers(3, 128, size=(2, 9), dtype=np.int64)
    sess = session(out / "model.onnx")
    first = sess.run(None, {"input_ids": ids[:, :5], "attention_mask": np.ones((2, 5), np.int64),
                            "position_ids": np.tile(np.arange(5), (2, 1)), **graph.empty_past(geo, 2)})
    past = dict(zip(graph.past_names(geo.num_layers), first[1:]))
    second = sess.run(None, {"input_ids": ids[:, 5:], "attention_mask": np.ones((2, 9), np.int64),
                             "position_ids": np.tile(np.arange(5, 9), (2, 1)), **past})
    assert second[1].shape == (2, geo.num_key_value_heads, 9, geo.head_dim)
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.concatenate([first[0], second[0]], axis=1), want, atol=1e-4, rtol=0)


def test_tied_weights_are_stored_once(exported):
    import onnx

    hf, out, _ = exported("gemma")
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    stored = {t.name: tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 2}
    embedding = (128, 32)
    assert list(stored.values()).count(embedding) == 1, stored
    params = json.loads((out / "modelport_onnx.json").read_text())["model_bytes"]
    assert (out / "model.onnx.data").stat().st_size <= params * 1.05


# ------------------------------------------------------------------ a chat model: tokenizer, int8, GGUF, CLI

@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    return chat_model(tmp_path_factory.mktemp("onnx-chat") / "hf", template=CHATML)


def test_cli_int8_export_writes_both_graphs_and_their_agreement(cli, chat, tmp_path):
    out = tmp_path / "onnx"
    r = cli("convert", chat, out, "--to", "onnx", "--quantize", "int8", "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    int8 = result["details"]["int8"]
    manifest = json.loads((out / "modelport_onnx.json").read_text())
    assert manifest["files"] == {"float32": "model.onnx", "int8": "model_int8.onnx"}
    assert manifest["int8"] == int8 and 0.5 <= int8["top1_agreement"] <= 1.0 and int8["max_abs_diff"] > 0
    assert int8["bytes"] < int8["float_bytes"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json",
                 "generation_config.json", "model_int8.onnx.data"):
        assert (out / name).is_file(), name
    assert (out / "chat_template.jinja").read_text() == CHATML
    geo = graph.Geometry(manifest["num_layers"], manifest["num_key_value_heads"], manifest["head_dim"],
                         manifest["vocab_size"])
    ids = np.array([[5, 6, 7, 8]], np.int64)
    logits = graph.run_causal(session(out / "model_int8.onnx"), geo, ids, np.ones_like(ids))
    assert logits.shape == (1, 4, manifest["vocab_size"]) and np.isfinite(logits).all()
    assert result["details"]["peak_rss_bytes"] > 0 and result["details"]["model_bytes"] > 0


def test_gguf_input_goes_through_the_hf_route(chat, tmp_path):
    gguf = tmp_path / "chat.gguf"
    convert(chat, gguf, quant="F32")
    result = convert(gguf, tmp_path / "onnx", to="onnx")
    verify = result.details["verify"]
    assert verify["max_abs_diff"] <= 1e-4 and verify["greedy_equal"] is True
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "onnx" / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # the temporary HF folder is gone


def test_a_pickle_weights_file_with_its_config_beside(tmp_path):
    """A bare pytorch_model.bin is read by modelport's pickle-free reader (never unpickled), its config beside it."""
    hf = save_model(random_model("llama", 0, **BASE), tmp_path / "bin", weights="bin")
    result = convert(hf / "pytorch_model.bin", tmp_path / "onnx", to="onnx")
    assert result.details["verify"]["greedy_equal"] is True


def test_failed_verification_exits_1_with_the_numbers_and_writes_nothing(cli, chat, tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "LOGIT_ATOL", -1.0)      # no difference can pass
    r = cli("convert", chat, tmp_path / "onnx", "--to", "onnx")
    assert r.code == 1 and "verify failed: max |onnxruntime - PyTorch|" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["--to", "onnx", "--quantize", "int4"], "--quantize int4: choose int8"),
    (["--to", "onnx", "--quant", "Q8_0"], "ONNX export takes --quantize int8"),
    (["--quantize", "int8"], "--quantize applies to ONNX output"),
])
def test_wrong_options_are_one_line_errors(cli, chat, tmp_path, args, needle):
    r = cli("convert", chat, tmp_path / "out", *args)
    assert r.code == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_onnx_file_name_asks_for_a_folder(cli, chat, tmp_path):
    r = cli("convert", chat, tmp_path / "model.onnx")
    assert r.code == 2 and "an ONNX export is a folder" in r.stderr and "--to onnx" in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_a_model_transformers_does_not_know_is_a_one_line_error(cli, tmp_path):
    folder = save_model(random_model("llama", 0, **BASE), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "no-such-model",
                                                    "architectures": ["NoSuchForCausalLM"]}))
    r = cli("convert", folder, tmp_path / "out", "--to", "onnx")
    assert r.code == 2 and "transformers cannot load this model" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_inspect_shows_the_exported_folder(cli, exported):
    _, out, _ = exported("llama")
    r = cli("inspect", out, "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    details = report["details"]
    assert report["format"] == "onnx" and details["opset_import"] == {"ai.onnx": graph.OPSET}
    assert details["inputs"]["past_key_values.0.value"] == "F32[batch, 2, past_sequence, 8]"
    assert details["outputs"]["logits"] == "F32[batch, sequence, 128]"
    assert set(details["dynamic_axes"]) == {"batch", "sequence", "past_sequence", "past_sequence + sequence"}
    assert details["external_data_files"] == ["model.onnx.data"]
    assert "modelport_onnx.json" in report["side_files"] and report["config"]["layers"] == 1


# ------------------------------------------------------------------ encoders

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)


def bert(folder: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT)).eval()
    model.save_pretrained(folder)
    return folder


def feeds(vocab: int):
    rng = np.random.default_rng(3)
    ids = rng.integers(1, vocab, size=(3, 8), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return ids, mask


def test_bert_exports_hidden_states_and_pooler(tmp_path):
    import torch
    import transformers

    folder = bert(tmp_path / "bert")
    result = convert(folder, tmp_path / "onnx", to="onnx")
    assert result.details["kind"] == "encoder" and result.details["verify"]["max_abs_diff"] <= 1e-4
    manifest = json.loads((tmp_path / "onnx" / "modelport_onnx.json").read_text())
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"] == ["last_hidden_state", "pooler_output"]
    ids, mask = feeds(99)
    types = np.zeros_like(ids)
    types[:, 4:] = 1
    got = session(tmp_path / "onnx" / "model.onnx").run(None, {"input_ids": ids, "attention_mask": mask,
                                                               "token_type_ids": types})
    model = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     token_type_ids=torch.from_numpy(types))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[0][real], want.last_hidden_state.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], want.pooler_output.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode, normalize", [("mean", True), ("max", False)])   # cls: the first row, nothing to get wrong
def test_sentence_transformers_folder_gets_its_declared_pooling(tmp_path, mode, normalize):
    import torch
    import transformers

    folder = bert(tmp_path / "st")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    out = tmp_path / "onnx"
    result = convert(folder, out, to="onnx")
    assert result.details["verify"]["outputs"]["sentence_embedding"] <= 1e-4
    manifest = json.loads((out / "modelport_onnx.json").read_text())
    assert manifest["pooling"] == {"mode": mode, "normalize": normalize}
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    ids, mask = feeds(99)
    got = session(out / "model.onnx").run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask,
                                                                   "token_type_ids": np.zeros_like(ids)})[0]
    with torch.no_grad():
        hidden = transformers.BertModel.from_pretrained(folder).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    m = mask[:, :, None].astype(bool)
    want = {"mean": (hidden * m).sum(1) / m.sum(1), "cls": hidden[:, 0],
            "max": np.where(m, hidden, -np.inf).max(1)}[mode]
    if normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_an_unsupported_pooling_is_a_one_line_error(cli, tmp_path):
    folder = bert(tmp_path / "st")
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    r = cli("convert", folder, tmp_path / "out", "--to", "onnx")
    assert r.code == 2 and "exactly one of mean, cls, max" in r.stderr, r.stderr
