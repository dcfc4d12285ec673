"""Every byte-level BPE pre-tokenizer llama.cpp knows (`tokenizer.ggml.pre`), as Hugging Face `tokenizers` steps.

One table serves both directions:
  * GGUF -> HF: the name in a GGUF picks the regexes of the rebuilt tokenizer.json (`build`);
  * HF -> GGUF: a tokenizer.json whose check-text hash llama.cpp does not know (any retrained or fine-tuned
    vocabulary) is named by behaviour: its own pre-tokenizer splits the probe text exactly like the table's
    entry for that name (`match`), and ignore_merges agrees. So a Llama 3 style tokenizer is "llama-bpe"
    whether its tokenizer.json writes the regex one way or another, and a pre-tokenizer like none of them is
    refused with the nearest name and the first piece where they differ.

Each entry is the list of regexes llama.cpp's vocabulary code applies one after another (each splits the
pieces the previous left, matches and gaps kept: `Split(..., "isolated")` in `tokenizers`), written in the
form the models' own tokenizer.json files use (Oniguruma syntax: `(?i:...)`, `\\p{Lu}`, ...), and the flags
llama.cpp sets for the name. Whether llama.cpp then tokenizes like the rebuilt/original tokenizer is what
tests/gguf/test_pre_tokenizers.py checks name by name, with llama.cpp itself as the oracle.

Names llama.cpp runs without byte-level encoding (gemma4 / granite-embed-multi-311m / sarvam-moe:
SentencePiece-style BPE; whitespace: jina-v2-zh) are not here (`NOT_BYTE_LEVEL`); llama.cpp's `gemma4`
vocabulary model is rebuilt by hf_tokenizer on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- the regexes, as the models' tokenizer.json files write them ---------------------------------------------

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_TAIL = r"\s*[\r\n]+|\s+(?!\S)|\s+"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _TAIL
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _TAIL
QWEN35 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|" + _TAIL
JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
         + "|".join(rf"\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4)) + r"|\s{1,2}(?!\S)|\s{1}")
# upper-then-lower / lower words (tiktoken o200k style), with and without contractions
_UP, _LOW = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LOW}+|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LOW}*|\p{{N}}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|" + _TAIL)
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LOW}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LOW}*{_CONTRACTIONS}?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|" + _TAIL)
_UPK, _LOWK = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
KIMI_K2 = (rf"[\p{{Han}}]+|[^\r\n\p{{L}}\p{{N}}]?{_UPK}*{_LOWK}+{_CONTRACTIONS}?"
           rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPK}+{_LOWK}*{_CONTRACTIONS}?|\p{{N}}{{1,3}}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|" + _TAIL)
# llama.cpp's regex engine has no \p{Lu}/\p{Ll}: it reads "upper" as a letter other than a-z and "lower" as a letter
# other than A-Z, and leaves combining marks (\p{M}) out, so a mark is a piece of its own (हिन्दी splits apart)
_UP_CPP, _LOW_CPP = r"[\p{L}&&[^a-z]]", r"[\p{L}&&[^A-Z]]"
TEKKEN_CPP = TEKKEN.replace(_UP, _UP_CPP).replace(_LOW, _LOW_CPP)
GPT4O_CPP = GPT4O.replace(_UP, _UP_CPP).replace(_LOW, _LOW_CPP)
KIMI_K2_CPP = KIMI_K2.replace(_UPK, r"[\p{L}&&[^a-z]&&[^\p{Han}]]").replace(_LOWK, r"[\p{L}&&[^A-Z]&&[^\p{Han}]]")
# CJK runs: Han (U+4E00-9FA5) plus the ranges each family adds
_CJK_KO = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_CJK_JA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DEEPSEEK3_WORDS = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                    r"| ?[\p{P}\p{S}]+[\r\n]*|" + _TAIL)
_SPARK_WORDS = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
                r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+")
_YOUTU_ASIAN = ("[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
                "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|" + _CJK_JA)
_YOUTU_WORDS = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LOW}+{_CONTRACTIONS}?|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LOW}*{_CONTRACTIONS}?"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|" + _TAIL)
_AFMOE_ASIAN = ("[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
                "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
                "\u1100-\u11ff]+")
_DIGITS_BY_3 = r"\d{1,3}(?=(?:\d{3})*\b)"     # 1234567 -> 1 234 567
_DIGITS_BY_3_CPP = r"\d{1,3}(?=(?:\d{3})*(?!\d))"   # llama.cpp: also when a letter follows (no word boundary)
_NO_SPLIT_SET = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"   # Bloom: split before these
# DeepSeek LLM: letters with case (its tokenizer.json lists the Unicode ranges), ASCII and full-width punctuation
_DEEPSEEK_LETTERS = r"\s?[\p{Lu}\p{Ll}\p{Lt}]+"
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer: its split regexes and the flags llama.cpp sets for the name."""

    splits: tuple[str, ...]
    ignore_merges: bool = False     # a piece that is a whole vocabulary token is taken as is (Llama 3, Tekken)
    add_bos: bool = False           # llama.cpp's default when the GGUF has no add_bos_token
    family: str = ""                # who uses it, for messages
    as_llama_cpp: tuple[str, ...] | None = None   # what llama.cpp really runs, where it differs from `splits`
    differs_on: str = ""            # a text where it does (the tests check the difference is exactly there)

    @property
    def runs(self) -> tuple[str, ...]:
        """The regexes as llama.cpp applies them (what a GGUF with this name means)."""
        return self.as_llama_cpp or self.splits


