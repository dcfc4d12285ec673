"""`estimate`: the memory a model needs to run or to fine-tune, from its real tensor shapes or a bare config.json.

Why our own: the tools people use give dtype multiples of a parameter count (accelerate's `estimate-memory`) or
a rule of thumb ("7B is 14 GB at F16"). A GGUF file is not a multiple of anything: llama-quantize gives each
tensor its own type (Q4_K_M keeps half the attn_v/ffn_down at Q6_K, the output at Q6_K, norms at F32), a type
may fall back when a row does not split into blocks, and every tensor is padded to the file's alignment.
So the estimate walks the tensors one by one with the quantizer's own rules (`modelport.gguf.mixes`) and the
ggml block geometry (`DTYPES[...]`), which makes it match the files modelport writes to a fraction of a percent.

Conventions (stated here because they are choices, not facts):
- Model view: tensors are named and shaped as in GGUF. A checkpoint goes through the converter's own architecture
  registry and metadata plan (`modelport.gguf.architectures`, `convert.plan_hf`), so the estimate of a conversion is
  byte-exact; families the converter does not know are renamed with gguf-py's TensorNameMap; a bare config.json is
  expanded by `tensors_from_config`. 1-D tensors are F32, as the converter stores them.
- KV cache (llama.cpp's): per layer and token, one K and one V row of n_head_kv * head_dim elements of the
  KV type; times ctx * batch (batch = independent sequences, each with the full context). GQA-aware by construction.
- Compute buffer (approximation of llama.cpp's graph at n_ubatch = 512, no flash attention): F32 logits and the
  attention score matrix dominate: 4 * ubatch * (n_vocab + n_head * ctx) bytes.
- Training (HF Trainer conventions): full fine-tuning keeps F32 weights and gradients, AdamW two F32 states
  (8 bytes/param), 8-bit AdamW two 1-byte states, SGD without momentum none. LoRA/QLoRA freeze the base
  (BF16 for LoRA; NF4 with double quantization for QLoRA's linear layers, BF16 for embeddings/norms/lm_head) and
  train F32 adapters (peft upcasts them), with the same per-parameter optimizer costs.
- Activations (approximation, 16-bit autocast, SDPA attention that stores no score matrix): per layer and token
  a llama block keeps about 8*h + 3*h_kv + 4*ff values (norm inputs, q/k/v, attention output, MLP gate/up/act/product);
  with gradient checkpointing only each layer's input (h values) plus one layer being recomputed. Logits add
  about 8 bytes per vocabulary entry and token (F32 logits and their softmax for the loss).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.dtypes import DTYPES
from .core.errors import FormatError, UnsupportedError
from .core.source import ModelSource, read_json
from .gguf.architectures import COMPUTED_TENSORS
from .opening import open as open_model
from .gguf.mixes import BASE_TYPE, ModelShape, allows_quantization, choose_types
from .inspection import config_summary

#: The rows of the size table: (label, llama.cpp ftype). F16 stands for BF16 too (same size).
ROWS = ("F32", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
#: Best first: what "the best quantization that fits" walks down (F32 is never better than F16 for inference).
LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
KV_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
METHODS = ("full", "lora", "qlora")
OPTIMIZERS = {"adamw": 8.0, "adamw8bit": 2.0, "sgd": 0.0}       # optimizer-state bytes per trainable parameter
#: The guide's LoRA targets (q, k, v, o, gate, up, down) and the GGUF tensor each HF module becomes.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LORA_GGUF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)   # 4-bit codes + 8-bit absmax per 64 + F32 per 256 absmax (double quant)
UBATCH = 512
GiB = 1 << 30


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    memory: int          # nominal bytes
    usable: int          # what one process can really use for the model (see DEVICES)
    kind: str            # "gpu", "cpu", "unified", "phone"


#: Named devices. Usable memory: a CUDA GPU loses about 1 GiB to the context and the runtime; a 16 GiB PC keeps a
#: quarter for the OS and other programs; Apple GPUs may use about two thirds of unified memory on 16 GiB machines
#: (Metal's recommendedMaxWorkingSetSize); a phone gives one app about half of its RAM.
DEVICES = {d.name: d for d in (
    Device("cpu-16gb", "a PC with 16 GiB of RAM", 16 * GiB, 12 * GiB, "cpu"),
    Device("rtx3090", "NVIDIA RTX 3090 (24 GiB)", 24 * GiB, 23 * GiB, "gpu"),
    Device("a100-80gb", "NVIDIA A100 80 GB", 80 * GiB, 79 * GiB, "gpu"),
    Device("m2-16gb", "Apple M2 with 16 GiB unified memory", 16 * GiB, 16 * GiB * 2 // 3, "unified"),
    Device("phone-8gb", "a phone with 8 GiB of RAM", 8 * GiB, 4 * GiB, "phone"),
)}

def parse_memory(text: str | int) -> int:
    """'12GB' (decimal), '16GiB' (binary) -> bytes; the same reader as `convert --shard-size`."""
    from .core.sizes import parse_size

    size = parse_size(text)
    if size < 10**6:
        raise UnsupportedError(f"memory size {text!r} is under 1 MB; write a unit, e.g. 12GB or 16GiB")
    return size


def device_for(device: str | None = None, memory: str | int | None = None) -> Device | None:
    """A named device, or a custom one with `memory` (all of it usable: the user says what they have)."""
    if memory is not None:
        size = parse_memory(memory)
        return Device("custom", f"{size / 1e9:.1f} GB of memory", size, size, "custom")
    if device is None:
        return None
    key = device.strip().lower()
    if key not in DEVICES:
        raise UnsupportedError(f"unknown device {device!r}; known: {', '.join(DEVICES)} (or use --memory 12GB)")
    return DEVICES[key]


# ------------------------------------------------------------------------------------------------ hyperparameters

@dataclass(frozen=True)
class Hyper:
    """What the memory formulas need from a config (HF keys, or the GGUF equivalents `open()` maps to them)."""
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    tied: bool
    n_ctx_train: int | None = None
    n_expert: int = 0
    n_ff_expert: int = 0


def _get(config: dict, *names, default=None):
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for name in names:
        for where in (config, text):
            if where.get(name) is not None:
                return where[name]
    return default


# HF model_type -> llama.cpp architecture where they differ (the converter writes Mistral/Mixtral as llama).
_ARCH = {"mistral": "llama", "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gemma3_text": "gemma3"}


def hyper_from_config(config: dict | None) -> Hyper | None:
    """Hyperparameters from an HF config (or `ModelSource.config` of a GGUF); None when the basics are missing."""
    if not config:
        return None
    s = config_summary(config)
    need = ("hidden_size", "layers", "attention_heads", "vocab_size")
    if not all(isinstance(s.get(k), int) and s[k] > 0 for k in need):
        return None
    model_type = str(_get(config, "model_type", "architecture", default="") or "").lower()
    arch = _ARCH.get(model_type, model_type or "llama")
    h, n_head = s["hidden_size"], s["attention_heads"]
    kv = s.get("kv_heads") or n_head
    kv = kv if isinstance(kv, int) else max(kv)          # per-layer lists (GGUF arrays): the largest
    head_dim = _get(config, "head_dim") or h // n_head
    tied = _get(config, "tie_word_embeddings")
    if tied is None:                                     # the model classes' defaults
        tied = model_type.startswith("gemma") or model_type == "gpt2"
    n_expert = int(_get(config, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    n_ff = s.get("intermediate_size") or 4 * h
    return Hyper(arch=arch, n_layer=s["layers"], n_embd=h, n_head=n_head, n_head_kv=kv, head_dim=int(head_dim),
                 n_ff=n_ff if isinstance(n_ff, int) else max(n_ff), n_vocab=s["vocab_size"], tied=bool(tied),
                 n_ctx_train=s.get("context_length"), n_expert=n_expert,
                 n_ff_expert=int(_get(config, "moe_intermediate_size", default=0) or 0) or (n_ff if n_expert else 0))


# ------------------------------------------------------------------------------------------------ tensor lists

_FAMILIES = ("llama", "smollm3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2")


def tensors_from_config(config: dict, outtype: str = "F16") -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors a llama-family HF config describes, as the GGUF converter writes them.

    Returns GGUF name -> (NumPy shape, row length last; type). 1-D tensors are F32, matrices `outtype`
    (the MoE router too is F32, as the converter stores it). Names come from gguf-py's TENSOR_NAMES.
    Families: llama, mistral, mixtral (experts), qwen2 (q/k/v biases), qwen3 (q/k norms), gemma, gemma2, gemma3
    (extra norms), phi3 (fused qkv and gate_up), gpt2; others raise UnsupportedError. Tensors the converter
    computes from the config (Llama 3.1's rope_freqs) come from its architecture registry.
    """
    from gguf import TENSOR_NAMES, MODEL_TENSOR as T

    hp = hyper_from_config(config)
    if hp is None:
        raise UnsupportedError("the config lacks hidden_size, num_hidden_layers, num_attention_heads or vocab_size")
    if hp.arch not in _FAMILIES:
        raise UnsupportedError(f"cannot lay out the tensors of a {hp.arch!r} model from its config alone "
                               f"(supported: {', '.join(_FAMILIES)}, mistral, mixtral); give the weights instead")
    h, hd, ff = hp.n_embd, hp.head_dim, hp.n_ff
    q, kv = hp.n_head * hd, hp.n_head_kv * hd
    out: dict[str, tuple[tuple[int, ...], str]] = {}

    def add(kind, shape, bid=None, suffix="weight"):
        name = TENSOR_NAMES[kind].format(bid=bid) + "." + suffix
        f32 = len(shape) == 1 or kind in (T.FFN_GATE_INP, T.POS_EMBD)
        out[name] = (tuple(int(x) for x in shape), "F32" if f32 else outtype)

    _extra_tensors(config, add)
    add(T.TOKEN_EMBD, (hp.n_vocab, h))
    if hp.arch == "gpt2":
        _gpt2_blocks(hp, add)
        return out
    bias = bool(_get(config, "attention_bias")) or hp.arch == "qwen2"
    mlp_bias = bool(_get(config, "mlp_bias"))
    for i in range(hp.n_layer):
        add(T.ATTN_NORM, (h,), i)
        if hp.arch == "phi3":
            add(T.ATTN_QKV, (q + 2 * kv, h), i)
        else:
            add(T.ATTN_Q, (q, h), i)
            add(T.ATTN_K, (kv, h), i)
            add(T.ATTN_V, (kv, h), i)
            if bias:
                for kind, n in ((T.ATTN_Q, q), (T.ATTN_K, kv), (T.ATTN_V, kv)):
                    add(kind, (n,), i, "bias")
        if hp.arch in ("qwen3", "gemma3"):
            add(T.ATTN_Q_NORM, (hd,), i)
            add(T.ATTN_K_NORM, (hd,), i)
        add(T.ATTN_OUT, (h, q), i)
        if bool(_get(config, "attention_bias")) and hp.arch != "qwen2":
            add(T.ATTN_OUT, (h,), i, "bias")
        if hp.arch in ("gemma2", "gemma3"):
            add(T.ATTN_POST_NORM, (h,), i)
        add(T.FFN_NORM, (h,), i)
        if hp.n_expert:
            e, fe = hp.n_expert, hp.n_ff_expert
            add(T.FFN_GATE_INP, (e, h), i)
            add(T.FFN_GATE_EXP, (e, fe, h), i)
            add(T.FFN_UP_EXP, (e, fe, h), i)
            add(T.FFN_DOWN_EXP, (e, h, fe), i)
        elif hp.arch == "phi3":
            add(T.FFN_UP, (2 * ff, h), i)
            add(T.FFN_DOWN, (h, ff), i)
        else:
            add(T.FFN_GATE, (ff, h), i)
            add(T.FFN_UP, (ff, h), i)
            add(T.FFN_DOWN, (h, ff), i)
            if mlp_bias:
                for kind, n in ((T.FFN_GATE, ff), (T.FFN_UP, ff), (T.FFN_DOWN, h)):
                    add(kind, (n,), i, "bias")
        if hp.arch in ("gemma2", "gemma3"):
            add(T.FFN_POST_NORM, (h,), i)
    add(T.OUTPUT_NORM, (h,))
    if not hp.tied:
        add(T.OUTPUT, (hp.n_vocab, h))
    return out


