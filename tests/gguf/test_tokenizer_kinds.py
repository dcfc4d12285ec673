"""WordPiece (llama.cpp `bert`), Unigram (`t5`) and tokens added by fine-tunes, both ways, llama.cpp as the oracle.

HF -> GGUF: llama.cpp's ids (vocab-only load of the GGUF we write) equal the HF tokenizer's; GGUF -> HF: the
tokenizer rebuilt from that GGUF gives llama.cpp's ids. Text: multilingual, code and emoji (TEXTS below).
"""

from __future__ import annotations

import json

import pytest

from modelport.formats.gguf import open_gguf
from modelport.gguf import tokenizer as T
from modelport.gguf.hf_tokenizer import from_gguf
from tests import factory as F
from tests.factory import CORPUS, TEST_TEXT, vocab_gguf

llama_cpp = pytest.importorskip("llama_cpp")  # optional heavy dependency (compiled llama.cpp)
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer  # noqa: E402 - after the optional-dependency skips

MARKS = "हिन्दी"     # Devanagari vowel signs: spacing combining marks (Mc)
TEXTS = [TEST_TEXT.replace("हिन्दी", "Hindi"), T.CHKTXT,
         "  Hello WORLD, naïve café!  日本語のテキスト 3.14159 🚀🦙\n\tdef f(x): return x ** 2  # squares   ",
         "한국어 ไทย Ελληνικά עברית العربية — 'quotes' \"double\" ¿qué? ¡sí!"]


def _files(folder):
    return {p.name: p for p in folder.iterdir() if p.name in T.TOKENIZER_FILES}


def _both_ways(tmp_path, files, hf_ids, texts=TEXTS):
    """HF -> GGUF -> llama.cpp == HF, and GGUF -> HF == llama.cpp; returns (vocab, llama, rebuilt tokenizer)."""
    vocab = T.load_vocab(files, {}, None)
    path = vocab_gguf(tmp_path / "v.gguf", vocab.metadata())
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    rebuilt = from_gguf(open_gguf(path).metadata).tokenizer
    for text in texts:
        cpp = llm.tokenize(text.encode(), add_bos=True, special=True)
        assert cpp == hf_ids(text), text
        assert rebuilt.encode(text).ids == cpp, text
    return vocab, llm, rebuilt


def test_wordpiece_both_ways(tmp_path):
    folder = tmp_path / "bert"
    F.save_wordpiece(F.wordpiece_tokenizer(), folder)
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab, llm, rebuilt = _both_ways(tmp_path, _files(folder), lambda t: hf.encode(t).ids)
    assert vocab.model == "bert" and (vocab.add_bos, vocab.add_sep, vocab.add_eos) == (True, True, False)
    assert vocab.tokens[vocab.special_ids["bos"]] == "[CLS]" and vocab.tokens[vocab.special_ids["seperator"]] == "[SEP]"
    assert vocab.lowercase and vocab.strip_accents
    words = [t for t, ty in zip(vocab.tokens, vocab.types) if ty == T.NORMAL]
    assert not any(t.startswith("##") for t in words) and any(t.startswith(T.PHANTOM_SPACE) for t in words)
    # llama.cpp strips every combining mark, BertNormalizer only the nonspacing ones; the rebuilt tokenizer
    # follows llama.cpp (it is what the GGUF means)
    cpp = llm.tokenize(MARKS.encode(), add_bos=True, special=True)
    assert cpp != hf.encode(MARKS).ids and rebuilt.encode(MARKS).ids == cpp
    # the rebuilt folder is what transformers loads
    out = tmp_path / "rebuilt"
    out.mkdir()
    from_gguf(open_gguf(tmp_path / "v.gguf").metadata).save(out)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto("Hello world!")["input_ids"] == llm.tokenize(b"Hello world!", add_bos=True, special=True)
    llm.close()


def test_unigram_tokenizer_json_both_ways(tmp_path):
    tok = F.train_unigram()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>",
                                                                "pad_token": "<pad>"}))
    vocab, llm, _ = _both_ways(tmp_path, _files(tmp_path), lambda t: tok.encode(t).ids, TEXTS + [MARKS])
    assert vocab.model == "t5" and (vocab.add_bos, vocab.add_eos, vocab.remove_extra_whitespaces) == (False, True, True)
    assert vocab.types[vocab.special_ids["unknown"]] == T.UNKNOWN and vocab.scores[3] < 0
    llm.close()


def test_unigram_sentencepiece_model_with_charsmap(tmp_path):
    """A real SentencePiece Unigram model (nmt_nfkc normalization map): llama.cpp == sentencepiece itself."""
    import io

    spm = pytest.importorskip("sentencepiece")   # optional: only trains the fixture model
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 30), model_writer=buf, vocab_size=250, hard_vocab_limit=False,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1)   # T5's ids
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = T.load_vocab({"tokenizer.model": tmp_path / "tokenizer.model"}, {}, None)
    assert vocab.model == "t5" and vocab.charsmap and vocab.remove_extra_whitespaces
    path = vocab_gguf(tmp_path / "v.gguf", vocab.metadata())
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    rebuilt = from_gguf(open_gguf(path).metadata).tokenizer
    for text in TEXTS + ["ｆｕｌｌ－ｗｉｄｔｈ ①②"]:       # NFKC folds these
        cpp = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert cpp == sp.encode(text), text
        assert rebuilt.encode(text, add_special_tokens=False).ids == cpp, text
    llm.close()


