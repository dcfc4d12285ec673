"""What every model family shares: the `Family` base class, the tensor transforms and the metadata helpers.

A family is one class (one file in this package) that holds everything modelport knows about it:
  * `tensors`: (HF name template, GGUF name template) pairs, `{bid}` standing for the layer number, kept as data
    so that the same table runs both ways (`gguf_name` / `hf_name`);
  * `transforms`: GGUF name suffix -> a `Transform`, each with its exact inverse (`to_gguf` / `to_hf`);
  * `hparams()`: config.json -> `<arch>.*` keys with the types llama.cpp's loader insists on (u32 counts, f32
    floats; docs/gguf.md §2), and `config_from_gguf()`: the way back;
  * `tensor_shapes()`: the GGUF tensors of a bare config (what `estimate` lays out without weights);
  * `lora_targets`, the HF `model_type`s / architectures it claims and llama.cpp's arch name (`name`);
  * `split_tensor` / `merge_tensors`: the 1 -> n / n -> 1 hook for fused or stacked tensors;
  * `Experts`: what mixture-of-experts families add (per-expert HF matrices stacked into llama.cpp's one
    (n_expert, rows, cols) tensor per layer and kind, and unstacked on the way back, one stacked tensor in memory).

Why our own and not gguf-py's `TensorNameMap`: it maps names one way only, has no notion of the Q/K permutation
or the Conv1D transpose, and pulls in every architecture llama.cpp knows; the families we support fit in a page
each and are checked against llama.cpp end to end.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..core.errors import FormatError, UnsupportedError
from ..core.tensor import TensorRef

# --- typed metadata values ----------------------------------------------------------------------

def u32(v) -> np.uint32:
    return np.uint32(int(v))


def f32(v) -> np.float32:
    return np.float32(float(v))


def first(config: dict, *keys, default=None):
    """The first of `keys` set in `config` (families name the same setting differently)."""
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


# --- transforms (each with its inverse) ---------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp adjacent-pair order, per head (docs/gguf.md §4)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Transform(enum.Enum):
    """How a tensor's values differ between HF and GGUF; each has an exact inverse."""

    NONE = "none"
    PERMUTE_Q = "permute_q"           # Llama-style RoPE: rows reordered per query head
    PERMUTE_K = "permute_k"           # ... per key/value head
    TRANSPOSE = "transpose"           # GPT-2's Conv1D stores (in, out)
    NORM_PLUS_ONE = "norm_plus_one"   # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w

    @property
    def changes_values(self) -> bool:
        """True when the transform does arithmetic (so it must run in float32), not just a reordering."""
        return self is Transform.NORM_PLUS_ONE

    def heads(self, family: Family) -> int | None:
        """The head count a permutation works per (None for the other transforms)."""
        return {Transform.PERMUTE_Q: family.n_head, Transform.PERMUTE_K: family.n_head_kv}.get(self)

    def to_gguf(self, w: np.ndarray, family: Family) -> np.ndarray:
        if self in (Transform.PERMUTE_Q, Transform.PERMUTE_K):
            return permute_qk(w, self.heads(family))
        if self is Transform.TRANSPOSE:
            return np.ascontiguousarray(w.T) if w.ndim == 2 else w
        if self is Transform.NORM_PLUS_ONE:
            return w + np.float32(1)
        return w

    def to_hf(self, w: np.ndarray, family: Family) -> np.ndarray:
        if self in (Transform.PERMUTE_Q, Transform.PERMUTE_K):
            return unpermute_qk(w, self.heads(family))
        if self is Transform.NORM_PLUS_ONE:
            return w - np.float32(1)
        return self.to_gguf(w, family)      # the transpose is its own inverse

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The other side's shape (only the transpose changes it)."""
        return tuple(reversed(shape)) if self is Transform.TRANSPOSE and len(shape) == 2 else tuple(shape)


# --- names most families share ------------------------------------------------------------------

#: GGUF tensors a converter computes from config.json (rope scaling), not model parameters.
COMPUTED_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")