def _extra_tensors(config: dict, add) -> None:
    from gguf import MODEL_TENSOR as T

    from .core.errors import ModelportError
    from .gguf import architectures

    try:
        extra = architectures.for_config(config).extra_tensors()
    except ModelportError:
        return
    kinds = {"rope_freqs.weight": T.ROPE_FREQS, "rope_factors_long.weight": T.ROPE_FACTORS_LONG,
             "rope_factors_short.weight": T.ROPE_FACTORS_SHORT}
    for name, values in extra.items():
        add(kinds[name], values.shape)


def _gpt2_blocks(hp: Hyper, add) -> None:
    """GPT-2: learned positions, LayerNorms with bias, fused QKV, every linear with a bias."""
    from gguf import MODEL_TENSOR as T

    h, ff = hp.n_embd, hp.n_ff
    add(T.POS_EMBD, (hp.n_ctx_train or 1024, h))
    for i in range(hp.n_layer):
        for kind, rows, cols in ((T.ATTN_NORM, h, 0), (T.ATTN_QKV, 3 * h, h), (T.ATTN_OUT, h, h), (T.FFN_NORM, h, 0),
                                 (T.FFN_UP, ff, h), (T.FFN_DOWN, h, ff)):
            add(kind, (rows, cols) if cols else (rows,), i)
            add(kind, (rows,), i, "bias")
    add(T.OUTPUT_NORM, (h,))
    add(T.OUTPUT_NORM, (h,), suffix="bias")
    if not hp.tied:
        add(T.OUTPUT, (hp.n_vocab, h))