FINE_TUNE_USER = ["<tool_call>", "</tool_call>", "modelport"]
FINE_TUNE_SPECIAL = ["<|custom_special|>", "<|im_start|>"]


def _fine_tuned(tmp_path, style, normalized=True):
    """A trained tokenizer of `style` with tokens added by a fine-tune (transformers' add_tokens /
    add_special_tokens) and its EOS moved to one of them, saved as the fine-tune saves it."""
    folder = tmp_path / style
    folder.mkdir()
    if style == "bert":
        F.save_wordpiece(F.wordpiece_tokenizer(), folder)
        hf = transformers.AutoTokenizer.from_pretrained(folder)
    else:
        if style == "unigram":
            hf = transformers.PreTrainedTokenizerFast(tokenizer_object=F.train_unigram(), eos_token="</s>", unk_token="<unk>",
                                                      pad_token="<pad>")
        else:
            hf = F.save_tokenizer(F.train_tokenizer(style), style, folder)
    hf.add_tokens([transformers.AddedToken(t, normalized=normalized) for t in FINE_TUNE_USER])
    hf.add_special_tokens({"additional_special_tokens": FINE_TUNE_SPECIAL})
    if style in ("gpt2", "llama3", "spm"):     # no EOS appended by these: a chat fine-tune's new end-of-turn token
        hf.eos_token = "<|custom_special|>"
    hf.save_pretrained(folder)
    return folder, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("style", ["gpt2", "llama3", "spm", "bert", "unigram"])
def test_tokens_added_by_a_fine_tune_survive_both_ways(tmp_path, style):
    # SentencePiece styles: added as normalized=false, which is what llama.cpp does (see the next test)
    folder, hf = _fine_tuned(tmp_path, style, normalized=style not in ("spm", "unigram"))
    text = "Call <tool_call>{\"x\": 1}</tool_call> with modelport<|custom_special|> done <|im_start|>user\nHi"
    vocab, llm, rebuilt = _both_ways(tmp_path, _files(folder), lambda t: hf(t)["input_ids"], TEXTS + [text])
    index = {t: i for i, t in enumerate(vocab.tokens)}
    assert all(vocab.types[index[t]] == T.USER_DEFINED for t in FINE_TUNE_USER)
    assert all(vocab.types[index[t]] == T.CONTROL for t in FINE_TUNE_SPECIAL)
    assert [index[t] for t in FINE_TUNE_USER + FINE_TUNE_SPECIAL] == hf.convert_tokens_to_ids(FINE_TUNE_USER + FINE_TUNE_SPECIAL)
    if style in ("gpt2", "llama3", "spm"):
        assert vocab.special_ids["eos"] == hf.convert_tokens_to_ids("<|custom_special|>")
    # GGUF -> HF keeps which added tokens are special
    back = {t.content: t.special for t in rebuilt.get_added_tokens_decoder().values()}
    assert {t: back[t] for t in FINE_TUNE_USER + FINE_TUNE_SPECIAL} == {**dict.fromkeys(FINE_TUNE_USER, False),
                                                                        **dict.fromkeys(FINE_TUNE_SPECIAL, True)}
    llm.close()


@pytest.mark.parametrize("style", ["spm", "unigram"])
def test_normalized_added_tokens_in_sentencepiece_are_reported(tmp_path, style):
    """HF matches a normalized=true added token after its normalizer (the space before it joins the match);
    llama.cpp matches added tokens in the raw text. The conversion says so; the tokens differ where HF does that
    (SentencePiece BPE: its "▁<tool_call>" is not even found without a space before it)."""
    folder, hf = _fine_tuned(tmp_path, style, normalized=True)
    vocab = T.load_vocab(_files(folder), {}, None)
    assert any("'<tool_call>'" in n and "normalized=true" in n for n in vocab.notes)
    llm = llama_cpp.Llama(str(vocab_gguf(tmp_path / "v.gguf", vocab.metadata())), vocab_only=True, verbose=False)
    for text, same in (("x<tool_call>y", style == "unigram"), ("Call <tool_call> now", False)):
        assert (llm.tokenize(text.encode(), add_bos=True, special=True) == hf(text)["input_ids"]) == same, text
    llm.close()


def test_gemma4_gguf_to_hf(tmp_path):
    """A GGUF with llama.cpp's `gemma4` vocabulary (BPE on raw UTF-8, U+2581 for spaces, as llama.cpp's converter
    writes Gemma 4): the rebuilt tokenizer gives llama.cpp's ids, and the same as the original where the original
    does not merge across a newline (llama.cpp splits newline runs off first)."""
    tok = F.train_tokenizer("gemma")
    tj = json.loads(tok.to_str())
    vocab = tj["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    types = [T.CONTROL if t in ("<unk>", "<s>", "</s>") else T.BYTE if t.startswith("<0x") else T.NORMAL for t in tokens]
    merges = [" ".join(m) for m in tj["model"]["merges"]]
    v = T.Vocab("gemma4", "gemma4", tokens, types, [0.0] * len(tokens), merges, special_ids={"bos": 1, "eos": 2, "unknown": 0},
                add_bos=True, add_eos=False, add_space_prefix=False)
    path = vocab_gguf(tmp_path / "g.gguf", v.metadata())
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    rebuilt = from_gguf(open_gguf(path).metadata).tokenizer
    for text in TEXTS + [MARKS]:
        cpp = llm.tokenize(text.encode(), add_bos=True, special=False)
        assert rebuilt.encode(text).ids == cpp, text
        if "\n" not in text:
            assert tok.encode(text).ids == cpp, text
    llm.close()