#: The HF <-> GGUF names of a Llama-style decoder, which most families use as is or extend.
DECODER_TENSORS = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
    ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
    ("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight"),
    ("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight"),
    ("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
    ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
    ("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias"),
    ("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias"),
    ("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias"),
    ("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias"),
    ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
    ("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight"),
    ("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight"),
    ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
)
#: Q and K norms of families that normalize each head (Qwen3, Gemma 3) or the whole projection (OLMo 2).
QK_NORM_TENSORS = (("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight"),
                   ("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight"))
#: Where configs keep the expert counts (Mixtral / gpt-oss, Qwen-MoE / OLMoE, DeepSeek), and the experts per token.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
EXPERT_USED_KEYS = ("num_experts_per_tok", "num_experts_per_token", "top_k_experts")
#: The GGUF kinds (name without `blk.N.`) of tensors that hold one slice per expert: what `estimate` counts as
#: expert parameters (a token uses `expert_used_count` of the slices).
EXPERT_KINDS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight", "ffn_gate_up_exps.weight",
                "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias")
#: Buffers transformers may save that carry nothing llama.cpp uses.
ROTARY_BUFFERS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")


def check_layers(family: Family, gguf_names, path=None) -> None:
    """The `blk.N.` layers present must be exactly the config's `n_layer` (both conversion directions)."""
    layers = {int(m.group(1)) for n in gguf_names if (m := re.match(r"blk\.(\d+)\.", n))}
    if family.n_layer and layers != set(range(family.n_layer)):
        raise FormatError(f"config says {family.n_layer} layers but the weights have layers {sorted(layers)[:8]}...",
                          path)


@dataclass(frozen=True)
class Dims:
    """The sizes a bare config fixes: what `tensor_shapes` and the KV-cache estimate need."""
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    tied: bool
    n_ctx: int | None = None
    n_expert: int = 0
    n_ff_expert: int = 0
    n_expert_used: int = 0


class GGUFKeys:
    """`<arch>.*` metadata values as Python numbers (the reverse of u32/f32)."""

    def __init__(self, meta: dict, arch: str):
        self.meta, self.arch = meta, arch

    def get(self, key: str, default=None):
        v = self.meta.get(f"{self.arch}.{key}")
        if v is None:
            return default
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):   # per-layer values: only a uniform list has a config.json equivalent
            if not v or any(x != v[0] for x in v):
                raise UnsupportedError(f"{self.arch}.{key} varies per layer; config.json cannot express that")
            v = v[0]
        if isinstance(v, (float, np.floating)):
            return float(str(np.float32(v)))    # shortest decimal that is the same float32: 1e-05, not 9.99e-06
        return int(v) if isinstance(v, (int, np.integer)) else v

    def need(self, key: str):
        v = self.get(key)
        if v is None:
            raise UnsupportedError(f"the GGUF has no {self.arch}.{key}, which config.json needs")
        return v


def _count(v) -> int:
    """A count from a config; a per-layer list (a GGUF's) counts as its largest entry."""
    return int(max(v) if isinstance(v, (list, tuple)) else v or 0)


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)"))


