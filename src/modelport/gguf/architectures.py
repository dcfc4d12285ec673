"""Model families for HF <-> GGUF: hyperparameters, tensor names and the per-tensor transforms.

Each family is one small class. Everything that maps one side to the other is kept as data so that the
same table can run backwards (GGUF -> HF):
  * `tensors`: (HF name template, GGUF name template) pairs, `{bid}` standing for the layer number;
  * `transforms`: GGUF name suffix -> a named transform with an exact inverse (`TRANSFORMS`);
  * `hparams()`: config.json -> `<arch>.*` keys with the types llama.cpp's loader insists on (u32 counts,
    f32 floats; docs/gguf.md §2). transformers 5 moved `rope_theta` into `rope_parameters`; both are read.

Why our own and not gguf-py's `TensorNameMap`: it maps names one way only, has no notion of the Q/K
permutation or the Conv1D transpose, and pulls in every architecture llama.cpp knows; the handful we
support fit in a page and can be checked against llama.cpp end to end.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np

from ..core.errors import FormatError, UnsupportedError


# --- typed metadata values ----------------------------------------------------------------------

def u32(v) -> np.uint32:
    return np.uint32(int(v))


def f32(v) -> np.float32:
    return np.float32(float(v))


# --- transforms (each with its inverse) ---------------------------------------------------------

def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp adjacent-pair order, per head (docs/gguf.md §4)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _transpose(w: np.ndarray, _cfg) -> np.ndarray:
    return np.ascontiguousarray(w.T) if w.ndim == 2 else w


#: name -> (forward HF->GGUF, inverse GGUF->HF); each takes (array, architecture config view).
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "permute_q": (lambda w, c: permute_qk(w, c.n_head), lambda w, c: unpermute_qk(w, c.n_head)),
    "permute_k": (lambda w, c: permute_qk(w, c.n_head_kv), lambda w, c: unpermute_qk(w, c.n_head_kv)),
    "transpose": (_transpose, _transpose),   # GPT-2's Conv1D stores (in, out)
    # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w
    "norm_plus_one": (lambda w, c: w + np.float32(1), lambda w, c: w - np.float32(1)),
}


# --- the base class -----------------------------------------------------------------------------

#: GGUF tensors a converter computes from config.json (rope scaling), not model parameters.
COMPUTED_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def _first(config: dict, *keys, default=None):
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


class Architecture:
    """One model family. Subclasses fill in the class attributes and `hparams`."""

    name: str = ""                          # general.architecture
    hf_architectures: tuple[str, ...] = ()  # config["architectures"][0]
    model_types: tuple[str, ...] = ()       # config["model_type"]
    strip_prefixes: tuple[str, ...] = ()    # HF name prefixes some checkpoints carry ("transformer.")
    tensors: tuple[tuple[str, str], ...] = ()
    transforms: dict[str, str] = {}         # GGUF name suffix -> TRANSFORMS key
    ignore: tuple[str, ...] = ()            # HF name regexes that carry no weights llama.cpp uses
    neox_rope = True

    def __init__(self, config: dict):
        self.config = config
        self.n_head = int(_first(config, "num_attention_heads", "n_head", default=0))
        self.n_head_kv = int(_first(config, "num_key_value_heads", "n_head_kv", default=self.n_head) or self.n_head)
        self.n_layer = int(_first(config, "num_hidden_layers", "n_layer", default=0))
        self._fwd, self._back = [], []
        for hf, gg in self.tensors:
            self._fwd.append((_template_regex(hf), gg))
            self._back.append((_template_regex(gg), hf))
        self._ignore = [re.compile(p) for p in self.ignore]

    # metadata
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
        raise NotImplementedError

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}"

    # names
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

    def _transform(self, gguf_name: str) -> str | None:
        for suffix, t in self.transforms.items():
            if gguf_name.endswith(suffix):
                return t
        return None

    def to_gguf(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        t = self._transform(gguf_name)
        return TRANSFORMS[t][0](array, self) if t else array

    def to_hf(self, gguf_name: str, array: np.ndarray) -> np.ndarray:
        t = self._transform(gguf_name)
        return TRANSFORMS[t][1](array, self) if t else array

    def gguf_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(reversed(shape)) if self._transform(gguf_name) == "transpose" and len(shape) == 2 else tuple(shape)

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors computed from the config (llama3 rope factors, ...)."""
        return {}

    def expected_vocab(self) -> int | None:
        v = self.config.get("vocab_size")
        return int(v) if v is not None else None

    # the reverse direction: GGUF metadata -> config.json
    hf_defaults: dict[str, Any] = {}        # config fields fixed for the family (activation, ...)

    @classmethod
    def config_from_gguf(cls, meta: dict, tensors: dict) -> dict[str, Any]:
        """config.json fields for a GGUF of this family, such that `hparams()` of the result gives back the
        file's `<arch>.*` keys. `tensors` (GGUF name -> TensorRef) tells what the keys cannot: biases, rope factors."""
        cfg: dict[str, Any] = {"architectures": [cls.hf_architectures[0]], "model_type": cls.model_types[0]}
        cfg.update(cls.hf_defaults)
        g = _Keys(meta, cls.name)
        for key in ("block_count", "embedding_length", "attention.head_count"):
            v = g.need(key)
            if not isinstance(v, int) or not 0 < v < 1 << 20:
                raise FormatError(f"{cls.name}.{key} is {v!r}, not a plausible count")
        cfg.update(cls._config_fields(g, tensors))
        return cfg

    @classmethod
    def _config_fields(cls, g: "_Keys", tensors: dict) -> dict[str, Any]:
        return _common_back(g)


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{bid\}", r"(?P<bid>\d+)"))


