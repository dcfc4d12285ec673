"""Every byte-level BPE pre-tokenizer llama.cpp knows, both ways, with llama.cpp itself as the oracle.

For each distinct pre-tokenizer (one name per behaviour, `REPRESENTATIVES`), a BPE is trained here with the
family's pre-tokenizer written as its tokenizer.json writes it. HF -> GGUF: the name is found by behaviour
(a retrained tokenizer is never in llama.cpp's hash table) and llama.cpp's ids (vocab-only load of the GGUF
we write) equal the HF ids on multilingual, code and emoji text. GGUF -> HF: the tokenizer rebuilt from the
GGUF gives llama.cpp's ids on the same text.
"""

from __future__ import annotations

import json

import pytest

from modelport.core.errors import UnsupportedError
from modelport.formats.gguf import open_gguf
from modelport.gguf import pre_tokenizers as P
from modelport.gguf import tokenizer as T
from modelport.gguf.hf_tokenizer import from_gguf
from modelport.gguf.pre_tokenizer_hashes import KNOWN_PRE_HASHES
from tests.factory import TEST_TEXT, train_bpe, vocab_gguf

llama_cpp = pytest.importorskip("llama_cpp")  # optional heavy dependency (compiled llama.cpp)
tokenizers = pytest.importorskip("tokenizers")

#: multilingual, code and emoji text (plus llama.cpp's own check text)
TEXTS = [
    TEST_TEXT,
    T.CHKTXT,
    "한국어 텍스트와 日本語のカタカナ、ไทย ລາວ ខ្មែរ 1234567890 $5+3<=8^2~|`y`   three  spaces\r\n\n\n"
    "XMLHttpRequest camelCase ΕΛΛΗΝΙΚΆ it'sx 'llama we'LL 🚀🦙😶\u200d🌫️ <sentinel:3> IMGIMGABZ" + " " * 40 + "end",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 3.14159 1314151天\n\t\tprint(f'{x!r}')",
]


def _hf_folder(tmp_path, tok, **config):
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", **config}))
    return {"tokenizer.json": tmp_path / "tokenizer.json", "tokenizer_config.json": tmp_path / "tokenizer_config.json"}


def _same_behaviour(a: str, b: str) -> bool:
    pa, pb = P.PRE_TOKENIZERS[a], P.PRE_TOKENIZERS[b]
    return pa.ignore_merges == pb.ignore_merges and P.pieces(P.build(a)) == P.pieces(P.build(b))


@pytest.mark.parametrize("name", P.REPRESENTATIVES)
def test_pre_tokenizer_both_ways(tmp_path, name):
    spec = P.PRE_TOKENIZERS[name]
    hf = train_bpe(P.build(name, as_llama_cpp=False), ignore_merges=spec.ignore_merges)   # as tokenizer.json has it
    vocab = T.load_vocab(_hf_folder(tmp_path, hf), {}, None)
    assert vocab.pre_source == "structure" and f"'{vocab.pre}'" in vocab.pre_match
    assert vocab.pre == name or _same_behaviour(vocab.pre, name), (vocab.pre, name)   # bailingmoe ≡ qwen2, ...
    path = vocab_gguf(tmp_path / "v.gguf", vocab.metadata())
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)

    def cpp(text):
        return llm.tokenize(text.encode(), add_bos=False, special=False)

    # HF -> GGUF: llama.cpp tokenizes like the original tokenizer (except where llama.cpp's regex engine is
    # known to differ from the tokenizer.json regex, and there it does differ: the table says so)
    for text in TEXTS:
        shown = text.replace(spec.differs_on, " ") if spec.differs_on else text
        assert cpp(shown) == hf.encode(shown).ids, (name, shown)
    if spec.differs_on:
        assert cpp(spec.differs_on) != hf.encode(spec.differs_on).ids
        assert "llama.cpp differs on text like" in vocab.pre_match
    # GGUF -> HF: the rebuilt tokenizer tokenizes like llama.cpp, on everything
    rebuilt = from_gguf(open_gguf(path).metadata).tokenizer
    assert rebuilt.get_vocab() == hf.get_vocab()
    for text in TEXTS:
        assert rebuilt.encode(text, add_special_tokens=False).ids == cpp(text), (name, text)
    llm.close()


