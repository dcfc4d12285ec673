"""Commands that cannot work on a model say so before any engine loads it: encoders, vocabulary-only GGUFs,
and (for chat) a model without a chat template."""

from __future__ import annotations

import pytest

import modelport
from gguf import GGUFWriter
from modelport import runtime
from modelport.core.errors import UnsupportedError
from tests.factory import chat_model


def forbid_engines(monkeypatch) -> None:
    """Any engine start fails the test: the refusal must come from the header and config alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("an engine was started")
    monkeypatch.setattr(runtime.LlamaEngine, "__init__", refuse)
    monkeypatch.setattr(runtime.HFEngine, "__init__", refuse)


@pytest.fixture
def no_engine_starts(monkeypatch):
    forbid_engines(monkeypatch)


def test_an_encoder_is_refused_before_loading(tmp_path, no_engine_starts):
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedError, match=r"is an encoder \(BertModel\).*does not generate"):
        runtime.load(tmp_path / "bert")


def test_a_vocabulary_only_gguf_is_refused(tmp_path, no_engine_starts):
    path = tmp_path / "ggml-vocab-tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedError, match="only a vocabulary"):
        runtime.load(path)


def test_a_gguf_without_template_is_refused_for_chat_before_loading(tmp_path, monkeypatch):
    folder = chat_model(tmp_path / "notemplate", template=None)
    modelport.convert(folder, tmp_path / "nt.gguf", quant="F16")
    forbid_engines(monkeypatch)
    with pytest.raises(UnsupportedError, match="no chat template.*run --raw"):
        runtime.load(tmp_path / "nt.gguf", needs_template=True)
    with pytest.raises(UnsupportedError, match="no chat template.*run --raw"):
        runtime.load(folder, needs_template=True)