def _common(arch: Architecture, ctx_keys=("max_position_embeddings", "n_ctx", "n_positions"),
            head_dim_default: int | None = None) -> dict[str, Any]:
    """What llama.cpp's TextModel writes for every decoder: counts, rope, norm epsilon, head dims
    (`head_dim_default`: the family's config default when config.json leaves head_dim out)."""
    c = arch.config
    k = arch._key
    out: dict[str, Any] = {k("block_count"): u32(arch.n_layer)}
    ctx = _first(c, *ctx_keys)
    if ctx is not None:
        out[k("context_length")] = u32(ctx)
    out[k("embedding_length")] = u32(_first(c, "hidden_size", "n_embd"))
    ff = _first(c, "intermediate_size", "n_inner")
    if ff is not None:
        out[k("feed_forward_length")] = u32(ff)
    out[k("attention.head_count")] = u32(arch.n_head)
    out[k("attention.head_count_kv")] = u32(arch.n_head_kv)
    rp = arch.rope_parameters()
    rope_type = rp.get("rope_type")
    if rope_type == "linear" and rp.get("factor") is not None:
        out[k("rope.scaling.type")] = "linear"
        out[k("rope.scaling.factor")] = f32(rp["factor"])
    elif rope_type == "yarn" and rp.get("factor") is not None:
        out[k("rope.scaling.type")] = "yarn"
        out[k("rope.scaling.factor")] = f32(rp["factor"])
        out[k("rope.scaling.original_context_length")] = u32(rp["original_max_position_embeddings"])
    elif rope_type not in (None, "default", "llama3"):
        raise UnsupportedError(f"rope scaling {rope_type!r} is not supported for {arch.name}")
    if rp.get("rope_theta") is not None:
        out[k("rope.freq_base")] = f32(rp["rope_theta"])
    eps = _first(c, "rms_norm_eps", "norm_eps")
    if eps is not None:
        out[k("attention.layer_norm_rms_epsilon")] = f32(eps)
    eps = _first(c, "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")
    if eps is not None:
        out[k("attention.layer_norm_epsilon")] = f32(eps)
    head_dim = c.get("head_dim") if c.get("head_dim") is not None else head_dim_default
    if head_dim is not None:
        out[k("attention.key_length")] = u32(head_dim)
        out[k("attention.value_length")] = u32(head_dim)
    return out


