"""`tokenizer.ggml.*` metadata -> a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json).

The reverse of `tokenizer.py`, built with the `tokenizers` library's Python API so that the result is what
`AutoTokenizer` loads with no network and tokenizes the way llama.cpp does:
  * byte-level BPE (`gpt2`): `models.BPE` over the tokens and merges; the pre-tokenizer is the one
    `tokenizer.ggml.pre` names in `pre_tokenizers` (every name llama.cpp knows), its regex list a chain of
    `Split(..., "isolated")` steps as llama.cpp applies them, `ignore_merges` and the BOS default as
    llama.cpp sets them for the name;
  * SentencePiece (`llama`): `models.BPE` with byte fallback, as transformers' SentencePiece converter does.
    Its merges are every split of a vocabulary token into two vocabulary tokens, ranked by the token's score
    (highest first), so HF's rank-ordered merging follows llama.cpp's score-ordered merging; the space prefix
    and the space -> U+2581 replacement are normalizers, as in Llama 2's tokenizer.json.
CONTROL (and UNKNOWN) tokens become special added tokens, USER_DEFINED ones plain added tokens; the
`[PAD{i}]` fillers the forward direction adds for unused embedding rows are dropped, so that HF -> GGUF -> HF
gives back the same vocabulary (and a second HF -> GGUF pads it again the same way).

Why not transformers' own GGUF tokenizer conversion: it needs torch and all of transformers, takes half a
minute on a 49k vocabulary, and knows only a few pre-tokenizer names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import FormatError, UnsupportedError
from . import pre_tokenizers
from .tokenizer import BYTE, CONTROL, NORMAL, PHANTOM_SPACE, UNKNOWN, UNUSED, USER_DEFINED

_PAD = re.compile(r"\[PAD(\d+)\]")


@dataclass
class HFTokenizer:
    """A rebuilt tokenizer plus what config.json / generation_config.json need from it."""

    tokenizer: Any                                   # tokenizers.Tokenizer
    config: dict[str, Any]                           # tokenizer_config.json
    special_ids: dict[str, int] = field(default_factory=dict)   # bos, eos, pad, unk -> id

    def save(self, folder: Path) -> list[Path]:
        tj = folder / "tokenizer.json"
        self.tokenizer.save(str(tj))
        tc = folder / "tokenizer_config.json"
        tc.write_text(json.dumps(self.config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return [tj, tc]


def _array(meta: dict, key: str) -> list | None:
    v = meta.get(key)
    if v is None:
        return None
    return v.tolist() if hasattr(v, "tolist") else list(v)


def _special_id(meta: dict, key: str, n: int) -> int | None:
    v = meta.get(f"tokenizer.ggml.{key}_token_id")
    if v is None:
        return None
    v = int(v)
    return v if 0 <= v < n else None     # llama.cpp ignores an out-of-range id the same way


def from_gguf(meta: dict, path=None) -> HFTokenizer:
    """The HF tokenizer for a GGUF's `tokenizer.*` metadata (FormatError / UnsupportedError when it has none usable)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    kind = meta.get("tokenizer.ggml.model")
    tokens = _array(meta, "tokenizer.ggml.tokens")
    if kind is None or tokens is None:
        raise UnsupportedError("the GGUF has no tokenizer (tokenizer.ggml.model / tokens)", path)
    if kind not in ("gpt2", "llama", "bert", "t5", "gemma4"):
        raise UnsupportedError(f"tokenizer model {kind!r} is not supported for Hugging Face output (supported: gpt2 "
                               "byte-level BPE, llama SentencePiece, bert WordPiece, t5 Unigram, gemma4)", path)
    n = len(tokens)
    types = _array(meta, "tokenizer.ggml.token_type") or [NORMAL] * n
    if len(types) < n:
        raise FormatError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens", path)
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise FormatError(f"tokenizer: token {i} is not a string", path)
        if types[i] == UNUSED and (m := _PAD.fullmatch(t)) and int(m.group(1)) == i:
            continue        # a filler for an unused embedding row, not a token of the original tokenizer
        if vocab.setdefault(t, i) != i:
            raise FormatError(f"tokenizer: token {t!r} appears twice (ids {vocab[t]} and {i})", path)
    ids = {k: _special_id(meta, k, n) for k in ("bos", "eos", "unknown", "padding", "seperator")}
    ids = {k: v for k, v in ids.items() if v is not None}
    unk = ids.get("unknown")
    if unk is None and kind in ("llama", "t5", "gemma4"):
        unk = next((i for i, ty in enumerate(types[:n]) if ty == UNKNOWN), None)

    pre = meta.get("tokenizer.ggml.pre")
    if kind == "gpt2":
        spec = pre_tokenizers.PRE_TOKENIZERS.get(pre or "default")
        if spec is None:
            raise UnsupportedError(f"pre-tokenizer {pre!r} is not one llama.cpp runs as byte-level BPE; known: "
                                   f"{', '.join(sorted(pre_tokenizers.PRE_TOKENIZERS))}", path)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta, path), ignore_merges=spec.ignore_merges, fuse_unk=False,
                                   byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.build(pre or "default")
        tok.decoder = decoders.ByteLevel()
        default_bos = spec.add_bos
    elif kind == "gemma4":      # BPE on raw UTF-8 with U+2581 for spaces; llama.cpp splits newline runs first
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(meta, path), byte_fallback=True, fuse_unk=False,
                                   unk_token=tokens[unk] if unk is not None else None))
        tok.normalizer = normalizers.Replace(" ", PHANTOM_SPACE)
        tok.pre_tokenizer = pre_tokenizers.from_regexes(("[^\n]+|[\n]+",), byte_level=False)
        tok.decoder = decoders.Sequence([decoders.Replace(PHANTOM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
        default_bos = True
    elif kind == "bert":
        tok = _wordpiece(meta, vocab, types, tokens[unk] if unk is not None else None)
        default_bos = True
    elif kind == "t5":
        tok = _unigram(meta, tokens, types, unk, path)
        default_bos = False
    else:
        space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        scores = _array(meta, "tokenizer.ggml.scores") or [0.0] * n
        if len(scores) < n:
            raise FormatError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens", path)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=_spm_merges(vocab, scores, types),
                                   unk_token=tokens[unk] if unk is not None else None, fuse_unk=True, byte_fallback=True))
        tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if space_prefix else [])
                                              + [normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                        + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
        default_bos = True

    text_of = {i: t for t, i in tok.get_vocab(with_added_tokens=False).items()}    # the HF-side spelling (WordPiece)
    added = [AddedToken(text_of.get(i, t), special=types[i] in (CONTROL, UNKNOWN), normalized=False)
             for t, i in vocab.items() if types[i] in (CONTROL, UNKNOWN, USER_DEFINED)]
    tok.add_tokens(added)       # ids are kept: every content is already in the vocabulary

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)) and "bos" in ids
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", kind == "t5")) and "eos" in ids
    add_sep = bool(meta.get("tokenizer.ggml.add_sep_token", kind == "bert")) and "seperator" in ids
    before = [ids["bos"]] if add_bos else []
    after = ([ids["eos"]] if add_eos else []) + ([ids["seperator"]] if add_sep else [])
    single = [*(tokens[i] for i in before), "$A", *(tokens[i] for i in after)]
    pair = [*single, *(tokens[i] for i in before), "$B", *(tokens[i] for i in after)]
    specials = {tokens[i]: i for i in before + after}
    steps = [processors.ByteLevel(trim_offsets=False)] if kind == "gpt2" else []
    if specials:
        steps.append(processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                                   special_tokens=list(specials.items())))
    if steps:
        tok.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)

    config: dict[str, Any] = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend",
                              "clean_up_tokenization_spaces": False}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token"),
                      ("seperator", "sep_token")):
        if key in ids:
            config[name] = tokens[ids[key]]
    if unk is not None:
        config.setdefault("unk_token", tokens[unk])
    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length")
    if ctx is not None:
        config["model_max_length"] = int(ctx)
    template = meta.get("tokenizer.chat_template")
    named = {k.rsplit(".", 1)[1]: v for k, v in meta.items()
             if k.startswith("tokenizer.chat_template.") and isinstance(v, str)}
    if named:
        config["chat_template"] = ([{"name": "default", "template": template}] if isinstance(template, str) else []) \
            + [{"name": k, "template": v} for k, v in named.items()]
    elif isinstance(template, str):
        config["chat_template"] = template
    out_ids = {"bos": ids.get("bos"), "eos": ids.get("eos"), "pad": ids.get("padding"), "unk": unk}
    return HFTokenizer(tok, config, {k: v for k, v in out_ids.items() if v is not None})


