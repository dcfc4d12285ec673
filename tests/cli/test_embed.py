"""`modelport embed` on a tiny BERT: transformers (the sentence-transformers pooling its folder declares), its ONNX
export in onnxruntime, and the same weights as a llama.cpp embedding GGUF (written here with gguf-py, as llama.cpp's
converter writes BERT) all give the same vectors; causal LMs and empty input are one line.

sentence-transformers itself is not installed here: its pooling is written out in torch below, from its Pooling
and Normalize modules, as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, BertModel

import gguf
import modelport
from modelport import runtime
from modelport.core.errors import UnsupportedError
from tests.conftest import assert_one_line_error
from tests.factory import bert_model, chat_model

TEXTS = ["the quick brown fox jumps over the lazy dog.", "le vif renard brun saute par-dessus le chien paresseux.",
         "hello world", "def main(x): return x * 2"]


def sentence_transformers_pooling(folder, texts, mode: str, normalize: bool) -> np.ndarray:
    """sentence-transformers' Pooling (+ Normalize) in torch, over transformers' BertModel: the oracle."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = BertModel.from_pretrained(str(folder)).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    if mode == "cls":
        v = h[:, 0]
    elif mode == "max":
        v = h.masked_fill(mask == 0, -1e9).max(dim=1).values
    elif mode in ("mean", "mean_sqrt_len"):
        v = (h * mask).sum(1) / (mask.sum(1) if mode == "mean" else mask.sum(1).sqrt())
    elif mode == "weightedmean":
        w = mask * torch.arange(1, h.shape[1] + 1).float()[None, :, None]
        v = (h * w).sum(1) / w.sum(1)
    else:   # lasttoken, right padding
        v = h[torch.arange(h.shape[0]), enc["attention_mask"].sum(1) - 1]
    return (torch.nn.functional.normalize(v, dim=1) if normalize else v).numpy()