class _Keys:
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


def _rope_back(g: _Keys) -> dict[str, Any]:
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


def _common_back(g: _Keys) -> dict[str, Any]:
    """The reverse of `_common`: config.json counts, norm epsilon and head dims."""
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
    out["rope_parameters"] = _rope_back(g)
    return out


_LLAMA_STYLE = (
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
_ROTARY_BUFFERS = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"model\.rotary_emb\.inv_freq")


class Llama(Architecture):
    """Llama 1/2/3, Mistral, SmolLM, TinyLlama: normal (adjacent-pair) RoPE, so Q and K rows are permuted."""

    name = "llama"
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM")
    model_types = ("llama", "mistral")
    tensors = _LLAMA_STYLE
    transforms = {"attn_q.weight": "permute_q", "attn_k.weight": "permute_k",
                  "attn_q.bias": "permute_q", "attn_k.bias": "permute_k"}
    ignore = _ROTARY_BUFFERS
    neox_rope = False
    hf_defaults = {"hidden_act": "silu", "mlp_bias": False}

    @classmethod
    def _config_fields(cls, g, tensors):
        out = _common_back(g)
        out["attention_bias"] = "blk.0.attn_q.bias" in tensors
        if g.get("vocab_size") is not None:
            out["vocab_size"] = g.get("vocab_size")
        head_dim = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        if g.get("rope.dimension_count", head_dim) != head_dim:
            raise UnsupportedError("llama with partial rotary embeddings has no config.json equivalent")
        if "rope_freqs.weight" in tensors:
            out["rope_parameters"] = cls._llama3_rope(out, np.asarray(tensors["rope_freqs.weight"].read(), np.float32))
        return out

    # the (factor, low, high, original context) sets Llama 3.x checkpoints use, tried in turn
    _LLAMA3_CANDIDATES = tuple((lo, hi, ctx) for ctx in (8192, 4096, 16384, 32768, 2048, 131072)
                               for lo in (1.0, 2.0, 0.5) for hi in (4.0, 2.0, 8.0, 1.0))

    @classmethod
    def _llama3_rope(cls, cfg: dict, factors: np.ndarray) -> dict:
        """Recover Llama 3.1 rope scaling from the per-frequency factors, by recomputing them forward."""
        factor = float(str(np.float32(factors.max())))
        for lo, hi, ctx in cls._LLAMA3_CANDIDATES:
            rp = {**cfg["rope_parameters"], "rope_type": "llama3", "factor": factor, "low_freq_factor": lo,
                  "high_freq_factor": hi, "original_max_position_embeddings": ctx}
            got = cls({**cfg, "rope_parameters": rp}).extra_tensors()["rope_freqs.weight"]
            if got.shape == factors.shape and np.allclose(got, factors, rtol=1e-5, atol=1e-6):
                return rp
        raise UnsupportedError("rope_freqs.weight matches no Llama 3 rope scaling that config.json can express")

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)

    def hparams(self):
        out = _common(self)
        if self.config.get("vocab_size") is not None:
            out[self._key("vocab_size")] = u32(self.config["vocab_size"])
        out[self._key("rope.dimension_count")] = u32(self.head_dim())
        return out

    def extra_tensors(self):
        rp = self.rope_parameters()
        if str(rp.get("rope_type", "")).lower() != "llama3":
            return {}
        # Llama 3.1 scaling as per-frequency factors (`rope_freqs.weight`), computed as the reference converter does.
        base = float(rp.get("rope_theta", 10000.0))
        dim = self.head_dim()
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor = rp.get("factor", 8.0)
        low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        old = rp.get("original_max_position_embeddings", 8192)
        low_wl, high_wl = old / low, old / high
        out = []
        for f in freqs.astype(np.float64):
            wl = 2 * math.pi / f
            if wl < high_wl:
                out.append(1.0)
            elif wl > low_wl:
                out.append(factor)
            else:
                smooth = (old / wl - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return {"rope_freqs.weight": np.asarray(out, np.float32)}


class SmolLM3(Llama):
    """SmolLM3: Llama with RoPE left out of every fourth layer (NoPE). llama.cpp fixes that step at 4, so a config
    with another pattern is refused."""

    name = "smollm3"
    hf_architectures = ("SmolLM3ForCausalLM",)
    model_types = ("smollm3",)
    NO_ROPE_STEP = 4

    @classmethod
    def _rope_layers(cls, n_layer: int) -> list[int]:
        """transformers' `no_rope_layers`: 1 where the layer uses RoPE."""
        return [int((i + 1) % cls.NO_ROPE_STEP != 0) for i in range(n_layer)]

    @classmethod
    def _config_fields(cls, g, tensors):
        out = super()._config_fields(g, tensors)
        out["no_rope_layers"] = cls._rope_layers(out["num_hidden_layers"])
        out["no_rope_layer_interval"] = cls.NO_ROPE_STEP
        return out

    def hparams(self):
        layers = self.config.get("no_rope_layers")
        if layers is not None and list(layers) != self._rope_layers(self.n_layer):
            raise UnsupportedError("SmolLM3 with RoPE-free layers other than every fourth has no llama.cpp equivalent")
        if self.config.get("use_sliding_window"):
            raise UnsupportedError("SmolLM3 with sliding-window attention has no llama.cpp equivalent")
        return super().hparams()


class Qwen2(Architecture):
    """Qwen2 / Qwen2.5: llama-style names plus Q/K/V biases, NEOX RoPE (no permutation)."""

    name = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)
    model_types = ("qwen2",)
    tensors = _LLAMA_STYLE
    ignore = _ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}

    def hparams(self):
        return _common(self)


