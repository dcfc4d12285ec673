"""Tokenizer -> tokenizer.ggml.*: structure, validation, and llama.cpp tokenizing exactly like the HF tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelport.core.errors import FormatError, UnsupportedError
from modelport.gguf import tokenizer as T
from tests.factory import CHATML, LLAMA3, TEST_TEXT, save_tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")


def _folder(tmp_path: Path, style: str, template: str | None = None) -> Path:
    d = tmp_path / style
    d.mkdir()
    save_tokenizer(train_tokenizer(style), style, d, template)
    return d


def _files(d: Path) -> dict[str, Path]:
    return {p.name: p for p in d.iterdir() if p.name in T.TOKENIZER_FILES}


def test_check_text_is_llama_cpps():
    # sha256 of the check text in llama.cpp's get_vocab_base_pre (llama-cpp-python 0.3.36 sdist)
    assert hashlib.sha256(T.CHKTXT.encode()).hexdigest() == "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"


def test_chkhsh_is_computed_like_the_reference_converter(tmp_path):
    d = _folder(tmp_path, "llama3")
    hf = transformers.AutoTokenizer.from_pretrained(d)
    expected = hashlib.sha256(str(hf.encode(T.CHKTXT)).encode()).hexdigest()
    assert T.chkhsh(d / "tokenizer.json") == expected


@pytest.mark.parametrize("style,model,pre", [("gpt2", "gpt2", "gpt-2"), ("llama3", "gpt2", "llama-bpe"), ("qwen2", "gpt2", "qwen2"),
                                             ("spm", "llama", "default")])
def test_structure(tmp_path, style, model, pre):
    d = _folder(tmp_path, style, CHATML)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    n = len(hf)
    v = T.load_vocab(_files(d), {}, n)
    assert (v.model, v.pre) == (model, pre)
    assert v.pre_source == "structure"          # a freshly trained tokenizer is not in llama.cpp's table
    assert len(v.tokens) == n and len(set(v.tokens)) == n
    vocab = hf.get_vocab()
    assert all(vocab[t] == i for i, t in enumerate(v.tokens))
    assert v.chat_template == CHATML
    bos = v.special_ids.get("bos")
    assert bos == hf.bos_token_id
    assert v.tokens[v.special_ids["eos"]] == hf.eos_token
    assert v.add_bos == (hf.bos_token_id is not None and hf("x")["input_ids"][0] == hf.bos_token_id)
    for tok in (hf.bos_token, hf.eos_token):
        assert tok is None or v.types[vocab[tok]] == T.CONTROL
    if model == "gpt2":
        merges = json.loads((d / "tokenizer.json").read_text())["model"]["merges"]
        assert v.merges == [" ".join(m) if isinstance(m, list) else m for m in merges]
        assert v.scores is None
    else:
        assert v.merges is None and len(v.scores) == n
        assert v.types[vocab["<0x0A>"]] == T.BYTE and v.types[vocab["<unk>"]] == T.UNKNOWN
        assert v.add_space_prefix is True


def test_padding_to_the_embedding_rows(tmp_path):
    d = _folder(tmp_path, "gpt2")
    n = len(transformers.AutoTokenizer.from_pretrained(d))
    v = T.load_vocab(_files(d), {}, n + 5)
    assert v.tokens[-5:] == [f"[PAD{i}]" for i in range(n, n + 5)]
    assert v.types[-5:] == [T.UNUSED] * 5


def test_validation_errors(tmp_path):
    d = _folder(tmp_path, "gpt2")
    n = len(transformers.AutoTokenizer.from_pretrained(d))
    with pytest.raises(FormatError, match=f"{n} tokens but the embedding has {n - 1} rows"):
        T.load_vocab(_files(d), {}, n - 1)
    tj = json.loads((d / "tokenizer.json").read_text())
    existing = next(t for t, i in tj["model"]["vocab"].items() if i == 100)
    tj["added_tokens"].append({"id": n, "content": existing, "single_word": False, "lstrip": False, "rstrip": False,
                               "normalized": False, "special": False})
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(FormatError, match="appears twice"):
        T.load_vocab(_files(d), {}, n + 1)
    v = T.Vocab("gpt2", "gpt-2", ["a", ""], [1, 1])
    with pytest.raises(FormatError, match="token 1 is empty"):
        v.validate(2)


def test_unknown_pre_tokenizer_structure_is_refused_clearly(tmp_path):
    d = _folder(tmp_path, "llama3")
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(UnsupportedError, match="not in llama.cpp's table"):
        T.load_vocab(_files(d), {}, None)


def test_chat_template_from_tokenizer_config_and_named_templates(tmp_path):
    d = _folder(tmp_path, "gpt2")
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["chat_template"] = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": LLAMA3}]
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    v = T.load_vocab(_files(d), {}, None)
    assert v.chat_template == CHATML and v.named_templates == {"tool_use": LLAMA3}
    meta = v.metadata()
    assert meta["tokenizer.chat_template"] == CHATML and meta["tokenizer.chat_template.tool_use"] == LLAMA3


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2", "spm"])
def test_llama_cpp_tokenizes_like_hf(tmp_path, style):
    llama_cpp = pytest.importorskip("llama_cpp")  # optional heavy dependency (compiled llama.cpp)
    import numpy as np

    from modelport.formats.gguf import write_gguf

    d = _folder(tmp_path, style)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    v = T.load_vocab(_files(d), {}, len(hf))
    meta = {"general.architecture": "llama", "llama.context_length": np.uint32(64), "llama.embedding_length": np.uint32(32),
            "llama.block_count": np.uint32(1), "llama.feed_forward_length": np.uint32(32),
            "llama.attention.head_count": np.uint32(2), "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5)}
    meta.update(v.metadata())
    path = tmp_path / "vocab.gguf"
    write_gguf([], path, metadata=meta)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    texts = [TEST_TEXT, T.CHKTXT, " leading space", "ok"]
    for text in texts:
        want = hf.encode(text)
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        assert got == want, (style, text)
    # special tokens are parsed as one token when asked to
    eos = hf.eos_token
    assert llm.tokenize(f"hi{eos}".encode(), add_bos=False, special=True)[-1] == hf.eos_token_id


def test_sentencepiece_model_file_tokenizes_like_sentencepiece(tmp_path):
    """tokenizer.model (Llama 2 style) read by our protobuf walker; oracle: sentencepiece itself and llama.cpp."""
    spm = pytest.importorskip("sentencepiece")  # optional: only makes the fixture (not a modelport dependency)
    llama_cpp = pytest.importorskip("llama_cpp")  # optional heavy dependency (compiled llama.cpp)
    import numpy as np

    from modelport.formats.gguf import write_gguf
    from tests.factory import CORPUS

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=700, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                                   allow_whitespace_only_pieces=True, minloglevel=2)   # Llama 2's trainer settings
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "sp.model").rename(d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                         "add_bos_token": True, "add_eos_token": False}))
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    n = sp.get_piece_size()
    v = T.load_vocab(_files(d), {}, n)
    assert v.model == "llama" and v.tokens == [sp.id_to_piece(i) for i in range(n)]
    assert np.allclose(v.scores, [sp.get_score(i) for i in range(n)])
    assert v.types[0] == T.UNKNOWN and v.types[1] == v.types[2] == T.CONTROL
    assert v.types[v.tokens.index("<0x0A>")] == T.BYTE
    assert (v.special_ids["bos"], v.special_ids["eos"], v.add_bos, v.add_space_prefix) == (1, 2, True, True)
    meta = {"general.architecture": "llama", "llama.context_length": np.uint32(64), "llama.embedding_length": np.uint32(32),
            "llama.block_count": np.uint32(1), "llama.feed_forward_length": np.uint32(32),
            "llama.attention.head_count": np.uint32(2), "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5)}
    meta.update(v.metadata())
    write_gguf([], tmp_path / "v.gguf", metadata=meta)
    llm = llama_cpp.Llama(str(tmp_path / "v.gguf"), vocab_only=True, verbose=False)
    for text in (TEST_TEXT, "Hello world", " two  spaces"):
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == [1] + sp.encode(text)