def test_smollm_written_as_its_tokenizer_json_does(tmp_path):
    """SmolLM's tokenizer.json says Digits(individual) + ByteLevel, not a regex: found by behaviour all the same."""
    from tokenizers import pre_tokenizers as pt

    hf = train_bpe(pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]))
    vocab = T.load_vocab(_hf_folder(tmp_path, hf), {}, None)
    assert vocab.pre == "smollm"
    llm = llama_cpp.Llama(str(vocab_gguf(tmp_path / "v.gguf", vocab.metadata())), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == hf.encode(text).ids
    llm.close()


def test_unknown_pre_tokenizer_names_the_nearest(tmp_path):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    odd = pt.Sequence([pt.Split(Regex(r"\p{L}+|\s+"), behavior="isolated"), pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    with pytest.raises(UnsupportedError, match=r"like no pre-tokenizer llama.cpp knows; nearest is '[^']+' .*"
                                               r"first differs at the piece"):
        T.load_vocab(_hf_folder(tmp_path, train_bpe(odd, vocab_size=300)), {}, None)


def test_every_name_loads_in_llama_cpp_with_its_defaults(tmp_path):
    """Every name in the table is one llama.cpp knows, with the BOS default and the vocabulary it runs."""
    hf = train_bpe(P.build("gpt-2"), vocab_size=300)
    tj = json.loads(hf.to_str())
    tokens = sorted(tj["model"]["vocab"], key=tj["model"]["vocab"].get)
    merges = [" ".join(m) for m in tj["model"]["merges"]]
    for name in P.PRE_TOKENIZERS:
        v = T.Vocab("gpt2", name, tokens, [T.CONTROL] + [T.NORMAL] * (len(tokens) - 1), None, merges,
                    special_ids={"bos": 0, "eos": 0})     # no add_bos_token key: llama.cpp's default for the name
        path = vocab_gguf(tmp_path / f"{name}.gguf", v.metadata())
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        cpp = llm.tokenize(b"ok", add_bos=True)
        llm.close()
        assert (cpp[0] == 0) == P.PRE_TOKENIZERS[name].add_bos, name
        assert from_gguf(open_gguf(path).metadata).tokenizer.encode("ok").ids == cpp, name


def test_llama_cpp_hash_table_names_are_all_covered():
    missing = set(KNOWN_PRE_HASHES.values()) - set(P.PRE_TOKENIZERS) - set(P.NOT_BYTE_LEVEL) - set(P.WORDPIECE_NAMES)
    assert not missing


@pytest.mark.parametrize("name", P.NOT_BYTE_LEVEL)
def test_not_byte_level_names_are_refused_for_hf_output(name):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name, "tokenizer.ggml.tokens": ["a", "b"],
            "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(UnsupportedError, match=f"'{name}' is not one llama.cpp runs as byte-level BPE"):
        from_gguf(meta)


@pytest.mark.slow
def test_convert_says_which_pre_tokenizer_it_matched(tmp_path, cli):
    """A model whose retrained tokenizer is DeepSeek-V3 style: `convert` names 'deepseek-v3' and says how it knew;
    one llama.cpp cannot match is refused in one line naming the nearest."""
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    from tests.factory import make_model

    folder = make_model(tmp_path / "m", "llama", "gpt2", hidden=32, ffn=64, layers=1, heads=2, kv_heads=2)
    train_bpe(P.build("deepseek-v3", as_llama_cpp=False), vocab_size=400).save(str(folder / "tokenizer.json"))
    result = cli("convert", folder, tmp_path / "m.gguf", "--json")
    assert result.code == 0, result.stderr
    tok = json.loads(result.stdout)["details"]["tokenizer"]
    assert (tok["model"], tok["pre_tokenizer"], tok["found_by"]) == ("gpt2", "deepseek-v3", "structure")
    assert "splits text like llama.cpp's 'deepseek-v3' (DeepSeek V3)" in tok["how"]
    assert "pre-tokenizer 'deepseek-v3'" in cli("convert", folder, tmp_path / "m.gguf", "--force", "-q").stdout
    odd = pt.Sequence([pt.Split(Regex(r"\p{L}+|\s+"), behavior="isolated"), pt.ByteLevel(add_prefix_space=False,
                                                                                          use_regex=False)])
    train_bpe(odd, vocab_size=300).save(str(folder / "tokenizer.json"))
    from tests.conftest import assert_one_line_error

    assert_one_line_error(cli("convert", folder, tmp_path / "odd.gguf"), "tokenizer.json", "nearest is")
