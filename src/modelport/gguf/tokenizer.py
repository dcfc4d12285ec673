"""Hugging Face tokenizer -> `tokenizer.ggml.*` metadata (docs/gguf.md §5), validated before anything is written.

Two tokenizer families, as llama.cpp runs them:
  * byte-level BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen2, SmolLM, ...) from tokenizer.json:
    tokens, merges, token types (added special tokens are CONTROL: that is how llama.cpp knows to parse them);
  * SentencePiece (`"llama"`: Llama 2, Mistral v0.1, TinyLlama, Phi-3) from tokenizer.model (parsed with our
    protobuf walker, so `sentencepiece` is not needed), or from a tokenizer.json that is a SentencePiece BPE
    (BPE with byte fallback and a Metaspace pre-tokenizer). There the scores give the merge order: a token
    made by merge rank r gets score -r, so llama.cpp's score-ordered merging follows HF's rank order.

`tokenizer.ggml.pre` picks llama.cpp's pre-tokenizer regex. Like llama.cpp's converter we hash the ids the
tokenizer gives for a fixed check text and look the hash up in its table; unlike it, a tokenizer the table
does not know (any retrained or fine-tuned one) is not refused: its pre-tokenizer is run on a probe text and
named after the llama.cpp pre-tokenizer that splits it the same way (`pre_tokenizers.match`), and the result
says which one it matched (`Vocab.pre_match`). Whether llama.cpp then tokenizes like HF is checked in the
tests with `Llama(vocab_only=True)`, name by name.

Why not gguf-py's `SpecialVocab`/`LlamaHfVocab`: they need transformers at conversion time, give every
SentencePiece token from tokenizer.json the same score (-1000, which makes llama.cpp merge in the wrong
order), and do not validate; llama.cpp aborts the whole process on a duplicate token.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import protobuf as pb
from ..core.errors import FormatError, UnsupportedError
from ..core.source import read_json
from . import pre_tokenizers
from .pre_tokenizer_hashes import KNOWN_PRE_HASHES

# token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: The check text llama.cpp's convert_hf_to_gguf encodes to identify a BPE pre-tokenizer (get_vocab_base_pre).
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'  # noqa: E501 - llama.cpp's check text, verbatim

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "added_tokens.json", "generation_config.json")


@dataclass
class Vocab:
    """Everything llama.cpp needs to tokenize like the HF tokenizer."""

    model: str                                   # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                                     # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)   # bos, eos, unknown, padding, ...
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    named_templates: dict[str, str] = field(default_factory=dict)
    pre_source: str = ""                         # "hash" or "structure": how `pre` was found
    pre_match: str = ""                          # how, in words (convert prints it, --json carries it)
    add_sep: bool | None = None                  # WordPiece: [SEP] after the text
    lowercase: bool | None = None                # WordPiece: BertNormalizer's lowercase / strip_accents
    strip_accents: bool | None = None
    remove_extra_whitespaces: bool | None = None  # Unigram: SentencePiece's whitespace collapsing
    charsmap: bytes | None = None                # Unigram: SentencePiece's precompiled normalization map
    notes: list[str] = field(default_factory=list)   # where llama.cpp will not tokenize exactly like HF, and why

    def summary(self) -> dict[str, Any]:
        """What the conversion tells the user (convert prints it, --json carries it as details.tokenizer)."""
        return {"model": self.model, "pre_tokenizer": self.pre, "found_by": self.pre_source, "how": self.pre_match,
                "tokens": len(self.tokens), "notes": list(self.notes)}

    def token_text(self, i: int) -> str:
        return self.tokens[i]

    def stop_tokens(self) -> list[str]:
        """Token strings that end a turn: eos plus the well-known end-of-turn markers present in the vocab."""
        out = []
        eos = self.special_ids.get("eos")
        if eos is not None:
            out.append(self.tokens[eos])
        present = set(t for t, ty in zip(self.tokens, self.types) if ty in (CONTROL, USER_DEFINED))
        for t in ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>"):
            if t in present and t not in out:
                out.append(t)
        return out

    def validate(self, n_rows: int | None, path=None) -> None:
        """llama.cpp's hard rules, checked before writing (a duplicate token aborts llama.cpp's process)."""
        seen: dict[str, int] = {}
        for i, t in enumerate(self.tokens):
            if not isinstance(t, str) or t == "":
                raise FormatError(f"tokenizer: token {i} is empty", path)
            j = seen.setdefault(t, i)
            if j != i:
                raise FormatError(f"tokenizer: token {t!r} appears twice (ids {j} and {i}); llama.cpp cannot load that", path)
        if n_rows is not None and len(self.tokens) != n_rows:
            raise FormatError(f"tokenizer has {len(self.tokens)} tokens but the embedding has {n_rows} rows", path)
        n = len(self.tokens)
        for key, i in self.special_ids.items():
            if not 0 <= i < n:
                raise FormatError(f"tokenizer: {key} token id {i} is outside the vocabulary of {n}", path)

    def metadata(self) -> dict[str, Any]:
        """The `tokenizer.*` GGUF keys, with llama.cpp's types."""
        from gguf.constants import GGUFValueType as T
        from gguf.gguf_writer import GGUFValue

        meta: dict[str, Any] = {
            "tokenizer.ggml.model": self.model,
            "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": GGUFValue(self.tokens, T.ARRAY, T.STRING),
        }
        if self.scores is not None:
            meta["tokenizer.ggml.scores"] = GGUFValue([float(s) for s in self.scores], T.ARRAY, T.FLOAT32)
        meta["tokenizer.ggml.token_type"] = GGUFValue([int(t) for t in self.types], T.ARRAY, T.INT32)
        if self.merges is not None:
            meta["tokenizer.ggml.merges"] = GGUFValue(self.merges, T.ARRAY, T.STRING)
        for key in ("bos", "eos", "unknown", "padding", "seperator", "eot"):
            if key in self.special_ids:
                meta[f"tokenizer.ggml.{key}_token_id"] = np.uint32(self.special_ids[key])
        if self.add_bos is not None:
            meta["tokenizer.ggml.add_bos_token"] = bool(self.add_bos)
        if self.add_eos is not None:
            meta["tokenizer.ggml.add_eos_token"] = bool(self.add_eos)
        if self.add_space_prefix is not None:
            meta["tokenizer.ggml.add_space_prefix"] = bool(self.add_space_prefix)
        for key, flag in (("add_sep_token", self.add_sep), ("normalizer.lowercase", self.lowercase),
                          ("normalizer.strip_accents", self.strip_accents),
                          ("remove_extra_whitespaces", self.remove_extra_whitespaces)):
            if flag is not None:
                meta[f"tokenizer.ggml.{key}"] = bool(flag)
        if self.charsmap:
            meta["tokenizer.ggml.precompiled_charsmap"] = GGUFValue(list(self.charsmap), T.ARRAY, T.UINT8)
        if self.chat_template:
            meta["tokenizer.chat_template"] = self.chat_template
        for name, template in self.named_templates.items():
            meta[f"tokenizer.chat_template.{name}"] = template
        return meta