def _merges(meta: dict, path) -> list[tuple[str, str]]:
    merges = []
    for m in _array(meta, "tokenizer.ggml.merges") or []:
        pos = m.find(" ", 1) if isinstance(m, str) else -1    # llama.cpp splits at the first space after char 0
        if pos < 0:
            raise FormatError(f"tokenizer: malformed merge {m!r}", path)
        merges.append((m[:pos], m[pos + 1:]))
    return merges


def _wordpiece(meta: dict, vocab: dict[str, int], types: list, unk: str | None):
    """llama.cpp's `bert` vocabulary back to WordPiece: `▁word` is a word start, any other piece a `##` continuation."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pt

    pieces = {}
    for t, i in vocab.items():
        if types[i] in (CONTROL, UNKNOWN, USER_DEFINED):
            pieces[t] = i
        elif t.startswith(PHANTOM_SPACE) and len(t) > 1:
            pieces[t[1:]] = i
        else:
            pieces["##" + t] = i
    lowercase = bool(meta.get("tokenizer.ggml.normalizer.lowercase", True))     # llama.cpp's defaults
    strip = bool(meta.get("tokenizer.ggml.normalizer.strip_accents", lowercase))
    tok = Tokenizer(models.WordPiece(pieces, unk_token=unk or "[UNK]", max_input_chars_per_word=100))
    bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase)
    # llama.cpp strips every combining mark (BertNormalizer only the nonspacing ones): as llama.cpp does
    tok.normalizer = normalizers.Sequence([bert, normalizers.NFD(), normalizers.Replace(Regex(r"\p{M}"), "")]) \
        if strip else bert
    tok.pre_tokenizer = pt.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _unigram(meta: dict, tokens: list, types: list, unk: int | None, path):
    """llama.cpp's `t5` vocabulary back to a SentencePiece Unigram tokenizer.json (T5's layout)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pt

    scores = _array(meta, "tokenizer.ggml.scores")
    if scores is None or len(scores) < len(tokens):
        raise FormatError("a t5 (Unigram) vocabulary needs tokenizer.ggml.scores for every token", path)
    tok = Tokenizer(models.Unigram([(t, float(sc)) for t, sc in zip(tokens, scores)], unk_id=unk,
                                   byte_fallback=BYTE in types))
    steps = []
    charsmap = _array(meta, "tokenizer.ggml.precompiled_charsmap")
    if charsmap:
        steps.append(normalizers.Precompiled(bytes(int(b) & 0xFF for b in charsmap)))
    if bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False)):
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]   # spaces only
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    prefix = "always" if bool(meta.get("tokenizer.ggml.add_space_prefix", True)) else "never"
    tok.pre_tokenizer = pt.Metaspace(replacement=PHANTOM_SPACE, prepend_scheme=prefix, split=True)
    tok.decoder = decoders.Metaspace(replacement=PHANTOM_SPACE, prepend_scheme=prefix, split=True)
    return tok


def _spm_merges(vocab: dict[str, int], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a normal token into two vocabulary tokens, best score first (ties by id)."""
    found = []
    for t, i in vocab.items():
        if types[i] != NORMAL or len(t) < 2:
            continue
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None:
                found.append((-float(scores[i]), i, li, ri, left, right))
    found.sort(key=lambda f: f[:4])
    return [(f[4], f[5]) for f in found]


