"""The model as `estimate` sees it: GGUF tensor names, shapes and types, from a GGUF, a checkpoint or a bare config.

Tensors are named and shaped as in GGUF. A checkpoint goes through the converter's own family table and metadata
plan (`modelport.families`, `gguf.convert.plan_hf`), so the estimate of a conversion is byte-exact; families the
converter does not know are renamed with gguf-py's TensorNameMap; a bare config.json is laid out by its family
(`Family.tensor_shapes`). 1-D tensors are F32, as the converter stores them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import families
from ..core.errors import FormatError, ModelportError, UnsupportedError
from ..core.source import ModelSource, read_json
from ..families import Dims
from ..formats.gguf import encode_metadata_value
from ..formats.registry import weight_files
from ..gguf.convert import KEPT_AS_IS, plan_hf
from ..gguf.mixes import allows_quantization
from ..inspection import config_summary
from ..opening import open as open_model


@dataclass(frozen=True)
class Hyper(Dims):
    """What the memory formulas need from a config: the family's `Dims` (from HF keys, or the GGUF equivalents
    `open()` maps to them) and the llama.cpp arch they are for, also for models no family claims."""
    arch: str = "llama"


def _get(config: dict, *names, default=None):
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for name in names:
        for where in (config, text):
            if where.get(name) is not None:
                return where[name]
    return default


def _llama_cpp_arch(model_type: str) -> str:
    """llama.cpp's name for a model type no family claims: itself, or without underscores where gguf-py knows
    that name (qwen2_moe -> qwen2moe)."""
    import gguf

    known = set(gguf.MODEL_ARCH_NAMES.values())
    squeezed = model_type.replace("_", "")
    return squeezed if model_type not in known and squeezed in known else model_type


def hyper_from_config(config: dict | None) -> Hyper | None:
    """Hyperparameters from an HF config (or `ModelSource.config` of a GGUF); None when the basics are missing.
    The family, where one claims the config, names the llama.cpp arch and gives its defaults (head size, tying)."""
    if not config:
        return None
    s = config_summary(config)
    need = ("hidden_size", "layers", "attention_heads", "vocab_size")
    if not all(isinstance(s.get(k), int) and s[k] > 0 for k in need):
        return None
    family = families.find(config)
    model_type = str(_get(config, "model_type", "architecture", default="") or "").lower()
    arch = family.name if family else _llama_cpp_arch(model_type or "llama")
    h, n_head = s["hidden_size"], s["attention_heads"]
    kv = s.get("kv_heads") or n_head
    kv = kv if isinstance(kv, int) else max(kv)          # per-layer lists (GGUF arrays): the largest
    head_dim = _get(config, "head_dim") or (family.head_dim() if family else h // n_head)
    tied = _get(config, "tie_word_embeddings")
    if tied is None:                                     # the model classes' defaults
        tied = family.tied_by_default if family else False
    n_expert = int(_get(config, *families.EXPERT_COUNT_KEYS, default=0) or 0)
    n_used = _get(config, *families.EXPERT_USED_KEYS, default=0) or 0
    n_ff = s.get("intermediate_size") or 4 * h
    return Hyper(arch=arch, n_layer=s["layers"], n_embd=h, n_head=n_head, n_head_kv=kv, head_dim=int(head_dim),
                 n_ff=n_ff if isinstance(n_ff, int) else max(n_ff), n_vocab=s["vocab_size"], tied=bool(tied),
                 n_ctx=s.get("context_length"), n_expert=n_expert,
                 n_ff_expert=int(_get(config, "moe_intermediate_size", default=0) or 0) or (n_ff if n_expert else 0),
                 n_expert_used=int(max(n_used) if isinstance(n_used, list) else n_used) if n_expert else 0)


def tensors_from_config(config: dict, outtype: str = "F16") -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors an HF config describes, as the GGUF converter writes them: GGUF name -> (NumPy shape, row length
    last; type). Tensors llama-quantize never quantizes (1-D, the MoE router) are F32, the others `outtype`.
    The layout comes from the config's family; a config no family claims raises UnsupportedError."""
    hp = hyper_from_config(config)
    if hp is None:
        raise UnsupportedError("the config lacks hidden_size, num_hidden_layers, num_attention_heads or vocab_size")
    family = families.find(config)
    if family is None:
        known = sorted({t for cls in families.REGISTRY for t in cls.model_types + cls.layout_model_types})
        raise UnsupportedError(f"cannot lay out the tensors of a {hp.arch!r} model from its config alone "
                               f"(supported: {', '.join(known)}); give the weights instead")
    kept = family.kept_types()
    return {name: (shape, kept.get(name) or (outtype if allows_quantization(name, shape) else "F32"))
            for name, shape in family.tensor_shapes().items()}


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
    family: type[families.Family] | None = None  # the family that claims the model, where one does

    def expert_tensors(self) -> list[str]:
        """The tensors that hold one slice per expert along their first axis (llama.cpp's stacked experts)."""
        n = self.hyper.n_expert if self.hyper else 0
        return [name for name, (shape, _) in self.tensors.items()
                if n and len(shape) >= 2 and shape[0] == n and name.split(".", 2)[-1] in families.EXPERT_KINDS]

    @property
    def parameter_count(self) -> int:
        """The model's parameters (what transformers counts): GGUF tensors computed from the config excluded."""
        return sum(math.prod(shape) for name, (shape, _) in self.tensors.items()
                   if name not in families.COMPUTED_TENSORS)