def bert_gguf(folder, out):
    """The BERT folder as llama.cpp's converter writes it: WordPiece vocabulary with the phantom-space prefix,
    mean pooling, F32 tensors under llama.cpp's names."""
    cfg = json.loads((folder / "config.json").read_text())
    tj = json.loads((folder / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tj["added_tokens"]}
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    w = gguf.GGUFWriter(str(out), "bert")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(cfg["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    w.add_token_type_count(cfg["type_vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([t if t in specials else t[2:] if t.startswith("##") else "\u2581" + t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_bos_token_id(specials["[CLS]"])
    w.add_sep_token_id(specials["[SEP]"])
    w.add_unk_token_id(specials["[UNK]"])
    w.add_pad_token_id(specials["[PAD]"])
    w.add_mask_token_id(specials["[MASK]"])
    tensors = load_file(str(folder / "model.safetensors"))
    names = {"embeddings.word_embeddings": "token_embd", "embeddings.token_type_embeddings": "token_types",
             "embeddings.position_embeddings": "position_embd", "embeddings.LayerNorm": "token_embd_norm"}
    per_layer = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
                 "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
                 "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm"}
    for i in range(cfg["num_hidden_layers"]):
        names.update({f"encoder.layer.{i}.{hf}": f"blk.{i}.{ours}" for hf, ours in per_layer.items()})
    for hf, ours in names.items():
        for part in ("weight", "bias"):
            if f"{hf}.{part}" in tensors:
                w.add_tensor(f"{ours}.{part}", np.ascontiguousarray(tensors[f"{hf}.{part}"], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return bert_model(tmp_path_factory.mktemp("bert") / "st", pooling="mean", normalize=True)


@pytest.fixture(scope="module")
def bert_onnx(bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert-onnx") / "onnx"
    modelport.convert(bert, out, to="onnx", verify=False)
    return out


def test_transformers_pools_as_the_folder_declares(bert):
    result = runtime.embed(bert, TEXTS)
    assert result.engine == "transformers" and result.pooling == "mean, normalized" and result.dimensions == 32
    np.testing.assert_allclose(result.vectors, sentence_transformers_pooling(bert, TEXTS, "mean", True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-6)
    assert result.tokens == [len(AutoTokenizer.from_pretrained(str(bert))(t)["input_ids"]) for t in TEXTS]


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len", "weightedmean", "lasttoken"])
def test_every_sentence_transformers_pooling_mode(tmp_path, mode):
    folder = bert_model(tmp_path / mode, pooling=mode, normalize=False, seed=2)
    result = runtime.embed(folder, TEXTS[:3])
    assert result.pooling == mode.removesuffix("_tokens")
    np.testing.assert_allclose(result.vectors, sentence_transformers_pooling(folder, TEXTS[:3], mode, False), atol=1e-5)


def test_a_plain_encoder_is_mean_pooled_and_normalized_on_request(tmp_path):
    folder = bert_model(tmp_path / "plain", pooling=None, seed=3)
    plain = runtime.embed(folder, TEXTS[:2])
    assert plain.pooling == "mean"
    np.testing.assert_allclose(plain.vectors, sentence_transformers_pooling(folder, TEXTS[:2], "mean", False), atol=1e-6)
    assert not np.allclose(np.linalg.norm(plain.vectors, axis=1), 1, atol=1e-3)
    unit = runtime.embed(folder, TEXTS[:2], normalize=True)
    np.testing.assert_allclose(unit.vectors, plain.vectors / np.linalg.norm(plain.vectors, axis=1, keepdims=True),
                               atol=1e-6)


def test_onnx_export_gives_the_transformers_vectors(bert, bert_onnx):
    hf = runtime.embed(bert, TEXTS)
    onnx = runtime.embed(bert_onnx, TEXTS)            # texts of different lengths: padded in one batch
    assert onnx.engine == "onnxruntime" and onnx.tokens == hf.tokens
    np.testing.assert_allclose(onnx.vectors, hf.vectors, atol=1e-4)
    other = runtime.embed(bert_onnx, list(reversed(TEXTS)))
    np.testing.assert_allclose(other.vectors[::-1], onnx.vectors, atol=1e-5)


def test_llama_cpp_embedding_gguf_gives_the_transformers_vectors(bert, tmp_path):
    path = bert_gguf(bert, tmp_path / "bert.gguf")
    ours = runtime.embed(path, TEXTS, normalize=True)
    assert ours.engine == "llama.cpp" and ours.pooling == "mean, normalized"
    hf = runtime.embed(bert, TEXTS)
    assert ours.tokens == hf.tokens
    np.testing.assert_allclose(ours.vectors, hf.vectors, atol=1e-4)


def test_cli_table_similarity_and_json(cli, bert_onnx, tmp_path):
    shown = cli("embed", bert_onnx, *TEXTS[:3])
    assert shown.code == 0, shown.stderr
    assert "3 vectors of 32 dimensions (onnxruntime, pooling mean, normalized)" in shown.stdout
    assert "cosine similarity" in shown.stdout and "hello world" in shown.stdout
    data = json.loads(cli("embed", bert_onnx, *TEXTS[:3], "--json").stdout)
    vectors = np.array([e["vector"] for e in data["embeddings"]])
    assert vectors.shape == (3, 32) and data["dimensions"] == 32
    np.testing.assert_allclose(vectors, runtime.embed(bert_onnx, TEXTS[:3]).vectors, atol=1e-6)
    sim = np.array(data["similarity"])
    np.testing.assert_allclose(sim, vectors @ vectors.T, atol=1e-5)
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(TEXTS * 3) + "\n\n")
    many = cli("embed", bert_onnx, "--file", lines)
    assert many.code == 0 and "12 vectors" in many.stdout and "closest pairs" in many.stdout


def test_what_embed_cannot_do_is_one_line(cli, tmp_path, bert, bert_onnx):
    causal = chat_model(tmp_path / "llama")
    for result, needle in ((cli("embed", causal, "hi"), "is a causal language model (LlamaForCausalLM)"),
                           (cli("embed", bert), "no text to embed"),
                           (cli("embed", bert, "hi", "--engine", "tensorrt"), "unknown engine"),
                           (cli("embed", bert_onnx, "hi", "--engine", "llama"), "llama.cpp embeds GGUF files")):
        assert_one_line_error(result, needle)
    with pytest.raises(UnsupportedError, match="is an encoder"):
        runtime.load(bert_onnx)