#: NumPy shape of each llama.cpp tensor kind (GGUF name without `blk.N.`), from a config's sizes.
_KIND_SHAPES = {
    "token_embd.weight": lambda d: (d.n_vocab, d.n_embd),
    "position_embd.weight": lambda d: (d.n_ctx or 1024, d.n_embd),
    "output.weight": lambda d: (d.n_vocab, d.n_embd),
    "attn_q.weight": lambda d: (d.n_head * d.head_dim, d.n_embd),
    "attn_k.weight": lambda d: (d.n_head_kv * d.head_dim, d.n_embd),
    "attn_v.weight": lambda d: (d.n_head_kv * d.head_dim, d.n_embd),
    "attn_qkv.weight": lambda d: ((d.n_head + 2 * d.n_head_kv) * d.head_dim, d.n_embd),
    "attn_output.weight": lambda d: (d.n_embd, d.n_head * d.head_dim),
    "attn_q_norm.weight": lambda d: (d.head_dim,),
    "attn_k_norm.weight": lambda d: (d.head_dim,),
    "ffn_gate.weight": lambda d: (d.n_ff, d.n_embd),
    "ffn_up.weight": lambda d: (d.n_ff, d.n_embd),
    "ffn_down.weight": lambda d: (d.n_embd, d.n_ff),
    "ffn_gate_inp.weight": lambda d: (d.n_expert, d.n_embd),
    "ffn_gate_exps.weight": lambda d: (d.n_expert, d.n_ff_expert, d.n_embd),
    "ffn_up_exps.weight": lambda d: (d.n_expert, d.n_ff_expert, d.n_embd),
    "ffn_down_exps.weight": lambda d: (d.n_expert, d.n_embd, d.n_ff_expert),
    "ffn_gate_exps.bias": lambda d: (d.n_expert, d.n_ff_expert),
    "ffn_up_exps.bias": lambda d: (d.n_expert, d.n_ff_expert),
    "ffn_down_exps.bias": lambda d: (d.n_expert, d.n_embd),
    "ffn_gate_inp.bias": lambda d: (d.n_expert,),
}