class Qwen3(Architecture):
    """Qwen3: Qwen2's layout without the Q/K/V biases, plus an RMS norm over each head of Q and K; the head size
    is its own setting (`head_dim`, 128 by default in transformers), written as `attention.key_length`."""

    name = "qwen3"
    hf_architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    tensors = _LLAMA_STYLE + (("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight"),
                              ("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight"))
    ignore = _ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}

    def hparams(self):
        return _common(self, head_dim_default=128)

    @classmethod
    def _config_fields(cls, g, tensors):
        out = _common_back(g)
        out["attention_bias"] = "blk.0.attn_q.bias" in tensors
        out.setdefault("head_dim", out["hidden_size"] // out["num_attention_heads"])   # else transformers says 128
        return out


class GPT2(Architecture):
    """GPT-2: fused QKV, learned positions, LayerNorm with bias; Conv1D weights are stored transposed."""

    name = "gpt2"
    hf_architectures = ("GPT2LMHeadModel", "GPT2Model")
    model_types = ("gpt2",)
    strip_prefixes = ("transformer.",)
    tensors = (
        ("wte.weight", "token_embd.weight"),
        ("wpe.weight", "position_embd.weight"),
        ("ln_f.weight", "output_norm.weight"),
        ("ln_f.bias", "output_norm.bias"),
        ("lm_head.weight", "output.weight"),
        ("h.{bid}.ln_1.weight", "blk.{bid}.attn_norm.weight"),
        ("h.{bid}.ln_1.bias", "blk.{bid}.attn_norm.bias"),
        ("h.{bid}.attn.c_attn.weight", "blk.{bid}.attn_qkv.weight"),
        ("h.{bid}.attn.c_attn.bias", "blk.{bid}.attn_qkv.bias"),
        ("h.{bid}.attn.c_proj.weight", "blk.{bid}.attn_output.weight"),
        ("h.{bid}.attn.c_proj.bias", "blk.{bid}.attn_output.bias"),
        ("h.{bid}.ln_2.weight", "blk.{bid}.ffn_norm.weight"),
        ("h.{bid}.ln_2.bias", "blk.{bid}.ffn_norm.bias"),
        ("h.{bid}.mlp.c_fc.weight", "blk.{bid}.ffn_up.weight"),
        ("h.{bid}.mlp.c_fc.bias", "blk.{bid}.ffn_up.bias"),
        ("h.{bid}.mlp.c_proj.weight", "blk.{bid}.ffn_down.weight"),
        ("h.{bid}.mlp.c_proj.bias", "blk.{bid}.ffn_down.bias"),
    )
    transforms = {"attn_qkv.weight": "transpose", "attn_output.weight": "transpose",
                  "ffn_up.weight": "transpose", "ffn_down.weight": "transpose"}
    ignore = (r"h\.\d+\.attn\.(masked_)?bias",)
    hf_defaults = {"activation_function": "gelu_new"}

    @classmethod
    def _config_fields(cls, g, tensors):
        n_embd = g.need("embedding_length")
        ff = g.get("feed_forward_length", 4 * n_embd)
        return {"n_embd": n_embd, "n_layer": g.need("block_count"), "n_head": g.need("attention.head_count"),
                "n_positions": g.need("context_length"), "n_inner": None if ff == 4 * n_embd else ff,
                "layer_norm_epsilon": g.get("attention.layer_norm_epsilon", 1e-5)}

    def __init__(self, config):
        super().__init__(config)
        self.n_head_kv = self.n_head

    def hf_name(self, gguf_name: str) -> str:
        name = super().hf_name(gguf_name)   # GPT2LMHeadModel keeps the body under "transformer."
        return name if name == "lm_head.weight" else self.strip_prefixes[0] + name

    def hparams(self):
        c = self.config
        n_embd = int(_first(c, "n_embd", "hidden_size"))
        k = self._key
        return {
            k("block_count"): u32(self.n_layer),
            k("context_length"): u32(_first(c, "n_ctx", "n_positions", "max_position_embeddings")),
            k("embedding_length"): u32(n_embd),
            k("feed_forward_length"): u32(c.get("n_inner") or 4 * n_embd),
            k("attention.head_count"): u32(self.n_head),
            k("attention.layer_norm_epsilon"): f32(_first(c, "layer_norm_epsilon", "layer_norm_eps", default=1e-5)),
        }


class Phi3(Architecture):
    """Phi-3 / Phi-3.5 / Phi-4 mini: fused QKV and gate_up, NEOX RoPE.

    Long-context checkpoints (128k, rope type `longrope`, formerly `su`; `yarn`) keep per-frequency
    `long_factor`/`short_factor` lists: llama.cpp stores them as the F32 tensors `rope_factors_long/short`
    and the attention scale as `rope.scaling.attn_factor`; the way back folds them into rope_parameters."""

    name = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    model_types = ("phi3",)
    tensors = (
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
        ("model.layers.{bid}.self_attn.qkv_proj.weight", "blk.{bid}.attn_qkv.weight"),
        ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
        ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
        ("model.layers.{bid}.mlp.gate_up_proj.weight", "blk.{bid}.ffn_up.weight"),
        ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
    )
    ignore = _ROTARY_BUFFERS
    hf_defaults = {"hidden_act": "silu"}

    @classmethod
    def _config_fields(cls, g, tensors):
        out = _common_back(g)
        out["original_max_position_embeddings"] = g.get("rope.scaling.original_context_length",
                                                        out.get("max_position_embeddings"))
        head_dim = out["hidden_size"] // out["num_attention_heads"]
        rot = g.get("rope.dimension_count", head_dim) / head_dim
        if rot != 1.0:
            out["partial_rotary_factor"] = out["rope_parameters"]["partial_rotary_factor"] = rot
        out["sliding_window"] = g.get("attention.sliding_window") or None
        if "rope_factors_long.weight" in tensors or "rope_factors_short.weight" in tensors:
            if not ("rope_factors_long.weight" in tensors and "rope_factors_short.weight" in tensors):
                raise FormatError("the GGUF has only one of rope_factors_long/rope_factors_short")
            rp = out["rope_parameters"]
            rp.update(rope_type="longrope", original_max_position_embeddings=out["original_max_position_embeddings"])
            for kind in ("long", "short"):
                values = np.asarray(tensors[f"rope_factors_{kind}.weight"].read(), np.float32).reshape(-1)
                rp[f"{kind}_factor"] = [float(str(v)) for v in values]   # shortest text that is the same float32
            stored = g.get("rope.scaling.attn_factor")
            if stored is not None and np.float32(stored) != np.float32(cls._attn_factor(out, rp)):
                rp["attention_factor"] = stored
        return out

    @staticmethod
    def _attn_factor(config: dict, rp: dict) -> float:
        """The cos/sin scale of long-rope models, as transformers computes it (and llama.cpp's converter,
        which takes the same context ratio; the original Phi-3 `yarn` variant used 0.1 ln(s) + 1)."""
        if rp.get("attention_factor") is not None:
            return float(rp["attention_factor"])
        orig = rp.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
        scale = rp.get("factor") or config["max_position_embeddings"] / orig
        if scale <= 1.0:
            return 1.0
        if str(rp.get("rope_type", "")).lower() == "yarn":
            return 0.1 * math.log(scale) + 1.0
        return math.sqrt(1 + math.log(scale) / math.log(orig))

    def _rope_dims(self) -> int:
        rp = self.rope_parameters()
        rot = rp.get("partial_rotary_factor", self.config.get("partial_rotary_factor", 1.0))
        return int(rot * int(self.config["hidden_size"])) // self.n_head

    def _long_rope(self) -> dict | None:
        """rope_parameters of a long-rope checkpoint, checked; None for a plain one."""
        rp = self.rope_parameters()
        if not rp.get("long_factor") and not rp.get("short_factor"):
            return None
        kind = str(rp.get("rope_type", "")).lower()
        if kind not in ("longrope", "su", "yarn"):
            raise UnsupportedError(f"Phi-3 rope scaling {kind!r} is not supported (longrope, su and yarn are)")
        half = self._rope_dims() // 2
        for key in ("long_factor", "short_factor"):
            if not isinstance(rp.get(key), list) or len(rp[key]) != half:
                raise UnsupportedError(f"rope_parameters.{key} must list {half} numbers (half the rotary dims)")
        return rp

    def extra_tensors(self):
        rp = self._long_rope()
        if rp is None:
            return {}
        return {f"rope_factors_{kind}.weight": np.asarray(rp[f"{kind}_factor"], np.float32) for kind in ("long", "short")}

    def hparams(self):
        c = self.config
        k = self._key
        rp = self.rope_parameters()
        long_rope = self._long_rope()
        n_embd = int(c["hidden_size"])
        orig = _first(rp, "original_max_position_embeddings") or c.get("original_max_position_embeddings") \
            or c.get("max_position_embeddings")
        return {
            k("context_length"): u32(c["max_position_embeddings"]),
            k("rope.scaling.original_context_length"): u32(orig),
            k("embedding_length"): u32(n_embd),
            k("feed_forward_length"): u32(c["intermediate_size"]),
            k("block_count"): u32(self.n_layer),
            k("attention.head_count"): u32(self.n_head),
            k("attention.head_count_kv"): u32(self.n_head_kv),
            k("attention.layer_norm_rms_epsilon"): f32(c["rms_norm_eps"]),
            k("rope.dimension_count"): u32(self._rope_dims()),
            k("rope.freq_base"): f32(rp.get("rope_theta", 10000.0)),
            k("attention.sliding_window"): u32(c.get("sliding_window") or 0),
            **({k("rope.scaling.attn_factor"): f32(self._attn_factor(c, long_rope))} if long_rope else {}),
        }


_GEMMA_COMMON = (
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
    ("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight"),
    ("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight"),
    ("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
    ("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
    ("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight"),
    ("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight"),
    ("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
)


class Gemma(Architecture):
    """Gemma: llama-style layers, NEOX RoPE, (1 + w) RMSNorm, embeddings always tied (lm_head, if saved, is dropped)."""

    name = "gemma"
    hf_architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)
    tensors = _GEMMA_COMMON + (("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),)
    transforms = {"norm.weight": "norm_plus_one"}
    ignore = _ROTARY_BUFFERS + (r"lm_head\.weight",)
    hf_defaults = {"hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True}

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)

    def hparams(self):
        c = self.config
        k = self._key
        head_dim = self.head_dim()
        out = {
            k("context_length"): u32(c["max_position_embeddings"]),
            k("embedding_length"): u32(c["hidden_size"]),
            k("block_count"): u32(self.n_layer),
            k("feed_forward_length"): u32(c["intermediate_size"]),
            k("attention.head_count"): u32(self.n_head),
            k("attention.head_count_kv"): u32(self.n_head_kv),
            k("attention.layer_norm_rms_epsilon"): f32(c["rms_norm_eps"]),
            k("attention.key_length"): u32(head_dim),
            k("attention.value_length"): u32(head_dim),
        }
        theta = self.rope_parameters().get("rope_theta")
        if theta is not None:
            out[k("rope.freq_base")] = f32(theta)
        return out


class Gemma2(Gemma):
    """Gemma 2: Gemma plus post-attention / post-FFN norms, logit soft-capping and sliding-window layers."""

    name = "gemma2"
    hf_architectures = ("Gemma2ForCausalLM",)
    model_types = ("gemma2",)
    tensors = _GEMMA_COMMON + (
        ("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.post_attention_norm.weight"),
        ("model.layers.{bid}.pre_feedforward_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
        ("model.layers.{bid}.post_feedforward_layernorm.weight", "blk.{bid}.post_ffw_norm.weight"),
    )

    LAYERS_27B = 46     # the 27B model, whose queries llama.cpp scales by 1/sqrt(hidden/heads)

    @classmethod
    def _query_scalar(cls, hidden: int, heads: int, n_layer: int, head_dim: int) -> int:
        """The query_pre_attn_scalar llama.cpp assumes: head_dim, or hidden/heads for the 27B model."""
        return hidden // heads if n_layer == cls.LAYERS_27B else head_dim

    @classmethod
    def _config_fields(cls, g, tensors):
        out = _common_back(g)
        head_dim = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        out["query_pre_attn_scalar"] = cls._query_scalar(out["hidden_size"], out["num_attention_heads"],
                                                         out["num_hidden_layers"], head_dim)
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            out[key] = g.get(key) or None
        out["sliding_window"] = g.get("attention.sliding_window")
        return out

    def hparams(self):
        c = self.config
        k = self._key
        out = super().hparams()
        expected = self._query_scalar(c["hidden_size"], self.n_head, self.n_layer, self.head_dim())
        if c.get("query_pre_attn_scalar") not in (None, expected):
            raise UnsupportedError("Gemma 2 with query_pre_attn_scalar != head_dim has no llama.cpp equivalent")
        out[k("attn_logit_softcapping")] = f32(c.get("attn_logit_softcapping") or 0.0)
        out[k("final_logit_softcapping")] = f32(c.get("final_logit_softcapping") or 0.0)
        out[k("attention.sliding_window")] = u32(c.get("sliding_window") or c["max_position_embeddings"])
        return out


class Gemma3(Gemma2):
    """Gemma 3 text models (Gemma3ForCausalLM: the 1B, and the language model of the larger ones): Gemma 2's norms
    plus a norm over each head of Q and K, no attention soft-capping. llama.cpp fixes two things the config could
    vary: every sixth layer is global (the others slide), and the sliding layers use RoPE base 10,000; a config
    that differs is refused rather than converted into a model that computes something else."""

    name = "gemma3"
    hf_architectures = ("Gemma3ForCausalLM",)
    model_types = ("gemma3_text",)
    tensors = Gemma2.tensors + (("model.layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight"),
                                ("model.layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight"))
    SWA_PATTERN = 6
    LOCAL_ROPE_BASE = 10000.0
    LAYERS_27B = 62

    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or 256)               # Gemma3TextConfig's default

    @classmethod
    def _layer_types(cls, n_layer: int) -> list[str]:
        return ["full_attention" if (i + 1) % cls.SWA_PATTERN == 0 else "sliding_attention" for i in range(n_layer)]

    @classmethod
    def _config_fields(cls, g, tensors):
        out = super()._config_fields(g, tensors)
        out.pop("attn_logit_softcapping")
        out["head_dim"] = out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        out["layer_types"] = cls._layer_types(out["num_hidden_layers"])
        out["rope_parameters"] = {"full_attention": out["rope_parameters"],
                                  "sliding_attention": {"rope_type": "default", "rope_theta": cls.LOCAL_ROPE_BASE}}
        return out

    def hparams(self):
        c = self.config
        k = self._key
        layer_types = c.get("layer_types")
        if layer_types and list(layer_types) != self._layer_types(self.n_layer):
            raise UnsupportedError("Gemma 3 with global layers other than every sixth has no llama.cpp equivalent")
        both = c.get("rope_parameters") or {}
        local = both.get("sliding_attention") if isinstance(both.get("sliding_attention"), dict) else {}
        local_base = local.get("rope_theta", c.get("rope_local_base_freq", self.LOCAL_ROPE_BASE))
        if float(local_base) != self.LOCAL_ROPE_BASE or local.get("rope_type", "default") != "default":
            raise UnsupportedError("Gemma 3 sliding layers need RoPE base 10000 without scaling, as llama.cpp assumes")
        expected = self._query_scalar(c["hidden_size"], self.n_head, self.n_layer, self.head_dim())
        if c.get("query_pre_attn_scalar", 256) != expected:
            raise UnsupportedError("Gemma 3 with query_pre_attn_scalar != head_dim has no llama.cpp equivalent")
        if c.get("attn_logit_softcapping"):
            raise UnsupportedError("Gemma 3 has no attention soft-capping in llama.cpp")
        out = Gemma.hparams(self)
        rp = self.rope_parameters()
        if rp.get("rope_type") == "linear" and rp.get("factor") is not None:
            out[k("rope.scaling.type")] = "linear"
            out[k("rope.scaling.factor")] = f32(rp["factor"])
        elif rp.get("rope_type") not in (None, "default"):
            raise UnsupportedError(f"Gemma 3 rope scaling {rp.get('rope_type')!r} is not supported")
        if c.get("final_logit_softcapping"):
            out[k("final_logit_softcapping")] = f32(c["final_logit_softcapping"])
        out[k("attention.sliding_window")] = u32(c.get("sliding_window") or c["max_position_embeddings"])
        return out


REGISTRY: tuple[type[Architecture], ...] = (Llama, SmolLM3, Qwen2, Qwen3, GPT2, Phi3, Gemma, Gemma2, Gemma3)


def supported() -> list[str]:
    return sorted({a for cls in REGISTRY for a in cls.hf_architectures})


def for_config(config: dict | None, path=None) -> Architecture:
    """The family of an HF config (by `architectures`, then `model_type`), or UnsupportedError naming the supported ones."""
    if not config:
        raise UnsupportedError("no config.json: converting to GGUF needs the model's Hugging Face config "
                               "(put config.json beside the weights or pass --config)", path)
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    for cls in REGISTRY:
        if any(a in cls.hf_architectures for a in archs):
            return cls(config)
    for cls in REGISTRY:
        if model_type in cls.model_types:
            return cls(config)
    what = archs[0] if archs else model_type or "unknown"
    raise UnsupportedError(f"architecture {what!r} is not supported for GGUF conversion; supported: "
                           f"{', '.join(supported())}", path)


def for_gguf(arch_name: str, config: dict) -> Architecture:
    """The family for a GGUF `general.architecture` (the reverse direction)."""
    return gguf_family(arch_name)(config)


def gguf_family(arch_name: str) -> type[Architecture]:
    for cls in REGISTRY:
        if cls.name == arch_name:
            return cls
    raise UnsupportedError(f"GGUF architecture {arch_name!r} is not supported; supported: "
                           f"{', '.join(c.name for c in REGISTRY)}")
