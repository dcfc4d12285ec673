"""`compare` and `perplexity`: the same token ids through one or two engines, scored the same way.

Perplexity follows llama.cpp's perplexity tool, so a number from either engine can be set beside
the tool's: the text is tokenized with the tokenizer's own specials (BOS where the model adds one),
cut into consecutive windows of n_ctx tokens (at least two are needed), the first token of each
window is replaced by BOS when the model adds one, and only the second half of each window is
scored (every prediction there has at least n_ctx/2 tokens of context).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import UnsupportedError
from .base import Engine


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Perplexity:
    perplexity: float
    windows: int
    n_ctx: int
    scored_tokens: int
    tokens: int
    window_perplexities: list[float] = field(default_factory=list)
    engine: str = ""

    def to_dict(self):
        return asdict(self)


def perplexity(engine: Engine, text: str, n_ctx: int = 512) -> Perplexity:
    """Perplexity of `text` in windows of `n_ctx` tokens (llama.cpp's method)."""
    if n_ctx < 4:
        raise UnsupportedError(f"--ctx must be at least 4, not {n_ctx}")
    if n_ctx > engine.n_ctx:
        raise UnsupportedError(f"--ctx {n_ctx} is larger than the engine's context of {engine.n_ctx}")
    tokens = engine.tokenize(text, add_special=True)
    if len(tokens) < 2 * n_ctx:
        raise UnsupportedError(f"the text gives {len(tokens)} tokens; a context of {n_ctx} needs at least {2 * n_ctx}")
    first = n_ctx // 2
    nll, count, per_window = 0.0, 0, []
    for w in range(len(tokens) // n_ctx):
        window = tokens[w * n_ctx:(w + 1) * n_ctx]
        if engine.add_bos and engine.bos_id is not None:
            window = [engine.bos_id] + window[1:]
        logp = log_softmax(engine.logits(window)[first:n_ctx - 1])
        targets = np.asarray(window[first + 1:], dtype=np.int64)
        window_nll = -float(logp[np.arange(len(targets)), targets].sum())
        nll += window_nll
        count += len(targets)
        per_window.append(math.exp(nll / count))
    return Perplexity(math.exp(nll / count), len(per_window), n_ctx, count, len(tokens), per_window, engine.name)


@dataclass
class Comparison:
    tokens: int                 # ids fed to both
    positions: int              # predictions compared
    argmax_agreement: float     # share of positions where both pick the same next token
    mean_kl: float              # mean KL(A || B) of the next-token distributions, nats
    max_kl: float
    top1_prob_gap: float        # mean |pA(t) - pB(t)| for t = A's top token
    perplexity_a: float         # of the text's own next tokens
    perplexity_b: float
    first_disagreement: int | None
    note: str = ""
    engine_a: str = ""
    engine_b: str = ""

    def to_dict(self):
        return asdict(self)


def shared_ids(a: Engine, b: Engine, text: str, limit: int) -> tuple[list[int], str]:
    """Tokenize once with A; B must agree, or at least have the same vocabulary."""
    ids_a = a.tokenize(text, add_special=True)
    ids_b = b.tokenize(text, add_special=True)
    if ids_a == ids_b:
        note = ""
    else:
        vocab_a, vocab_b = a.vocabulary(), b.vocabulary()
        if vocab_a != vocab_b:
            at = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
            raise UnsupportedError(f"the two tokenizers give different ids for this text (from token {at}) and "
                                   f"their vocabularies differ ({len(vocab_a)} vs {len(vocab_b)} tokens); "
                                   "logits cannot be compared position by position")
        note = "the tokenizers split the text differently; both models were fed A's ids (identical vocabularies)"
    ids = ids_a[:limit]
    if len(ids) < 2:
        raise UnsupportedError(f"the text gives {len(ids)} token(s); at least 2 are needed")
    return ids, note


def compare(a: Engine, b: Engine, text: str, tokens: int = 256) -> Comparison:
    ids, note = shared_ids(a, b, text, tokens)
    la, lb = a.logits(ids), b.logits(ids)
    width = min(la.shape[1], lb.shape[1])      # padded vocabularies: compare the real part
    if la.shape[1] != lb.shape[1]:
        note = (note + "; " if note else "") + f"logit widths differ ({la.shape[1]} vs {lb.shape[1]}); compared the first {width}"
    pa, pb = log_softmax(la[:, :width]), log_softmax(lb[:, :width])
    top_a, top_b = pa.argmax(axis=1), pb.argmax(axis=1)
    kl = (np.exp(pa) * (pa - pb)).sum(axis=1)
    rows = np.arange(len(ids))
    gap = np.abs(np.exp(pa[rows, top_a]) - np.exp(pb[rows, top_a]))
    targets = np.asarray(ids[1:])
    ppl_a = math.exp(-float(pa[rows[:-1], targets].mean()))
    ppl_b = math.exp(-float(pb[rows[:-1], targets].mean()))
    differ = np.nonzero(top_a != top_b)[0]
    return Comparison(len(ids), len(ids), float((top_a == top_b).mean()), float(kl.mean()), float(kl.max()),
                      float(gap.mean()), ppl_a, ppl_b, int(differ[0]) if len(differ) else None, note, a.name, b.name)