@dataclass
class ModelView:
    """A model as GGUF sees it: tensors (GGUF name -> (shape, type)), hyperparameters and where they came from."""
    tensors: dict[str, tuple[tuple[int, ...], str]]
    hyper: Hyper | None
    kind: str                                  # "gguf", "weights" (any other format) or "config"
    source_format: str | None = None
    file_size: int | None = None               # the input's size on disk (None for a bare config)
    header: int | None = None                  # bytes before the tensor data, where known (a GGUF, a converter plan)
    quant_version: bool = False                # the header already has general.quantization_version
    alignment: int = 32
    file_type: str | None = None               # a GGUF input's ftype
    original_names: dict[str, str] = field(default_factory=dict)   # GGUF name -> the checkpoint's name

    @property
    def parameter_count(self) -> int:
        """The model's parameters (what transformers counts): GGUF tensors computed from the config excluded."""
        return sum(math.prod(shape) for name, (shape, _) in self.tensors.items() if name not in COMPUTED_TENSORS)


_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(\w+)\.weight$")


def _name_map(hp: Hyper | None, source: ModelSource):
    """gguf-py's HF -> GGUF name map for the model's architecture (llama's where gguf-py does not know it)."""
    import gguf

    layers = [int(m.group(1)) for n in source.keys() for m in [re.search(r"\.(\d+)\.", n)] if m]
    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    arch = archs.get(hp.arch if hp else "llama", gguf.MODEL_ARCH.LLAMA)
    return gguf.get_tensor_name_map(arch, max([hp.n_layer if hp else 0] + [x + 1 for x in layers]))