# --- reading ------------------------------------------------------------------------------------

def _json(files: dict[str, Path], name: str):
    p = files.get(name)
    return read_json(p, cap=256 * 1024 * 1024) if p is not None else None


def _content(v) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def load_vocab(files: dict[str, Path], config: dict | None, n_rows: int | None, path=None) -> Vocab:
    """Build and validate the vocabulary from a model folder's tokenizer files.

    `files` maps file names (tokenizer.json, tokenizer.model, ...) to paths; `n_rows` is the number of
    token-embedding rows (the vocabulary is padded with UNUSED `[PAD{i}]` tokens up to it, as llama.cpp's
    converter does; more tokens than rows is an error).
    """
    config = config or {}
    tj = _json(files, "tokenizer.json")
    tc = _json(files, "tokenizer_config.json") or {}
    if not isinstance(tc, dict):
        raise FormatError("tokenizer_config.json is not an object", files.get("tokenizer_config.json"))
    if "tokenizer.model" in files and (tj is None or _is_spm_json(tj)):
        vocab = _from_sentencepiece(files["tokenizer.model"], tj)
    elif tj is not None:
        model = tj.get("model") or {}
        kind = model.get("type")
        if kind == "WordPiece":
            vocab = _from_wordpiece_json(tj, files["tokenizer.json"])
        elif kind == "Unigram":
            vocab = _from_unigram_json(tj, files["tokenizer.json"])
        elif kind != "BPE":
            raise UnsupportedError(f"tokenizer model {kind!r} is not supported for GGUF (supported: byte-level BPE, "
                                   "SentencePiece, WordPiece, Unigram)", files.get("tokenizer.json"))
        else:
            vocab = _from_spm_json(tj) if _is_spm_json(tj) else _from_bpe_json(tj, files["tokenizer.json"])
    else:
        raise UnsupportedError("no tokenizer.json or tokenizer.model: GGUF needs the tokenizer", path)

    size = n_rows if n_rows is not None else config.get("vocab_size")
    if size is not None and len(vocab.tokens) < size:
        for i in range(len(vocab.tokens), size):
            vocab.tokens.append(f"[PAD{i}]")
            vocab.types.append(UNUSED)
            if vocab.scores is not None:
                vocab.scores.append(-10000.0 if vocab.model == "llama" else 0.0)
    if vocab.model in ("llama", "t5") and tj is not None:
        vocab.notes += _normalized_added(tj, files.get("tokenizer.json"))
    _specials(vocab, tj, tc, config, _json(files, "special_tokens_map.json") or {})
    _flags(vocab, tj, tc)
    _templates(vocab, files, tc)
    vocab.validate(n_rows, path)
    if vocab.model == "gpt2":
        vocab.pre, vocab.pre_source, vocab.pre_match = pre_tokenizer(tj, files.get("tokenizer.json"))
    return vocab