def _entries(names: str, splits: tuple[str, ...], family: str, **flags) -> dict[str, PreTokenizer]:
    return dict.fromkeys(names.split(), PreTokenizer(splits, family=family, **flags))


_MARKS = "हिन्दी"

#: tokenizer.ggml.pre name -> pre-tokenizer, in llama-vocab.cpp's groups; the first name of each group is the one
#: a structural match reports (so the order is the preference order of `match`).
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **_entries("gpt-2 mpt olmo jais trillion granite-docling phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de "
               "a.x-4.0 mellum modern-bert exaone4 jina-v1-en jina-v2-code roberta-bpe", (GPT2,), "GPT-2"),
    **_entries("llama-bpe llama3 llama-v3 falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", (LLAMA3,), "Llama 3",
               ignore_merges=True, add_bos=True),
    **_entries("glm4 glm5", (LLAMA3,), "GLM-4", ignore_merges=True),
    **_entries("dbrx smaug-bpe chatglm-bpe", (LLAMA3,), "DBRX (Llama 3 regex, merges always applied)"),
    **_entries("qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 hunyuan solar-open megrez grok-2", (QWEN2,), "Qwen2"),
    **_entries("smollm starcoder refact command-r codeshell exaone minerva-7b mellum2", (r"\p{N}", GPT2),
               "SmolLM / StarCoder (digits one by one)"),
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"), family="llama.cpp default"),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"), family="Falcon"),
    "qwen35": PreTokenizer((QWEN35,), family="Qwen3.5"),
    "jais-2": PreTokenizer((JAIS2,), family="Jais 2"),
    "deepseek-llm": PreTokenizer(("[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT, r"\s+$", _CJK_KO, r"\p{N}+"),
                                 family="DeepSeek LLM"),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_KO, r"\p{N}"), family="DeepSeek Coder"),
    **_entries("deepseek-v3 hunyuan-dense joyai-llm hy_v4", (r"\p{N}{1,3}", _CJK_JA, _DEEPSEEK3_WORDS), "DeepSeek V3"),
    "spark2_5": PreTokenizer((r"\p{N}{1,3}", _CJK_JA, _SPARK_WORDS, r"\p{N}"), family="Spark 2.5"),
    "youtu": PreTokenizer((_YOUTU_ASIAN, _YOUTU_WORDS), ignore_merges=True, family="Youtu"),
    **_entries("bloom poro-chat gpt3-finnish", (_NO_SPLIT_SET,), "BLOOM"),
    "viking": PreTokenizer((_NO_SPLIT_SET, r"\p{N}"), family="Viking"),
    "tekken": PreTokenizer((TEKKEN,), ignore_merges=True, add_bos=True, family="Mistral Tekken",
                           as_llama_cpp=(TEKKEN_CPP,), differs_on=_MARKS),
    "chameleon": PreTokenizer(("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\t\n]|    |  )",
                               r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2), add_bos=True, family="Chameleon"),
    **_entries("gpt-4o llama4 kanana2 talkie minimax-m2", (GPT4O,), "GPT-4o / Llama 4", as_llama_cpp=(GPT4O_CPP,),
               differs_on=_MARKS),
    "granite-embed-multi-97m": PreTokenizer((GPT4O,), ignore_merges=True, family="Granite embedding (97M)"),
    **_entries("tiny_aya cohere2moe", (_DIGITS_BY_3, GPT4O), "Aya (digits in threes)",
               as_llama_cpp=(_DIGITS_BY_3_CPP, GPT4O), differs_on="1314151天"),
    "kimi-k2": PreTokenizer((KIMI_K2,), family="Kimi K2", as_llama_cpp=(KIMI_K2_CPP,), differs_on=_MARKS),
    "superbpe": PreTokenizer((r"\p{N}+", r"(?=(\d{3})+(?!\d))"), family="SuperBPE"),
    **_entries("bailingmoe bailingmoe2 llada-moe",
               (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
               "Ling (BailingMoE)"),
    "seed-coder": PreTokenizer((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|" + _TAIL,),
                               family="Seed-Coder"),
    "ufakzeka": PreTokenizer((r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _TAIL,),
                             family="Qwen2 without contractions"),
    "afmoe": PreTokenizer((_DIGITS_BY_3, _AFMOE_ASIAN, _DEEPSEEK3_WORDS), family="AFMoE"),
    "laguna": PreTokenizer((r"[^\n]+|[\n]+", QWEN2), family="Laguna"),
    "exaone-moe": PreTokenizer((_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                                r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",), family="EXAONE MoE"),
    "minicpm5": PreTokenizer((r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|" + _TAIL), ignore_merges=True, family="MiniCPM 5"),
}

#: Names llama.cpp knows that are not byte-level BPE (SentencePiece-style BPE on raw UTF-8, or whitespace words).
NOT_BYTE_LEVEL = ("gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace")
#: Names llama.cpp's converter writes for WordPiece vocabularies (`bert` model: llama.cpp does not read the name).
WORDPIECE_NAMES = ("bert-bge-large", "jina-v2-en")

#: One name per distinct behaviour (regexes + ignore_merges): what `match` can answer, and what the tests cover.
REPRESENTATIVES: list[str] = list({(p.splits, p.ignore_merges): n for n, p in reversed(PRE_TOKENIZERS.items())}
                                  .values())[::-1]

#: Text the structural match splits: llama.cpp's check text plus code, digits, scripts and special-looking markup.
PROBE = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙 3 33 333 3333 33333 333333 "
         "3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
         "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
         "'D you like some tea? We'Ve a'lL 'llama it'sx HelloWorld camelCase XMLHttpRequest Größe naïve ΕΛΛΗΝΙΚΆ "
         "한국어 텍스트 ㄱㄴ ㄅㄆ 日本語のテキスト、カタカナ！ 「引用」 ไทย ລາວ ខ្មែរ မြန်မာ हिन्दी العربية עברית "
         "def f(x):\r\n\treturn x**2  # 1234567 3.14159 $5+3<=8^2~|`y` <sentinel:12> IMGIMGABZ         end" + " " * 40 + "x\n\n")


def build(name: str, as_llama_cpp: bool = True):
    """The `tokenizers` pre-tokenizer for llama.cpp's name: as llama.cpp runs it (default; GGUF -> HF) or as the
    family's tokenizer.json writes it (KeyError when the name is not in the table)."""
    spec = PRE_TOKENIZERS[name]
    return from_regexes(spec.runs if as_llama_cpp else spec.splits)


def from_regexes(splits: tuple[str, ...], byte_level: bool = True):
    """A chain of isolated splits, then byte-level encoding (GPT-2's own ByteLevel form for its single regex)."""
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    if splits == (GPT2,) and byte_level:   # GPT-2's own form (its regex, plus a last `\s+` that never changes a split)
        return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    return pt.Sequence([pt.Split(Regex(r), behavior="isolated", invert=False) for r in splits]
                       + ([pt.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)] if byte_level else []))


def pieces(pre_tokenizer, text: str = PROBE) -> list[str]:
    return [p for p, _ in pre_tokenizer.pre_tokenize_str(text)]


@dataclass(frozen=True)
class Match:
    """The outcome of `match`: the name, and a sentence saying how it was found (for convert / --json)."""

    name: str | None
    how: str


def match(pre_tokenizer, ignore_merges: bool) -> Match:
    """The llama.cpp name whose pre-tokenizer splits PROBE exactly like `pre_tokenizer` (a `tokenizers` object)."""
    want = pieces(pre_tokenizer)
    same_splits: list[str] = []
    nearest: tuple[int, str, str] | None = None
    for name in REPRESENTATIVES:
        for form in dict.fromkeys((PRE_TOKENIZERS[name].splits, PRE_TOKENIZERS[name].runs)):
            got = pieces(from_regexes(form))
            if got == want:
                same_splits.append(name)
                break
            agree = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            if nearest is None or agree > nearest[0]:
                nearest = (agree, name, want[agree] if agree < len(want) else "<end>")
    for name in same_splits:
        spec = PRE_TOKENIZERS[name]
        if spec.ignore_merges == ignore_merges:
            note = f"; llama.cpp differs on text like {spec.differs_on!r}" if spec.differs_on and \
                pieces(from_regexes(spec.runs)) != want else ""
            return Match(name, f"splits text like llama.cpp's '{name}' ({spec.family}){note}")
    if same_splits:
        name = same_splits[0]
        return Match(name, f"splits text like llama.cpp's '{name}' ({PRE_TOKENIZERS[name].family}); "
                           f"its ignore_merges={not ignore_merges} differs from the tokenizer's")
    assert nearest is not None
    piece = bytes_text(nearest[2])
    return Match(None, f"splits text like no pre-tokenizer llama.cpp knows; nearest is '{nearest[1]}' "
                       f"({PRE_TOKENIZERS[nearest[1]].family}), which first differs at the piece {piece!r}")


def bytes_text(piece: str) -> str:
    """A byte-level piece (GPT-2's byte-to-character alphabet) as the text it stands for."""
    from tokenizers import decoders

    return decoders.ByteLevel().decode([piece])