def _current_type(name: str, shape, source_dtype) -> str:
    """The type a tensor has in the converter's float GGUF: F32 for what llama-quantize never quantizes."""
    if not (source_dtype.is_float or source_dtype.is_quantized):
        return source_dtype.name
    if not allows_quantization(name, shape):
        return "F32"
    return "BF16" if source_dtype.name == "BF16" else "F16"


def _kv_bytes(key: str, value) -> int:
    """Bytes of one GGUF key/value pair as the writer stores it (typed by the writer's own rules)."""
    from gguf import GGUFValueType as V

    from .formats.gguf import encode_metadata_value as _typed

    sizes = {V.UINT8: 1, V.INT8: 1, V.BOOL: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4,
             V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}

    def payload(v, vtype, sub):
        if vtype == V.STRING:                             # u64 length + bytes
            return 8 + len(v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v)
        if vtype == V.ARRAY:                              # u32 element type + u64 count + elements
            return 12 + sum(payload(x, sub, None) for x in v)
        return sizes[V(vtype)]

    v, vtype, sub = _typed(key, value)
    return 8 + len(key.encode()) + 4 + payload(v, vtype, sub)


def _tensor_infos(tensors) -> int:
    return sum(8 + len(name.encode()) + 4 + 8 * len(shape) + 4 + 8 for name, (shape, _) in tensors.items())