def _family_class(config: dict | None) -> type[families.Family] | None:
    family = families.find(config)
    return type(family) if family else None


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
    if not (source_dtype.is_float or source_dtype.is_quantized) or source_dtype.name in KEPT_AS_IS:
        return source_dtype.name
    if not allows_quantization(name, shape):
        return "F32"
    return "BF16" if source_dtype.name == "BF16" else "F16"


def kv_bytes(key: str, value) -> int:
    """Bytes of one GGUF key/value pair as the writer stores it (typed by the writer's own rules)."""
    from gguf import GGUFValueType as V

    sizes = {V.UINT8: 1, V.INT8: 1, V.BOOL: 1, V.UINT16: 2, V.INT16: 2, V.UINT32: 4, V.INT32: 4, V.FLOAT32: 4,
             V.UINT64: 8, V.INT64: 8, V.FLOAT64: 8}

    def payload(v, vtype, sub):
        if vtype == V.STRING:                             # u64 length + bytes
            return 8 + len(v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v)
        if vtype == V.ARRAY:                              # u32 element type + u64 count + elements
            return 12 + sum(payload(x, sub, None) for x in v)
        return sizes[V(vtype)]

    v, vtype, sub = encode_metadata_value(key, value)
    return 8 + len(key.encode()) + 4 + payload(v, vtype, sub)


def tensor_infos_bytes(tensors) -> int:
    """Bytes of the GGUF tensor-info records: name, dims, type, offset."""
    return sum(8 + len(name.encode()) + 4 + 8 * len(shape) + 4 + 8 for name, (shape, _) in tensors.items())


def _converter_view(source: ModelSource, hp: Hyper | None) -> ModelView | None:
    """The GGUF modelport's converter would write: names, shapes and extra tensors from its family (the family's
    n -> 1 / 1 -> n hook included), the header from its metadata plan where it can make one (it needs the
    tokenizer). None for families the converter does not know."""
    try:
        family = families.for_config(source.config)
    except ModelportError:
        return None
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    original: dict[str, str] = {}
    names = None
    for name, values in family.extra_tensors().items():
        tensors[name] = (tuple(values.shape), "F32")
    groups: dict[str, list] = {}
    for ref in source.values():
        try:
            gname = family.gguf_name(ref.name)
        except ModelportError:                          # unknown to the converter (it would refuse): gguf-py's name
            names = names or _name_map(hp, source)
            gname = names.get_name(ref.name, try_suffixes=(".weight", ".bias")) or ref.name
            shape = tuple(ref.shape)
            tensors[gname] = (shape, _current_type(gname, shape, ref.dtype))
            original[gname] = ref.name
            continue
        if gname is not None:                           # None: a buffer llama.cpp does not use (rotary inv_freq, masks)
            groups.setdefault(gname, []).append(ref)
    for gname, refs in groups.items():
        try:
            merged = family.merge_tensors(gname, refs)
        except ModelportError:                          # the converter would refuse the duplicate: count the last
            merged = refs[-1]
        for name, part in family.split_tensor(gname, merged):
            shape = family.gguf_shape(name, tuple(part.shape))
            tensors[name] = (shape, _current_type(name, shape, part.dtype))
            original[name] = refs[0].name
    try:
        meta = plan_hf(source, "F32").metadata
        header = 24 + sum(kv_bytes(k, v) for k, v in meta.items()) + tensor_infos_bytes(tensors)
    except ModelportError:
        header = None
    return ModelView(tensors, hp, "weights", source.format, source.file_size, header=header, original_names=original,
                     family=type(family))


def view_of_source(source: ModelSource) -> ModelView:
    """The GGUF view of an opened model: a GGUF as it is; a checkpoint as modelport's converter would write it
    (its family table and metadata), or, for families it does not convert, renamed by gguf-py's TensorNameMap."""
    hp = hyper_from_config(source.config)
    family = _family_class(source.config)
    if source.format == "gguf":
        tensors = {r.name: (tuple(r.shape), r.dtype.name) for r in source.values()}
        if hp is not None:
            hp = Hyper(**{**asdict(hp), "tied": "output.weight" not in tensors})
        return ModelView(tensors, hp, "gguf", "gguf", source.file_size, source.details.get("tensor_data_offset"),
                         "general.quantization_version" in source.metadata, int(source.details.get("alignment", 32)),
                         source.details.get("file_type"), family=family)
    if source.config:
        view = _converter_view(source, hp)
        if view is not None:
            return view
    names = _name_map(hp, source)
    tensors, original = {}, {}
    experts: dict[str, list] = {}
    for ref in source.values():
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
    return ModelView(tensors, hp, "weights", source.format, source.file_size, original_names=original, family=family)


def _config_path(path: Path) -> Path | None:
    """A bare config: a .json file that is not a shard index, or a folder with config.json and no weights."""
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
        return ModelView(tensors, hyper_from_config(config), "config", family=_family_class(config))
    with open_model(path) as source:
        return view_of_source(source)