class Family:
    """One model family. Subclasses fill in the class attributes and `hparams`; see the module docstring."""

    name: str = ""                          # llama.cpp's arch (general.architecture)
    hf_architectures: tuple[str, ...] = ()  # config["architectures"][0]
    model_types: tuple[str, ...] = ()       # config["model_type"]
    layout_model_types: tuple[str, ...] = ()   # model types `estimate` lays out like this family, not converted
    strip_prefixes: tuple[str, ...] = ()    # HF name prefixes some checkpoints carry ("transformer.")
    tensors: tuple[tuple[str, str], ...] = DECODER_TENSORS
    transforms: dict[str, Transform] = {}   # GGUF name suffix -> Transform
    ignore: tuple[str, ...] = ()            # HF name regexes that carry no weights llama.cpp uses
    hf_defaults: dict[str, Any] = {}        # config fields fixed for the family (activation, ...), the way back
    tied_by_default = False                 # the transformers config's tie_word_embeddings default
    #: the guide's LoRA targets (q, k, v, o, gate, up, down), as this family's HF modules are named
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, config: dict):
        self.config = config
        self.n_head = _count(first(config, "num_attention_heads", "n_head", default=0))
        self.n_head_kv = _count(first(config, "num_key_value_heads", "n_head_kv", default=self.n_head)) or self.n_head
        self.n_layer = _count(first(config, "num_hidden_layers", "n_layer", default=0))
        self._fwd = [(_template_regex(hf), gg) for hf, gg in self.tensors]
        self._back = [(_template_regex(gg), hf) for hf, gg in self.tensors]
        self._ignore = [re.compile(p) for p in self.ignore]

    # --- names and values -----------------------------------------------------------------------

    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name for an HF tensor; None for tensors llama.cpp does not use. Unknown names raise."""
        name = hf_name
        for p in self.strip_prefixes:
            if name.startswith(p):
                name = name[len(p):]
                break
        for rx, template in self._fwd:
            m = rx.fullmatch(name)
            if m:
                return template.format(**m.groupdict())
        if any(rx.fullmatch(name) for rx in self._ignore):
            return None
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF name for {self.name} models")

    def hf_name(self, gguf_name: str) -> str:
        for rx, template in self._back:
            m = rx.fullmatch(gguf_name)
            if m:
                return template.format(**m.groupdict())
        raise UnsupportedError(f"GGUF tensor {gguf_name!r} has no HF name for {self.name} models")

    def transform_of(self, gguf_name: str) -> Transform:
        """How the tensor's values differ between the two sides (Transform.NONE for most)."""
        for suffix, t in self.transforms.items():
            if gguf_name.endswith(suffix):
                return t
        return Transform.NONE

    def to_gguf(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        return self.transform_of(gguf_name).to_gguf(array, self)

    def to_hf(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        return self.transform_of(gguf_name).to_hf(array, self)

    def gguf_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The tensor's shape on the other side (the transpose is its own inverse, so both ways)."""
        return self.transform_of(gguf_name).shape(shape)

    # --- the 1 -> n / n -> 1 hook ----------------------------------------------------------------

    def merge_tensors(self, name: str, parts: list[TensorRef]) -> TensorRef:
        """n -> 1: the tensors that map to the same output `name`, made into one lazy ref (in source order).

        `name` is on the output side: a GGUF name when converting to GGUF (where a family stacks MoE experts into
        one 3-D tensor), an HF name when converting back (where it concatenates Q/K/V it split). The conversion
        code calls this for every output name, so the default passes a single tensor through and refuses two."""
        if len(parts) > 1:
            raise FormatError(f"tensors {parts[0].name!r} and {parts[1].name!r} both map to {name!r}")
        return parts[0]

    def split_tensor(self, name: str, ref: TensorRef) -> list[tuple[str, TensorRef]]:
        """1 -> n: the (output name, lazy ref) pairs one tensor becomes; the inverse of `merge_tensors` on the other
        side (a fused QKV llama.cpp keeps apart, or experts unstacked on the way back). Identity by default.
        Splitting happens before `to_gguf`/after `to_hf`, so each part gets its own name's transform."""
        return [(name, ref)]

    # --- metadata, HF -> GGUF ------------------------------------------------------------------

    def rope_parameters(self) -> dict:
        """transformers 5 nests rope settings in `rope_parameters`; older configs use `rope_scaling` + `rope_theta`."""
        rp = dict(self.config.get("rope_scaling") or {})
        rp.update(self.config.get("rope_parameters") or {})
        rp = dict(rp.get("full_attention", rp))
        if "rope_theta" not in rp and self.config.get("rope_theta") is not None:
            rp["rope_theta"] = self.config["rope_theta"]
        if "rope_type" not in rp and "type" in rp:
            rp["rope_type"] = rp["type"]
        return rp

    def hparams(self) -> dict[str, Any]:
        """config.json -> the `<arch>.*` GGUF keys; raises UnsupportedError for configs llama.cpp cannot run."""
        raise NotImplementedError

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors computed from the config (llama3 rope factors, ...)."""
        return {}

    def expected_vocab(self) -> int | None:
        v = self.config.get("vocab_size")
        return int(v) if v is not None else None

    def common_hparams(self, ctx_keys=("max_position_embeddings", "n_ctx", "n_positions"),
                       head_dim_default: int | None = None) -> dict[str, Any]:
        """What llama.cpp's TextModel writes for every decoder: counts, rope, norm epsilon, head dims
        (`head_dim_default`: the family's config default when config.json leaves head_dim out)."""
        c = self.config
        k = self.key
        out: dict[str, Any] = {k("block_count"): u32(self.n_layer)}
        ctx = first(c, *ctx_keys)
        if ctx is not None:
            out[k("context_length")] = u32(ctx)
        out[k("embedding_length")] = u32(first(c, "hidden_size", "n_embd"))
        ff = first(c, "intermediate_size", "n_inner")
        if ff is not None:
            out[k("feed_forward_length")] = u32(ff)
        out[k("attention.head_count")] = u32(self.n_head)
        out[k("attention.head_count_kv")] = u32(self.n_head_kv)
        rp = self.rope_parameters()
        rope_type = rp.get("rope_type")
        if rope_type == "linear" and rp.get("factor") is not None:
            out[k("rope.scaling.type")] = "linear"
            out[k("rope.scaling.factor")] = f32(rp["factor"])
        elif rope_type == "yarn" and rp.get("factor") is not None:
            out[k("rope.scaling.type")] = "yarn"
            out[k("rope.scaling.factor")] = f32(rp["factor"])
            out[k("rope.scaling.original_context_length")] = u32(rp["original_max_position_embeddings"])
        elif rope_type not in (None, "default", "llama3"):
            raise UnsupportedError(f"rope scaling {rope_type!r} is not supported for {self.name}")
        if rp.get("rope_theta") is not None:
            out[k("rope.freq_base")] = f32(rp["rope_theta"])
        eps = first(c, "rms_norm_eps", "norm_eps")
        if eps is not None:
            out[k("attention.layer_norm_rms_epsilon")] = f32(eps)
        eps = first(c, "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
        if eps is not None:
            out[k("attention.layer_norm_epsilon")] = f32(eps)
        head_dim = c.get("head_dim") if c.get("head_dim") is not None else head_dim_default
        if head_dim is not None:
            out[k("attention.key_length")] = u32(head_dim)
            out[k("attention.value_length")] = u32(head_dim)
        return out

    # --- metadata, GGUF -> HF ------------------------------------------------------------------

    @classmethod
    def config_from_gguf(cls, meta: dict, tensors: dict) -> dict[str, Any]:
        """config.json fields for a GGUF of this family, such that `hparams()` of the result gives back the
        file's `<arch>.*` keys. `tensors` (GGUF name -> TensorRef) tells what the keys cannot: biases, rope factors."""
        cfg: dict[str, Any] = {"architectures": [cls.hf_architectures[0]], "model_type": cls.model_types[0]}
        cfg.update(cls.hf_defaults)
        g = GGUFKeys(meta, cls.name)
        for key in ("block_count", "embedding_length", "attention.head_count"):
            v = g.need(key)
            if not isinstance(v, int) or not 0 < v < 1 << 20:
                raise FormatError(f"{cls.name}.{key} is {v!r}, not a plausible count")
        cfg.update(cls.config_fields(g, tensors))
        return cfg

    @classmethod
    def config_fields(cls, g: GGUFKeys, tensors: dict) -> dict[str, Any]:
        """The family's config.json fields from its GGUF keys (the reverse of `hparams`)."""
        return cls.common_config(g)

    @staticmethod
    def rope_config(g: GGUFKeys) -> dict[str, Any]:
        """rope_parameters from rope.freq_base / rope.scaling.* (llama3's rope_freqs.weight: see Llama)."""
        rp: dict[str, Any] = {"rope_theta": g.get("rope.freq_base", 10000.0), "rope_type": "default"}
        kind = g.get("rope.scaling.type")
        if kind in ("linear", "yarn"):
            rp.update(rope_type=kind, factor=g.need("rope.scaling.factor"))
            if kind == "yarn":
                rp["original_max_position_embeddings"] = g.need("rope.scaling.original_context_length")
        elif kind not in (None, "none"):
            raise UnsupportedError(f"rope scaling {kind!r} has no config.json equivalent here")
        return rp

    @classmethod
    def common_config(cls, g: GGUFKeys) -> dict[str, Any]:
        """The reverse of `common_hparams`: config.json counts, norm epsilon and head dims."""
        out: dict[str, Any] = {
            "hidden_size": g.need("embedding_length"),
            "num_hidden_layers": g.need("block_count"),
            "num_attention_heads": g.need("attention.head_count"),
        }
        out["num_key_value_heads"] = g.get("attention.head_count_kv", out["num_attention_heads"])
        for key, field in (("feed_forward_length", "intermediate_size"), ("context_length", "max_position_embeddings"),
                           ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
                           ("attention.layer_norm_epsilon", "layer_norm_eps"), ("attention.key_length", "head_dim")):
            if g.get(key) is not None:
                out[field] = g.get(key)
        out["rope_parameters"] = cls.rope_config(g)
        return out

    # --- layout from a bare config (estimate) --------------------------------------------------

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or int(first(self.config, "hidden_size", "n_embd")) // self.n_head)

    def dims(self) -> Dims:
        """The sizes of the model a config describes, with the family's defaults for what it leaves out."""
        c = self.config
        n_embd = int(first(c, "hidden_size", "n_embd"))
        n_ff = _count(first(c, "intermediate_size", "n_inner", default=4 * n_embd))
        n_expert = int(first(c, *EXPERT_COUNT_KEYS, default=0) or 0)
        tied = c.get("tie_word_embeddings")
        return Dims(n_layer=self.n_layer, n_embd=n_embd, n_head=self.n_head, n_head_kv=self.n_head_kv,
                    head_dim=self.head_dim(), n_ff=n_ff, n_vocab=int(first(c, "vocab_size", "n_vocab")),
                    tied=self.tied_by_default if tied is None else bool(tied),
                    n_ctx=first(c, "max_position_embeddings", "n_positions", "n_ctx"), n_expert=n_expert,
                    n_ff_expert=int(first(c, "moe_intermediate_size", default=0) or 0) or (n_ff if n_expert else 0),
                    n_expert_used=_count(first(c, *EXPERT_USED_KEYS, default=0)) if n_expert else 0)

    def has_tensor(self, kind: str) -> bool:
        """Whether a tensor of the family's table is in a model with this config (`kind`: GGUF name without
        `blk.N.`): biases follow `attention_bias`, the output matrix is absent when tied to the embedding."""
        if kind == "output.weight":
            return not self.dims().tied
        if kind.endswith(".bias"):
            return bool(self.config.get("attention_bias" if kind.startswith("attn_") else "mlp_bias"))
        return True

    def tensor_shape(self, kind: str, dims: Dims) -> tuple[int, ...]:
        """NumPy shape of one tensor kind; 1-D norms and biases have the size of what they follow."""
        if kind in _KIND_SHAPES:
            return tuple(int(x) for x in _KIND_SHAPES[kind](dims))
        if kind.endswith(".bias"):
            return (self.tensor_shape(kind[: -len(".bias")] + ".weight", dims)[0],)
        if "norm" in kind:
            return (dims.n_embd,)
        raise UnsupportedError(f"no shape rule for {self.name} tensor {kind!r}")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF name -> NumPy shape (row length last) of every tensor the converter writes for this config, without
        the weights: the family's table, the tensors it computes, and gguf-py's names for what the converter would
        refuse but `estimate` still counts (MLP biases, MoE experts stacked as llama.cpp stores them)."""
        d = self.dims()
        out = {name: tuple(v.shape) for name, v in self.extra_tensors().items()}
        kinds = [gg for _, gg in self.tensors]
        if self.config.get("mlp_bias"):
            kinds += [f"blk.{{bid}}.{k}.bias" for k in ("ffn_gate", "ffn_up", "ffn_down")
                      if f"blk.{{bid}}.{k}.weight" in kinds and f"blk.{{bid}}.{k}.bias" not in kinds]
        if d.n_expert:
            dense = ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
            kinds = [k for k in kinds if not k.endswith(dense)]
            kinds += [f"blk.{{bid}}.{k}.weight" for k in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")]
        for template in kinds:
            kind = template.replace("blk.{bid}.", "")
            if not self.has_tensor(kind):
                continue
            shape = self.tensor_shape(kind, d)
            for i in (range(d.n_layer) if "{bid}" in template else (None,)):
                out[template.format(bid=i)] = shape
        return out

    def kept_types(self) -> dict[str, str]:
        """GGUF name -> the block type a checkpoint of this config already stores it in and the converter copies as
        it is (gpt-oss's MXFP4 experts); what `estimate` types a bare config by. None for most families."""
        return {}

    def hf_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> shape of every parameter a checkpoint of this config holds (`tensor_shapes` mapped back through
        `hf_name` and `gguf_shape`, tensors the converter computes left out): what `check` compares weights with."""
        return {self.hf_name(name): self.gguf_shape(name, shape) for name, shape in self.tensor_shapes().items()
                if name not in COMPUTED_TENSORS}

    def is_ignored(self, hf_name: str) -> bool:
        """Whether an HF tensor is one the family knows carries nothing llama.cpp uses (rotary buffers, ...)."""
        return any(rx.fullmatch(hf_name) for rx in self._ignore)

    @classmethod
    def lora_gguf_kinds(cls, targets) -> set[str]:
        """The GGUF tensor kinds (`attn_q`, ...) of the HF modules named in `targets`, from the family's table."""
        kinds = set()
        for hf, gg in cls.tensors:
            if "{bid}" in hf and hf.endswith(".weight") and gg.endswith(".weight"):
                module = hf[: -len(".weight")].rsplit(".", 1)[-1]
                if module in targets:
                    kinds.add(gg[len("blk.{bid}."): -len(".weight")])
        return kinds


# --- mixture of experts -------------------------------------------------------------------------

def _expert_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)").replace(r"\{xid\}", r"(?P<xid>\d+)"))


def stack_experts(name: str, parts: list[TensorRef], n_expert: int, expert_of: Callable[[str], int]) -> TensorRef:
    """n -> 1: per-expert 2-D refs (any order) as one lazy (n_expert, rows, cols) ref in expert order, as llama.cpp's
    converter stacks them. Reading fills one preallocated array an expert at a time: the stacked tensor plus one
    expert is the peak. A missing, repeated or misshapen expert is a FormatError naming it."""
    by_expert: dict[int, TensorRef] = {}
    for p in parts:
        x = expert_of(p.name)
        if x in by_expert:
            raise FormatError(f"tensors {by_expert[x].name!r} and {p.name!r} are both expert {x} of {name!r}")
        by_expert[x] = p
    missing = sorted(set(range(n_expert)) - set(by_expert))
    if missing or len(by_expert) != n_expert:
        extra = sorted(set(by_expert) - set(range(n_expert)))
        raise FormatError(f"{name}: the config says {n_expert} experts but the weights "
                          + (f"lack expert(s) {missing[:8]}" if missing else f"have expert(s) {extra[:8]} beyond them"))
    ordered = [by_expert[x] for x in range(n_expert)]
    first_ = ordered[0]
    for p in ordered[1:]:
        if tuple(p.shape) != tuple(first_.shape) or p.dtype != first_.dtype:
            raise FormatError(f"expert tensors of {name!r} differ: {first_.name!r} is {first_.dtype.name}"
                              f"{list(first_.shape)}, {p.name!r} is {p.dtype.name}{list(p.shape)}")

    def load() -> np.ndarray:
        out = None
        for x, p in enumerate(ordered):
            values = np.asarray(p.read())
            if out is None:
                out = np.empty((n_expert, *values.shape), values.dtype)
            out[x] = values
        return out
    return first_.derive(load, name=name, shape=(n_expert, *first_.shape), raw_loader=None, storage=None, extra={})


def unstack_experts(template: str, ref: TensorRef) -> list[tuple[str, TensorRef]]:
    """1 -> n: a stacked (n_expert, ...) ref as n lazy per-expert refs named `template` with `{xid}` filled in.
    The stacked values are read once, kept while the writer pulls the experts in turn and dropped after the last,
    so a whole stacked tensor is the most this holds."""
    n = ref.shape[0]
    held: dict[str, Any] = {"values": None, "left": 0}

    def expert(x: int):
        def load() -> np.ndarray:
            if held["values"] is None:
                held["values"], held["left"] = np.asarray(ref.read()), n
            values = held["values"][x]
            held["left"] -= 1
            if held["left"] <= 0:
                held["values"] = None
            return values
        return load
    return [(template.replace("{xid}", str(x)), ref.derive(expert(x), name=template.replace("{xid}", str(x)),
                                                            shape=ref.shape[1:], raw_loader=None, storage=None, extra={}))
            for x in range(n)]


class ProjectionQKNorm(Family):
    """Q/K RMS norms over the whole projection, all heads at once (OLMo 2, OLMoE), not one head's width."""

    def tensor_shape(self, kind, dims):
        if kind == "attn_q_norm.weight":
            return (dims.n_head * dims.head_dim,)
        if kind == "attn_k_norm.weight":
            return (dims.n_head_kv * dims.head_dim,)
        return super().tensor_shape(kind, dims)


class Experts(Family):
    """A mixture-of-experts family: `expert_tensors` pairs an HF template with `{bid}` and `{xid}` (one matrix per
    expert) with the stacked GGUF tensor llama.cpp's converter makes of them. HF -> GGUF: every expert's name maps
    to the stacked name and `merge_tensors` stacks them; GGUF -> HF: `hf_name` gives the template with `{xid}` left
    in and `split_tensor` unstacks. Subclasses put it first among their bases (`class Mixtral(Experts, Llama)`)."""

    expert_tensors: tuple[tuple[str, str], ...] = ()
    #: transformers' `norm_topk_prob` as llama.cpp's graph for the arch hard-codes it (None: no such setting)
    norm_topk_prob: bool | None = None

    def __init__(self, config: dict):
        super().__init__(config)
        self.n_expert = int(first(config, *EXPERT_COUNT_KEYS, default=0) or 0)
        self.n_expert_used = int(first(config, *EXPERT_USED_KEYS, default=0) or 0)
        self._xfwd = [(_expert_regex(hf), gg) for hf, gg in self.expert_tensors]
        self._xback = [(_template_regex(gg), hf) for hf, gg in self.expert_tensors]

    def gguf_name(self, hf_name):
        for rx, template in self._xfwd:
            m = rx.fullmatch(hf_name)
            if m:
                return template.format(bid=m.group("bid"))
        return super().gguf_name(hf_name)

    def hf_name(self, gguf_name):
        for rx, template in self._xback:
            m = rx.fullmatch(gguf_name)
            if m:
                return template.format(bid=m.group("bid"), xid="{xid}")
        return super().hf_name(gguf_name)

    def _expert_of(self, hf_name: str) -> int:
        for rx, _ in self._xfwd:
            m = rx.fullmatch(hf_name)
            if m:
                return int(m.group("xid"))
        raise FormatError(f"{hf_name!r} is not a per-expert tensor")

    def merge_tensors(self, name, parts):
        if any(rx.fullmatch(name) for rx, _ in self._xback):
            return stack_experts(name, parts, self.n_expert, self._expert_of)
        return super().merge_tensors(name, parts)

    def split_tensor(self, name, ref):
        if "{xid}" in name:
            return unstack_experts(name, ref)
        return super().split_tensor(name, ref)

    def hf_tensor_shapes(self):
        out = {}
        for name, shape in super().hf_tensor_shapes().items():
            if "{xid}" in name:
                out.update({name.replace("{xid}", str(x)): tuple(shape[1:]) for x in range(shape[0])})
            else:
                out[name] = shape
        return out

    def check_experts(self) -> None:
        """Refuse what llama.cpp's graph for the arch cannot run: no experts, more used than there are, another
        top-k normalization than the arch hard-codes."""
        if self.n_expert < 1 or not 0 < self.n_expert_used <= self.n_expert:
            raise UnsupportedError(f"{self.name}: {self.n_expert_used} experts per token of {self.n_expert} is not a "
                                   "mixture of experts llama.cpp can run")
        norm = self.config.get("norm_topk_prob")
        if self.norm_topk_prob is not None and norm is not None and bool(norm) != self.norm_topk_prob:
            raise UnsupportedError(f"{self.name} with norm_topk_prob={bool(norm)}: llama.cpp's {self.name} graph "
                                   f"always {'normalizes' if self.norm_topk_prob else 'keeps'} the top-k weights")

    def expert_hparams(self, n_ff_expert: int | None = None) -> dict[str, Any]:
        """expert_count / expert_used_count (and the expert FFN size where the arch has its own key)."""
        self.check_experts()
        out = {self.key("expert_count"): u32(self.n_expert), self.key("expert_used_count"): u32(self.n_expert_used)}
        if n_ff_expert is not None:
            out[self.key("expert_feed_forward_length")] = u32(n_ff_expert)
        return out

    @staticmethod
    def expert_config(g: GGUFKeys, count_key: str = "num_local_experts") -> dict[str, Any]:
        return {count_key: g.need("expert_count"), "num_experts_per_tok": g.need("expert_used_count")}