def _converter_view(source: ModelSource, hp: Hyper | None) -> ModelView | None:
    """The GGUF modelport's converter would write: names, shapes and extra tensors from its architecture registry,
    the header from its metadata plan where it can make one (it needs the tokenizer). None for other families."""
    from .core.errors import ModelportError
    from .gguf import architectures
    from .gguf.convert import plan_hf

    try:
        arch = architectures.for_config(source.config)
    except ModelportError:
        return None
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    original: dict[str, str] = {}
    names = None
    for name, values in arch.extra_tensors().items():
        tensors[name] = (tuple(values.shape), "F32")
    for ref in source:
        try:
            gname = arch.gguf_name(ref.name)
        except ModelportError:                          # unknown to the converter (it would refuse): gguf-py's name
            names = names or _name_map(hp, source)
            gname = names.get_name(ref.name, try_suffixes=(".weight", ".bias")) or ref.name
        if gname is None:
            continue                                    # a buffer llama.cpp does not use (rotary inv_freq, masks)
        shape = arch.gguf_shape(gname, tuple(ref.shape))
        tensors[gname] = (shape, _current_type(gname, shape, ref.dtype))
        original[gname] = ref.name
    try:
        meta = plan_hf(source, "F32").metadata
        raw = 24 + sum(_kv_bytes(k, v) for k, v in meta.items()) + _tensor_infos(tensors)
        header = raw
    except ModelportError:
        header = None
    return ModelView(tensors, hp, "weights", source.format, source.file_size, header=header, original_names=original)


def view_of_source(source: ModelSource) -> ModelView:
    """The GGUF view of an opened model: a GGUF as it is; a checkpoint as modelport's converter would write it
    (its architecture registry and metadata), or, for families it does not convert, renamed by gguf-py's TensorNameMap."""
    hp = hyper_from_config(source.config)
    if source.format == "gguf":
        tensors = {r.name: (tuple(r.shape), r.dtype.name) for r in source}
        if hp is not None:
            hp = Hyper(**{**asdict(hp), "tied": "output.weight" not in tensors})
        return ModelView(tensors, hp, "gguf", "gguf", source.file_size, source.details.get("tensor_data_offset"),
                         "general.quantization_version" in source.metadata, int(source.details.get("alignment", 32)),
                         source.details.get("file_type"))
    if source.config:
        view = _converter_view(source, hp)
        if view is not None:
            return view
    names = _name_map(hp, source)
    tensors, original = {}, {}
    experts: dict[str, list] = {}
    for ref in source:
        if ref.name.endswith("rotary_emb.inv_freq"):
            continue                                   # a buffer, not a weight: the converter drops it
        m = _EXPERT.match(ref.name)
        if m:                                          # llama.cpp stacks per-expert matrices into one 3-D tensor
            key = f"{m.group(1)}.{m.group(3)}"
            experts.setdefault(key, [ref.shape, 0, ref.dtype, ref.name])[1] += 1
            continue
        name = names.get_name(ref.name, try_suffixes=(".weight", ".bias")) or ref.name
        if name in tensors:
            name = ref.name                            # two names mapping to one: keep both, under their own names
        tensors[name] = (tuple(ref.shape), _current_type(name, ref.shape, ref.dtype))
        original[name] = ref.name
    for key, (shape, count, dtype, first) in experts.items():
        base = names.get_name(key)
        name = base + ".weight" if base else first
        shape = (count, *shape) if base else tuple(shape)
        tensors[name] = (shape, _current_type(name, shape, dtype))
    return ModelView(tensors, hp, "weights", source.format, source.file_size, original_names=original)