def _is_spm_json(tj: dict) -> bool:
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    return "ByteLevel" not in _step_types(tj.get("pre_tokenizer"))


def _steps(node) -> list[dict]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        out = []
        for sub in node.get("pretokenizers") or node.get("normalizers") or node.get("processors") or []:
            out.extend(_steps(sub))
        return out
    return [node]


def _step_types(node) -> list[str]:
    return [s.get("type") for s in _steps(node)]


def _ordered(mapping: dict[str, int], added: list[dict], what, path) -> list[str | None]:
    ids = list(mapping.values()) + [a["id"] for a in added]
    top = max(ids) + 1 if ids else 0
    if top > 50_000_000:
        raise FormatError(f"tokenizer: token id {top - 1} is implausibly large", path)
    tokens: list[str | None] = [None] * top
    for tok, i in mapping.items():
        if not isinstance(i, int) or i < 0:
            raise FormatError(f"tokenizer: {what} token {tok!r} has id {i!r}", path)
        if tokens[i] is not None and tokens[i] != tok:
            raise FormatError(f"tokenizer: id {i} is given to both {tokens[i]!r} and {tok!r}", path)
        tokens[i] = tok
    return tokens


def _added(tj: dict, path) -> list[dict]:
    out = []
    for a in tj.get("added_tokens") or []:
        if not isinstance(a, dict) or not isinstance(a.get("id"), int) or a["id"] < 0 or not isinstance(a.get("content"), str):
            raise FormatError("tokenizer.json: malformed added_tokens entry", path)
        out.append(a)
    return out


def _normalized_added(tj: dict, path) -> list[str]:
    """SentencePiece vocabularies: HF matches an added token with normalized=true in the normalized text (a space
    before it becomes part of the match); llama.cpp finds every added token in the raw text."""
    names = [a["content"] for a in _added(tj, path) if a.get("normalized") and not a.get("special")]
    if not names:
        return []
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [f"added tokens {shown} are normalized=true: HF matches them after SentencePiece's space handling, "
            "llama.cpp in the raw text, so a space before one may tokenize differently"]


def _looks_special(t: str) -> bool:
    """llama.cpp's converter treats these added tokens as CONTROL even when not marked special."""
    return (t.startswith("<|") and t.endswith("|>")) or (t.startswith("<｜") and t.endswith("｜>")) \
        or t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<unused") and t.endswith(">"))