def _config_path(path: Path) -> Path | None:
    """A bare config: a .json file that is not a shard index, or a folder with config.json and no weights."""
    from .formats.registry import weight_files

    if path.is_dir():
        cfg = path / "config.json"
        return cfg if cfg.is_file() and not weight_files(path) else None
    if path.suffix.lower() == ".json" and not path.name.endswith(".index.json"):
        return path
    return None


def load_view(path: str | os.PathLike) -> ModelView:
    """The GGUF view of a model file, folder, GGUF or bare config.json."""
    path = Path(path)
    cfg = _config_path(path) if path.exists() else None
    if cfg is not None:
        config = read_json(cfg)
        if not isinstance(config, dict):
            raise FormatError("a config.json must hold a JSON object", cfg)
        try:
            tensors = tensors_from_config(config)
        except UnsupportedError as exc:
            raise UnsupportedError(str(exc), cfg) from None
        return ModelView(tensors, hyper_from_config(config), "config")
    with open_model(path) as source:
        return view_of_source(source)


# ------------------------------------------------------------------------------------------------ weights

def _model_shape(view: ModelView) -> ModelShape:
    hp = view.hyper
    if hp is None:
        layers = {m.group(1) for n in view.tensors for m in [re.match(r"blk\.(\d+)\.", n)] if m}
        return ModelShape(max(1, len(layers)), 1, 1)
    return ModelShape(hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert, hp.arch)


def header_bytes(view: ModelView, quantized: bool = False) -> int:
    """Bytes before the tensor data: known for a GGUF input and for what the converter would write; otherwise tensor
    infos (exact) plus metadata (estimated: 4 KiB of hyperparameters, about 24 bytes per vocabulary token).
    A quantized file also gets `general.quantization_version`."""
    if view.header is not None:
        raw = int(view.header)
    else:
        raw = 24 + 4096 + 24 * (view.hyper.n_vocab if view.hyper else 0) + _tensor_infos(view.tensors)
    if quantized and not view.quant_version:
        import numpy as np

        raw += _kv_bytes("general.quantization_version", np.uint32(2))
    return -(-raw // view.alignment) * view.alignment


def gguf_types(view: ModelView, ftype: str) -> dict[str, str]:
    """The type each tensor gets in a `ftype` GGUF (llama-quantize's rules, `modelport.gguf.mixes`)."""
    # For F32/F16/BF16 this is also what the converter writes: 1-D tensors and norms F32, other matrices the outtype.
    return choose_types(view.tensors, ftype, _model_shape(view))


def weight_sizes(view: ModelView, rows=ROWS) -> dict[str, dict[str, Any]]:
    """For each file type: the GGUF file's bytes (header + aligned tensor data) and its tensor types."""
    out = {}
    for ftype in rows:
        head = header_bytes(view, DTYPES[BASE_TYPE[ftype]].is_quantized)
        types = gguf_types(view, ftype)
        data, counts = 0, {}
        for name, qtype in types.items():
            shape = view.tensors[name][0]
            n = DTYPES[qtype].nbytes(math.prod(shape))
            data += -(-n // view.alignment) * view.alignment
            counts[qtype] = counts.get(qtype, 0) + 1
        numel = sum(math.prod(shape) for shape, _ in view.tensors.values())
        out[ftype] = {"bytes": head + data, "tensor_bytes": data,
                      "bits_per_weight": round(data * 8 / numel, 3) if numel else None,
                      "tensor_types": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}
    return out


# ------------------------------------------------------------------------------------------------ inference

def kv_cache_bytes(hp: Hyper, ctx: int, batch: int = 1, kv_type: str = "F16") -> int:
    """llama.cpp's KV cache: n_layer * (K row + V row) per token, rows of n_head_kv * head_dim elements."""
    dt = DTYPES[kv_type.upper()]
    row = hp.n_head_kv * hp.head_dim
    if row % dt.block_size:
        raise UnsupportedError(f"a KV row of {row} values does not split into {dt.name} blocks of {dt.block_size}")
    return 2 * hp.n_layer * dt.nbytes(row) * ctx * batch


def compute_buffer_bytes(hp: Hyper, ctx: int, batch: int = 1) -> int:
    """Approximation (see the module docstring): F32 logits and attention scores of one micro-batch."""
    ub = min(UBATCH, ctx * batch)
    return 4 * ub * (hp.n_vocab + hp.n_head * ctx)


# ------------------------------------------------------------------------------------------------ training

def _lora_modules(view: ModelView, targets) -> list[tuple[int, int]]:
    """(in, out) of every matrix a LoRA with these target module names wraps (peft's suffix match)."""
    targets = tuple(targets)
    all_linear = targets == ("all-linear",)
    wanted_gguf = {_LORA_GGUF[t] for t in targets if t in _LORA_GGUF}
    dims = []
    for name, (shape, _) in view.tensors.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        original = view.original_names.get(name)
        if all_linear:
            hit = name.startswith("blk.") and "norm" not in name
        elif original is not None:
            module = original[: -len(".weight")]
            hit = any(module == t or module.endswith("." + t) for t in targets)
        else:
            m = re.match(r"blk\.\d+\.(\w+)\.weight$", name)
            hit = bool(m) and m.group(1) in wanted_gguf
        if hit:
            dims.append((shape[1], shape[0]))
    return dims


def lora_parameter_count(view: ModelView, r: int = 8, targets=LORA_TARGETS) -> int:
    """Trainable LoRA parameters: r * (in + out) per wrapped matrix (peft, bias="none")."""
    return sum(r * (i + o) for i, o in _lora_modules(view, targets))


def activation_bytes(hp: Hyper, seq_len: int, batch: int, grad_checkpointing: bool, lora_r: int = 0,
                     lora_modules: int = 0) -> int:
    """Approximation (see the module docstring), 16-bit activations."""
    tokens = seq_len * batch
    kv = hp.n_head_kv * hp.head_dim
    ff = hp.n_ff_expert if hp.n_expert else hp.n_ff
    per_layer = 2 * (8 * hp.n_embd + 3 * kv + 4 * ff) + 2 * lora_r * lora_modules // max(1, hp.n_layer)
    if grad_checkpointing:
        layers = 2 * hp.n_embd * hp.n_layer + per_layer
    else:
        layers = per_layer * hp.n_layer
    return tokens * (layers + 8 * hp.n_vocab)


def training_memory(view: ModelView, method: str = "lora", *, lora_r: int = 8, targets=LORA_TARGETS,
                    seq_len: int = 512, batch: int = 1, optimizer: str = "adamw",
                    grad_checkpointing: bool = False) -> dict[str, Any]:
    """Bytes for weights, gradients, optimizer states, LoRA adapters and activations (module docstring)."""
    method, optimizer = method.lower(), optimizer.lower()
    if method not in METHODS:
        raise UnsupportedError(f"unknown training method {method!r}; use one of {', '.join(METHODS)}")
    if optimizer not in OPTIMIZERS:
        raise UnsupportedError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    state = OPTIMIZERS[optimizer]
    params = view.parameter_count
    modules = _lora_modules(view, targets) if method != "full" else []
    lora = sum(lora_r * (i + o) for i, o in modules)
    if method == "full":
        trainable = params
        weights, grads, opt, adapters = 4 * params, 4 * trainable, state * trainable, 0
    else:
        trainable = lora
        if method == "lora":
            weights = 2 * params
        else:  # bitsandbytes quantizes every nn.Linear except the output layer; the rest stays BF16
            linear = sum(math.prod(s) for n, (s, _) in view.tensors.items()
                         if len(s) >= 2 and n.startswith("blk.") and allows_quantization(n, s))
            weights = int(NF4_BYTES * linear) + 2 * (params - linear)
        adapters, grads, opt = 4 * lora, 4 * lora, state * lora
    acts = (activation_bytes(view.hyper, seq_len, batch, grad_checkpointing, lora_r if modules else 0, len(modules))
            if view.hyper else None)
    total = weights + adapters + grads + int(opt) + (acts or 0)
    return {"method": method, "optimizer": optimizer, "seq_len": seq_len, "batch": batch,
            "grad_checkpointing": grad_checkpointing, "lora_r": lora_r if method != "full" else None,
            "lora_targets": list(targets) if method != "full" else None,
            "trainable_parameters": trainable, "total_parameters": params + (lora if method != "full" else 0),
            "weights": weights, "lora_parameters": adapters, "gradients": grads, "optimizer_states": int(opt),
            "activations": acts, "total": total}


# ------------------------------------------------------------------------------------------------ the report

def _fits(need: int, device: Device | None):
    return None if device is None else need <= device.usable


def estimate(model: str | os.PathLike, *, ctx: int | None = None, batch: int = 1, kv_type: str = "f16",
             method: str | None = None, lora_r: int = 8, lora_targets=LORA_TARGETS, seq_len: int = 512,
             train_batch: int | None = None, optimizer: str = "adamw", grad_checkpointing: bool = False,
             device: str | None = None, memory: str | int | None = None) -> dict[str, Any]:
    """Memory for inference (every GGUF mix, KV cache, compute) and, with `method`, for training. JSON-able."""
    view = load_view(model)
    return estimate_view(view, model=str(model), ctx=ctx, batch=batch, kv_type=kv_type, method=method,
                         lora_r=lora_r, lora_targets=lora_targets, seq_len=seq_len, train_batch=train_batch,
                         optimizer=optimizer, grad_checkpointing=grad_checkpointing, device=device, memory=memory)


def estimate_view(view: ModelView, *, model: str = "", ctx: int | None = None, batch: int = 1, kv_type: str = "f16",
                  method: str | None = None, lora_r: int = 8, lora_targets=LORA_TARGETS, seq_len: int = 512,
                  train_batch: int | None = None, optimizer: str = "adamw", grad_checkpointing: bool = False,
                  device: str | None = None, memory: str | int | None = None) -> dict[str, Any]:
    kv_type = kv_type.upper()
    if kv_type not in KV_TYPES:
        raise UnsupportedError(f"unknown KV cache type {kv_type.lower()!r}; use one of {', '.join(t.lower() for t in KV_TYPES)}")
    if batch < 1 or (ctx is not None and ctx < 1) or seq_len < 1 or lora_r < 1:
        raise UnsupportedError("--ctx, --batch, --seq-len and --lora-r must be positive")
    dev = device_for(device, memory)
    hp = view.hyper
    sizes = weight_sizes(view)
    report: dict[str, Any] = {
        "model": model, "source": view.kind, "format": view.source_format, "file_size": view.file_size,
        "file_type": view.file_type, "parameters": view.parameter_count, "tensors": len(view.tensors),
        "hyperparameters": asdict(hp) if hp else None, "weights": sizes,
    }
    if hp is not None:
        ctx = ctx or min(hp.n_ctx_train or 4096, 4096)
        kv = kv_cache_bytes(hp, ctx, batch, kv_type)
        compute = compute_buffer_bytes(hp, ctx, batch)
        report["inference"] = {
            "ctx": ctx, "batch": batch, "kv_type": kv_type, "kv_cache": kv, "compute_buffer": compute,
            "total": {f: row["bytes"] + kv + compute for f, row in sizes.items()},
        }
    else:
        report["inference"] = None
    if method:
        report["training"] = training_memory(view, method, lora_r=lora_r, targets=lora_targets, seq_len=seq_len,
                                             batch=train_batch or batch, optimizer=optimizer,
                                             grad_checkpointing=grad_checkpointing)
    if dev is not None:
        need = report["inference"]["total"] if report["inference"] else {f: r["bytes"] for f, r in sizes.items()}
        fits = {f: _fits(n, dev) for f, n in need.items()}
        best = next((f for f in LADDER if fits.get(f)), None)
        report["device"] = {**asdict(dev), "fits": fits, "best": best}
        if method:
            report["device"]["training_fits"] = _fits(report["training"]["total"], dev)
    return report