def _fill(tokens: list[str | None], types: list[int]) -> None:
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = UNUSED


def _from_bpe_json(tj: dict, path: Path) -> Vocab:
    model = tj["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise FormatError("tokenizer.json: model.vocab is not an object", path)
    added = _added(tj, path)
    tokens = _ordered(vocab, [], "vocab", path)
    top = max(len(tokens), max((a["id"] + 1 for a in added), default=0))
    tokens += [None] * (top - len(tokens))
    types = [NORMAL] * top
    for a in added:
        i, t = a["id"], a["content"]
        tokens[i] = t
        types[i] = CONTROL if a.get("special") or _looks_special(t) else USER_DEFINED
    _fill(tokens, types)
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            merges.append(" ".join(p.replace(" ", "\u0120") for p in m))
        else:
            raise FormatError("tokenizer.json: malformed merge entry", path)
    vocab = Vocab("gpt2", "", tokens, types, None, merges)     # `pre` is named once the vocabulary is valid
    normalizing = [t for t in _step_types(tj.get("normalizer")) if t]
    if normalizing:
        vocab.notes.append(f"tokenizer.json normalizes text first ({', '.join(normalizing)}); llama.cpp's byte-level "
                           "BPE does not, so text the normalizer changes may tokenize differently")
    return vocab


def _from_spm_json(tj: dict) -> Vocab:
    model = tj["model"]
    vocab = model.get("vocab") or {}
    added = _added(tj, None)
    tokens = _ordered(vocab, [], "vocab", None)
    top = max(len(tokens), max((a["id"] + 1 for a in added), default=0))
    tokens += [None] * (top - len(tokens))
    types = [NORMAL] * top
    scores = [0.0] * top
    ranks: dict[str, int] = {}
    for r, m in enumerate(model.get("merges") or []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        ranks.setdefault(a + b, r)
    for i, t in enumerate(tokens):
        if t is None:
            continue
        if _BYTE_TOKEN.fullmatch(t):
            types[i] = BYTE
        elif t in ranks:
            scores[i] = -float(ranks[t])
    unk = model.get("unk_token")
    for a in added:
        i, t = a["id"], a["content"]
        tokens[i] = t
        types[i] = CONTROL if a.get("special") else USER_DEFINED
        scores[i] = 0.0
    if unk in vocab:
        types[vocab[unk]] = UNKNOWN
    _fill(tokens, types)
    space_prefix = _spm_space_prefix(tj)
    return Vocab("llama", "default", tokens, types, scores, None, add_space_prefix=space_prefix, pre_source="structure",
                 pre_match="SentencePiece BPE: llama.cpp's 'llama' tokenizer")


PHANTOM_SPACE = "\u2581"


def _from_wordpiece_json(tj: dict, path: Path) -> Vocab:
    """BERT's WordPiece as llama.cpp's `bert` vocabulary: a word-initial piece gets the phantom space U+2581, a
    continuation loses its `##` (llama.cpp matches `▁word` then the rest); added tokens stay as they are."""
    model = tj["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise FormatError("tokenizer.json: model.vocab is not an object", path)
    prefix = model.get("continuing_subword_prefix") or "##"
    added = _added(tj, path)
    tokens = _ordered(vocab, [], "vocab", path)
    top = max(len(tokens), max((a["id"] + 1 for a in added), default=0))
    tokens += [None] * (top - len(tokens))
    types = [NORMAL] * top
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):      # added tokens stay as they are: llama.cpp finds them in the raw text
        if t is not None and types[i] == NORMAL:
            tokens[i] = t[len(prefix):] if t.startswith(prefix) and len(t) > len(prefix) else PHANTOM_SPACE + t
    _fill(tokens, types)
    lowercase = strip = None
    for step in _steps(tj.get("normalizer")):
        if step.get("type") == "BertNormalizer":
            lowercase = bool(step.get("lowercase", True))
            strip = step.get("strip_accents")
            strip = lowercase if strip is None else bool(strip)
        elif step.get("type") == "Lowercase":
            lowercase = True
        elif step.get("type") == "StripAccents":
            strip = True
    return Vocab("bert", "default", tokens, types, pre_source="structure", lowercase=bool(lowercase),
                 strip_accents=bool(lowercase if strip is None else strip),
                 pre_match="WordPiece: llama.cpp's 'bert' tokenizer (words split on spaces and punctuation)")


def _from_unigram_json(tj: dict, path: Path) -> Vocab:
    """SentencePiece Unigram (T5, XLM-R, mT5) as llama.cpp's `t5` vocabulary: pieces with their log-probability
    scores, the precompiled normalization map and the whitespace flags, as llama.cpp's Viterbi needs them."""
    import base64

    model = tj["model"]
    pieces = model.get("vocab")
    if not isinstance(pieces, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                               and isinstance(p[1], (int, float)) for p in pieces):
        raise FormatError("tokenizer.json: Unigram vocab is not a list of [piece, score]", path)
    tokens: list[str | None] = [p[0] for p in pieces]
    scores = [float(p[1]) for p in pieces]
    types = [BYTE if model.get("byte_fallback") and _BYTE_TOKEN.fullmatch(t) else NORMAL for t in tokens]
    unk = model.get("unk_id")
    if isinstance(unk, int) and 0 <= unk < len(tokens):
        types[unk] = UNKNOWN
    for a in _added(tj, path):
        i = a["id"]
        while len(tokens) <= i:
            tokens.append(None)
            scores.append(0.0)
            types.append(UNUSED)
        if tokens[i] == a["content"] and types[i] == UNKNOWN:
            continue
        tokens[i] = a["content"]
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    _fill(tokens, types)
    charsmap = None
    extra_spaces = False
    for step in _steps(tj.get("normalizer")):
        if step.get("type") == "Precompiled" and step.get("precompiled_charsmap"):
            try:
                charsmap = base64.b64decode(step["precompiled_charsmap"], validate=True)
            except (ValueError, TypeError) as e:
                raise FormatError("tokenizer.json: precompiled_charsmap is not base64", path) from e
        elif step.get("type") == "Replace" and (step.get("pattern") or {}).get("Regex") == " {2,}":
            extra_spaces = True
    return Vocab("t5", "default", tokens, types, scores, None, add_space_prefix=_spm_space_prefix(tj),
                 remove_extra_whitespaces=extra_spaces, charsmap=charsmap, pre_source="structure",
                 pre_match="Unigram: llama.cpp's 't5' tokenizer (SentencePiece Viterbi)")


def _spm_space_prefix(tj: dict) -> bool:
    for s in _steps(tj.get("pre_tokenizer")):
        if s.get("type") == "Metaspace":
            return s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
    for s in _steps(tj.get("normalizer")):
        if s.get("type") == "Prepend" and s.get("prepend") == "\u2581":
            return True
    return False


def _from_sentencepiece(model_path: Path, tj: dict | None) -> Vocab:
    data = model_path.read_bytes()
    if len(data) > 512 * 1024 * 1024:
        raise FormatError("tokenizer.model is too large", model_path)
    tokens, scores, types = [], [], []
    add_dummy_prefix = extra_spaces = True      # SentencePiece's defaults
    unigram, charsmap = True, b""
    for fnum, wire, a, b in pb.fields(data, 0, len(data), model_path):
        if fnum == 1 and wire == pb.LEN:
            piece, score, ptype = None, 0.0, NORMAL
            for f2, w2, a2, b2 in pb.fields(data, a, b, model_path):
                if f2 == 1 and w2 == pb.LEN:
                    piece = pb.text(data, a2, b2, "piece", model_path)
                elif f2 == 2 and w2 == pb.I32:
                    score = pb.fixed32_float(data, a2)
                elif f2 == 3 and w2 == pb.VARINT:
                    ptype = a2
            if piece is None:
                raise FormatError(f"tokenizer.model: piece {len(tokens)} has no text", model_path)
            tokens.append(piece)
            scores.append(score)
            types.append(ptype if ptype in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
        elif fnum == 2 and wire == pb.LEN:   # trainer_spec: model_type 1 is Unigram, 2 BPE
            for f2, w2, a2, _ in pb.fields(data, a, b, model_path):
                if f2 == 3 and w2 == pb.VARINT:
                    unigram = a2 == 1
        elif fnum == 3 and wire == pb.LEN:   # normalizer_spec
            for f2, w2, a2, b2 in pb.fields(data, a, b, model_path):
                if f2 == 2 and w2 == pb.LEN:
                    charsmap = bytes(data[a2:b2])
                elif f2 == 3 and w2 == pb.VARINT:
                    add_dummy_prefix = bool(a2)
                elif f2 == 4 and w2 == pb.VARINT:
                    extra_spaces = bool(a2)
    if not tokens:
        raise FormatError("tokenizer.model has no pieces", model_path)
    for a in _added(tj or {}, model_path):
        i, t = a["id"], a["content"]
        while len(tokens) <= i:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-10000.0)
            types.append(UNUSED)
        if types[i] != UNUSED and tokens[i] == t and types[i] in (CONTROL, UNKNOWN):
            continue
        tokens[i] = t
        scores[i] = -1000.0
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    if unigram:     # T5, mT5, XLM-R: llama.cpp's Viterbi tokenizer, not its score-ordered merging
        return Vocab("t5", "default", tokens, types, scores, None, add_space_prefix=add_dummy_prefix,
                     remove_extra_whitespaces=extra_spaces, charsmap=charsmap or None, pre_source="structure",
                     pre_match="SentencePiece Unigram: llama.cpp's 't5' tokenizer")
    return Vocab("llama", "default", tokens, types, scores, None, add_space_prefix=add_dummy_prefix,
                 pre_source="structure", pre_match="SentencePiece BPE: llama.cpp's 'llama' tokenizer")


# --- pre-tokenizer ------------------------------------------------------------------------------

def chkhsh(tokenizer_json: Path | Any) -> str | None:
    """llama.cpp's identifier of a BPE tokenizer: sha256 of str(ids) for CHKTXT (None without `tokenizers`).
    Takes the tokenizer.json path or an already loaded `tokenizers.Tokenizer`."""
    if isinstance(tokenizer_json, Path):
        tokenizer_json = _load(tokenizer_json)
    if tokenizer_json is None:
        return None
    ids = tokenizer_json.encode(CHKTXT).ids
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


def _load(source: Path | dict):
    """A `tokenizers.Tokenizer` from tokenizer.json (a path, or its parsed dict); None without `tokenizers`."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        return Tokenizer.from_file(str(source)) if isinstance(source, Path) else Tokenizer.from_str(json.dumps(source))
    except Exception as e:  # noqa: BLE001 - tokenizers' own parse error, said in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"tokenizer.json cannot be loaded by `tokenizers`: {first}",
                          source if isinstance(source, Path) else None) from e


def pre_tokenizer(tj: dict, path: Path | None) -> tuple[str, str, str]:
    """(tokenizer.ggml.pre, "hash" | "structure", how it was found in words) for a byte-level BPE tokenizer.json.

    llama.cpp's hash table first; then by behaviour: the name whose pre-tokenizer splits a probe text exactly like
    this one (pre_tokenizers.match). Refused, naming the nearest known one, when none does."""
    tok = _load(path if path is not None else tj)
    h = chkhsh(tok) if tok is not None else None
    if h is not None and h in KNOWN_PRE_HASHES:
        name = KNOWN_PRE_HASHES[h]
        return name, "hash", f"its check-text hash is llama.cpp's '{name}'"
    if any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in _steps(tj.get("pre_tokenizer"))):
        raise UnsupportedError("byte-level pre-tokenizer with add_prefix_space=true has no llama.cpp equivalent", path)
    if tok is None:
        raise UnsupportedError("this tokenizer is not in llama.cpp's hash table, and naming its pre-tokenizer needs "
                               "the `tokenizers` package to load tokenizer.json", path)
    if tok.pre_tokenizer is None:
        raise UnsupportedError("byte-level BPE without a pre-tokenizer has no llama.cpp equivalent", path)
    found = pre_tokenizers.match(tok.pre_tokenizer, bool((tj.get("model") or {}).get("ignore_merges")))
    if found.name is None:
        raise UnsupportedError(f"pre-tokenizer is not in llama.cpp's table: it {found.how}", path)
    return found.name, "structure", f"not in llama.cpp's hash table; it {found.how}"


# --- special tokens, flags, chat template -------------------------------------------------------

def _specials(vocab: Vocab, tj, tc: dict, config: dict, stm: dict) -> None:
    index = {t: i for i, t in enumerate(vocab.tokens)}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                      ("padding", "pad_token"), ("seperator", "sep_token")):
        text = _content(tc.get(name)) or _content(stm.get(name))
        if text is not None and text in index:
            vocab.special_ids[key] = index[text]
            continue
        cid = config.get(f"{name}_id")
        if isinstance(cid, list):
            cid = cid[0] if cid else None
        if isinstance(cid, int) and 0 <= cid < len(vocab.tokens):
            vocab.special_ids[key] = cid
    cls = _content(tc.get("cls_token")) or _content(stm.get("cls_token"))
    if "bos" not in vocab.special_ids and cls in index:      # BERT: [CLS] is what llama.cpp puts first
        vocab.special_ids["bos"] = index[cls]
    if "unknown" not in vocab.special_ids and tj is not None:
        unk = (tj.get("model") or {}).get("unk_token")
        if isinstance(unk, str) and unk in index:
            vocab.special_ids["unknown"] = index[unk]
    if vocab.model in ("llama", "t5"):
        for key, default in (("unknown", UNKNOWN), ):
            if key not in vocab.special_ids:
                found = [i for i, t in enumerate(vocab.types) if t == default]
                if found:
                    vocab.special_ids[key] = found[0]


def _template_adds(tj) -> tuple[bool | None, bool | None]:
    """Whether tokenizer.json's post-processor puts a special token before / after a single sequence."""
    if not isinstance(tj, dict):
        return None, None
    for step in _steps(tj.get("post_processor")):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            kinds = ["A" if "Sequence" in item else "S" for item in single if isinstance(item, dict)]
            if "A" in kinds:
                i = kinds.index("A")
                return "S" in kinds[:i], "S" in kinds[i + 1:]
            return None, None
        if step.get("type") in ("BertProcessing", "RobertaProcessing"):
            return True, True
    return False, False


def _flags(vocab: Vocab, tj, tc: dict) -> None:
    bos, eos = _template_adds(tj)
    if tj is None and vocab.model == "llama":
        bos, eos = True, False      # SentencePiece Llama defaults
    vocab.add_bos = tc["add_bos_token"] if isinstance(tc.get("add_bos_token"), bool) else bos
    vocab.add_eos = tc["add_eos_token"] if isinstance(tc.get("add_eos_token"), bool) else eos
    if vocab.add_bos is None:
        vocab.add_bos = vocab.model == "llama"
    if vocab.add_eos is None:
        vocab.add_eos = False
    if vocab.model == "bert":       # [CLS] text [SEP]: llama.cpp adds the [SEP] as add_sep, not as EOS
        vocab.add_sep, vocab.add_eos = bool(vocab.add_eos) and "seperator" in vocab.special_ids, False
    if vocab.add_bos and "bos" not in vocab.special_ids:
        vocab.add_bos = False


def _templates(vocab: Vocab, files: dict[str, Path], tc: dict) -> None:
    template = None
    if "chat_template.jinja" in files:
        p = files["chat_template.jinja"]
        if p.stat().st_size > 16 * 1024 * 1024:
            raise FormatError("chat template is too large", p)
        template = p.read_text(encoding="utf-8")
    if template is None:
        ct = tc.get("chat_template")
        if ct is None and "chat_template.json" in files:
            ct = (_json(files, "chat_template.json") or {}).get("chat_template")
        if isinstance(ct, str):
            template = ct
        elif isinstance(ct, list):
            for item in ct:
                if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str):
                    if item["name"] == "default":
                        template = item["template"]
                    else:
                        vocab.named_templates[item["name"]] = item["template"]
    vocab.chat_template = template
