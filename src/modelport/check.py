"""`check`: the guide's FAQ (slow loading, out of memory, model not found, "Unexpected key") as one diagnosis.

Nothing is loaded: headers, config.json and side files only. The weights are compared with what the model's family
(`modelport.families`) says a model of this config holds, name by name and shape by shape, and each difference is
explained by the cause that fits it: a wrapper's name prefix (DDP's `module.`), an unmerged LoRA adapter given as a
model, a config for another size (the one config key that, changed, makes every shape agree), a missing layer,
embeddings stored twice. Then the tokenizer against the embedding, the chat template, GGUF metadata against its
tensors, a pickle that loads slowly, and the running memory (`estimate.running_memory`) against this machine's.

Severities: `error` (loading fails or gives a broken model), `warning` (loads, but slowly or not in this memory),
`note` (worth knowing, nothing to fix). Errors and warnings are findings (the CLI exits 1); notes are not.
"""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import families
from .core.errors import ModelportError, UnsupportedError
from .core.source import ModelSource, read_json
from .estimate import LADDER, running_memory_of_view, view_of_source
from .opening import open as open_model

ERROR, WARNING, NOTE = "error", "warning", "note"

#: Config keys a config for another model size gets wrong, tried one at a time (HF names; GGUF ones in GGUF_KEYS).
SIZE_KEYS = ("intermediate_size", "n_inner", "hidden_size", "n_embd", "num_attention_heads", "n_head",
             "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "n_positions",
             "moe_intermediate_size")
#: How the config keys `open()` gives a GGUF are called in its metadata (`<arch>.` + this).
GGUF_KEYS = {"intermediate_size": "feed_forward_length", "hidden_size": "embedding_length",
             "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
             "num_hidden_layers": "block_count", "head_dim": "attention.key_length", "vocab_size": "vocab_size",
             "max_position_embeddings": "context_length"}
LAYER_KEYS = ("num_hidden_layers", "n_layer")
SHOWN = 8    # individual findings of one kind before the rest are counted in one line


@dataclass
class Finding:
    severity: str      # error | warning | note
    kind: str          # prefix, lora-adapter, config-size, missing-layer, missing, unexpected, shape, tied-twice,
    what: str          # vocab, tokenizer, chat-template, pickle, memory, config, architecture
    cause: str
    fix: str


@dataclass
class CheckReport:
    path: str
    format: str
    family: str | None = None
    findings: list[Finding] = field(default_factory=list)
    memory: dict[str, Any] | None = None

    @property
    def problems(self) -> list[Finding]:
        """Errors and warnings (what makes the CLI exit 1), errors first."""
        return sorted((f for f in self.findings if f.severity != NOTE), key=lambda f: f.severity != ERROR)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, severity: str, kind: str, what: str, cause: str, fix: str) -> None:
        self.findings.append(Finding(severity, kind, what, cause, fix))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "family": self.family, "ok": self.ok,
                "findings": [asdict(f) for f in self.findings], "memory": self.memory}


def check(path: str | os.PathLike, *, trust: bool = False, memory: bool = True) -> CheckReport:
    """Diagnose a model before loading it (see the module docstring). Unreadable input raises ModelportError."""
    path = Path(path)
    source = open_model(path, trust=trust)
    with source:
        report = CheckReport(str(path), source.format)
        if not _adapter(source, report):
            if source.format == "gguf":
                _tensors_gguf(source, report)
            elif source.format != "onnx":   # a graph's initializers carry its exporter's names, and its constants
                _tensors_hf(source, report)
            _vocabulary(source, report)
            _chat_template(source, report)
            _pickle(source, report)
            if memory:
                _memory(source, report)
    return report


def load_failure(path: str | os.PathLike, exc: BaseException, *, trust: bool = False) -> ModelportError:
    """The one-line error for an engine that failed to load `path`: `check`'s first error with its cause, else the
    library's own message (its first line)."""
    try:
        report = check(path, trust=trust, memory=False)
    except ModelportError:
        report = None
    first = next((f for f in report.findings if f.severity == ERROR), None) if report else None
    if first is None:
        if isinstance(exc, ModelportError):
            return exc
        text = (str(exc).strip().splitlines() or [""])[0]
        return ModelportError(f"could not load: {type(exc).__name__}: {text}", path)
    return ModelportError(f"could not load: {first.what}: {first.cause}; fix: {first.fix}".replace("\n", " "), path)


# --- LoRA adapters -------------------------------------------------------------------------------

def _adapter(source: ModelSource, report: CheckReport) -> bool:
    """An adapter folder given as a model: `adapter_config.json` or lora_A/lora_B tensors. True when it is one."""
    lora = [n for n in source.tensors if re.search(r"\.lora_[AB]\.|\.lora_(embedding_)?[AB]$", n)]
    config_path = source.side_files.get("adapter_config.json")
    if not lora and config_path is None:
        return False
    adapter_config = read_json(config_path) if config_path else {}
    base = adapter_config.get("base_model_name_or_path") or (source.config or {}).get("_name_or_path") or "its base model"
    where = f"{len(lora)} lora_A/lora_B tensors" + (", adapter_config.json" if config_path else "")
    report.add(ERROR, "lora-adapter", f"this is a LoRA adapter for {base} ({where}), not a model",
               "an unmerged LoRA adapter: it holds only the low-rank updates, not the base weights",
               f"merge it (peft: PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(out)) "
               f"or pass the base model ({base})")
    return True


# --- tensors against the family's layout -----------------------------------------------------------

def _tensors_hf(source: ModelSource, report: CheckReport) -> None:
    config = source.config
    if not config:   # a folder is meant to be loaded as a model; a lone weights file may be anything
        report.add(WARNING if source.path.is_dir() else NOTE, "config", "no config.json beside the weights",
                   "transformers builds the model from config.json; without it the weights cannot be checked or loaded",
                   "copy config.json from the model's original folder next to the weights")
        return
    try:
        family = families.for_config(config)
    except UnsupportedError as exc:
        report.add(NOTE, "architecture", f"tensors not checked: {exc.message}",
                   "modelport knows the tensor layout of its supported families only", "nothing to do")
        return
    report.family = family.name
    actual = {name: tuple(t.shape) for name, t in source.tensors.items()}
    actual.update({alias: actual[kept] for alias, kept in source.aliases.items() if kept in actual})
    actual = {n: s for n, s in actual.items() if not _ignored(family, n)}
    embedding = family.hf_name("token_embd.weight")
    if family.dims().tied and "lm_head.weight" in actual and "lm_head.weight" not in source.aliases:
        shape = actual.pop("lm_head.weight")
        if shape == actual.get(embedding):
            report.add(NOTE, "tied-twice", "lm_head.weight is stored although tie_word_embeddings is true",
                       "tied embeddings stored twice: the output layer is the embedding matrix",
                       "nothing to fix: transformers ties them when it loads (conversion drops the copy)")
        else:
            actual["lm_head.weight"] = shape
    _compare(report, family, actual, lambda f: f.hf_tensor_shapes(), optional=set(), key_name=lambda k: k,
             where="config.json")


def _ignored(family: families.Family, name: str) -> bool:
    for prefix in family.strip_prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return family.is_ignored(name)


def _tensors_gguf(source: ModelSource, report: CheckReport) -> None:
    arch = source.metadata.get("general.architecture")
    family = families.find(source.config)
    if family is None:
        report.add(NOTE, "architecture", f"tensors not checked: GGUF architecture {arch!r} is not one modelport knows",
                   "modelport knows the tensor layout of its supported families only", "nothing to do")
        return
    report.family = family.name
    actual = {name: tuple(t.shape) for name, t in source.tensors.items()}
    # llama.cpp reuses token_embd when output.weight is absent; rope factors are there only for some configs
    optional = {"output.weight", *families.COMPUTED_TENSORS}
    _compare(report, family, actual, lambda f: f.tensor_shapes(), optional=optional,
             key_name=lambda k: f"{arch}.{GGUF_KEYS.get(k, k)}", where="the GGUF metadata")


def _layer(name: str) -> int | None:
    m = re.search(r"(?:^|\.)(\d+)\.", name)
    return int(m.group(1)) if m else None


def _compare(report: CheckReport, family: families.Family, actual: dict[str, tuple], layout: Callable,
             optional: set[str], key_name: Callable[[str], str], where: str) -> None:
    """Missing, unexpected and mis-shaped tensors, each explained by the likeliest cause."""
    expected = layout(family)
    missing = {n for n in expected if n not in actual and n not in optional}
    unexpected = {n for n in actual if n not in expected and n not in optional}
    renamed = _prefixes(report, missing, unexpected)          # expected name -> actual name
    present = {n: actual[renamed.get(n, n)] for n in expected if n in actual or n in renamed}
    _layers(report, family, expected, actual, missing, unexpected, key_name, where)
    _shapes(report, family, expected, present, layout, key_name, where)
    for name in sorted(missing, key=_natural)[:SHOWN]:
        if name == family.hf_name("output.weight") and "output.weight" not in optional:
            report.add(ERROR, "missing", f"{name} is missing",
                       "the output layer was not saved, and tie_word_embeddings is false",
                       'set "tie_word_embeddings": true if the model shares the embedding; otherwise the '
                       "checkpoint is incomplete")
        else:
            report.add(ERROR, "missing", f"{name} is missing (expected {expected[name]})",
                       f"the weights lack a tensor a {family.name} model with this config has: an incomplete "
                       "checkpoint (a shard left out) or weights of another architecture",
                       "use the complete checkpoint with its own config.json")
    _rest(report, "missing", len(missing))
    for name in sorted(unexpected, key=_natural)[:SHOWN]:
        report.add(ERROR, "unexpected", f"{name} {actual[name]} is not part of a {family.name} model",
                   "transformers drops it ('Unexpected key'): weights of another architecture, or an extra module "
                   "saved with the model", "use the config.json that came with these weights, or remove the tensor")
    _rest(report, "unexpected", len(unexpected))


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _rest(report: CheckReport, kind: str, n: int) -> None:
    if n > SHOWN:
        report.add(ERROR, kind, f"... and {n - SHOWN} more {kind} tensors", "as above", "as above")


def _prefixes(report: CheckReport, missing: set[str], unexpected: set[str]) -> dict[str, str]:
    """Names that match once a prefix is stripped (DDP's `module.`) or added (`model.`): one finding per prefix.
    Removes the matched names from `missing`/`unexpected`; returns expected name -> actual name."""
    renamed: dict[str, str] = {}
    while missing and unexpected:
        votes: Counter = Counter()
        for op, names, others in (("strip", unexpected, missing), ("add", missing, unexpected)):
            for name in names:
                parts = name.split(".")
                for k in range(1, len(parts)):
                    prefix = ".".join(parts[:k]) + "."
                    if name[len(prefix):] in others:
                        votes[op, prefix] += 1
        if not votes:
            break
        (op, prefix), _ = votes.most_common(1)[0]
        pairs = ({u[len(prefix):]: u for u in unexpected if u.startswith(prefix) and u[len(prefix):] in missing}
                 if op == "strip" else
                 {m: m[len(prefix):] for m in missing if m.startswith(prefix) and m[len(prefix):] in unexpected})
        renamed.update(pairs)
        missing.difference_update(pairs)
        unexpected.difference_update(pairs.values())
        example = next(iter(sorted(pairs, key=_natural)))
        if op == "strip":
            report.add(ERROR, "prefix", f"{len(pairs)} tensors are named with a '{prefix}' prefix "
                       f"({pairs[example]!r} for {example!r})",
                       f"a '{prefix}' prefix left by a wrapper: DistributedDataParallel/DataParallel add 'module.', "
                       "torch.compile '_orig_mod.', a training framework its own module name",
                       f"strip it before saving: {{k.removeprefix({prefix!r}): v for k, v in state_dict.items()}} "
                       "(or save model.module instead of the wrapper)")
        else:
            report.add(ERROR, "prefix", f"{len(pairs)} tensors lack the '{prefix}' prefix "
                       f"({pairs[example]!r} for {example!r})",
                       f"saved from the inner model without its '{prefix}' wrapper (e.g. the base model instead of "
                       "the ...ForCausalLM class)",
                       f"add it: {{{prefix!r} + k: v for k, v in state_dict.items()}}, or save the full model class")
    return renamed


def _layers(report, family, expected, actual, missing, unexpected, key_name, where) -> None:
    """Whole layers missing (or extra): one finding for them instead of one per tensor."""
    n_layer = family.n_layer
    have = {_layer(n) for n in actual} - {None}
    by_layer: dict[int, set[str]] = {}
    for name in expected:
        if (i := _layer(name)) is not None:
            by_layer.setdefault(i, set()).add(name)
    gone = sorted(i for i, names in by_layer.items() if names <= missing)
    extra = sorted(i for i in have if i >= n_layer)
    if not gone and not extra:
        return
    for i in gone:
        missing.difference_update(by_layer[i])
    for name in [n for n in unexpected if (_layer(n) or -1) >= n_layer]:
        unexpected.discard(name)
    key = key_name(next((k for k in LAYER_KEYS if k in family.config), LAYER_KEYS[0]))
    if have == set(range(len(have))) and len(have) != n_layer:     # consistently fewer or more: the count is wrong
        report.add(ERROR, "config-size", f"{where} says {key} = {n_layer} but the weights have {len(have)} layers",
                   "a config for another model size (or a checkpoint cut to fewer layers)",
                   f"set {key} to {len(have)} (or use the config.json that came with these weights)")
        return
    if gone:
        report.add(ERROR, "missing-layer", f"layer{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))} "
                   f"{'are' if len(gone) > 1 else 'is'} missing ({where}: {n_layer} layers; the weights have "
                   f"{len(have)})", "a missing layer: a shard was lost, or layers were pruned without renumbering "
                   "them and updating the config", "use the complete checkpoint (re-download the missing shard)")
    if extra:
        report.add(ERROR, "unexpected", f"the weights have layers {extra} beyond the {n_layer} {where} gives",
                   "a config for a shallower model", f"set {key} to {max(have) + 1}")


def _shapes(report, family, expected, present, layout, key_name, where) -> None:
    """Mis-shaped tensors; when one config key, changed, makes every shape agree, that is the one finding."""
    wrong = {n: s for n, s in present.items() if tuple(expected[n]) != tuple(s)}
    if not wrong:
        return
    fix = _size_key(family, present, layout, wrong)
    if fix is not None:
        key, value = fix
        example = next(iter(sorted(wrong, key=_natural)))
        report.add(ERROR, "config-size", f"{where} says {key_name(key)} = {family.config.get(key, family.head_dim())} "
                   f"but the weights have {value} ({len(wrong)} tensors disagree, e.g. {example} is "
                   f"{wrong[example]}, not {expected[example]})",
                   "a config for another model size",
                   f"set {key_name(key)} to {value} (or use the config.json that came with these weights)")
        return
    for name in sorted(wrong, key=_natural)[:SHOWN]:
        report.add(ERROR, "shape", f"{name} is {wrong[name]}; {where} gives {tuple(expected[name])}",
                   "the weights and the config come from different models, or the tensor was modified",
                   "use the config.json that came with these weights")
    _rest(report, "shape", len(wrong))


def _size_key(family, present, layout, wrong) -> tuple[str, int] | None:
    """The one config key whose value, changed, makes every present tensor's shape agree (None if none does)."""
    dims = {d for shape in wrong.values() for d in shape}
    head_dim = family.head_dim()
    candidates = sorted({v for d in dims for v in (d, d // 2, d // 3, d // head_dim, d // 4) if v > 0})
    for key in SIZE_KEYS:
        if key not in family.config and key != "head_dim":
            continue
        for value in candidates:
            if value == family.config.get(key):
                continue
            try:
                shapes = layout(type(family)({**family.config, key: value}))
            except (ModelportError, ValueError, ZeroDivisionError, KeyError, TypeError):
                continue
            if all(tuple(shapes.get(n, ())) == tuple(s) for n, s in present.items()):
                return key, value
    return None


# --- tokenizer, template, format, memory ------------------------------------------------------------

def tokenizer_size(source: ModelSource) -> int | None:
    """Token ids the tokenizer can produce (largest id + 1): GGUF token list, tokenizer.json or vocab.json."""
    if source.format == "gguf":
        tokens = source.metadata.get("tokenizer.ggml.tokens")
        return len(tokens) if tokens is not None else None
    ids: list[int] = []
    if "tokenizer.json" in source.side_files:
        data = read_json(source.side_files["tokenizer.json"], cap=1 << 30)
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            ids += [v for v in vocab.values() if isinstance(v, int)]
        elif isinstance(vocab, list):            # Unigram: [piece, score] pairs, id = position
            ids.append(len(vocab) - 1)
        ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t.get("id"), int)]
    elif "vocab.json" in source.side_files:
        vocab = read_json(source.side_files["vocab.json"], cap=1 << 30)
        ids += [v for v in vocab.values() if isinstance(v, int)]
    return max(ids) + 1 if ids else None


def _embedding_rows(source: ModelSource) -> int | None:
    for name, t in source.tensors.items():
        if name == "token_embd.weight" or name.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight")):
            return int(t.shape[0])
    return None


def _vocabulary(source: ModelSource, report: CheckReport) -> None:
    rows, size = _embedding_rows(source), tokenizer_size(source)
    if size is None:
        if source.format != "gguf":
            report.add(NOTE, "tokenizer", "no tokenizer beside the weights (tokenizer.json, vocab.json)",
                       "the model can be loaded but not given text", "copy the tokenizer files from the original model")
        return
    if rows is not None and size > rows:
        report.add(ERROR, "vocab", f"the tokenizer has {size} tokens but the embedding only {rows} rows",
                   f"ids {rows} to {size - 1} would index past the embedding (tokens added without resizing the "
                   "model, or another model's tokenizer)",
                   "resize the embedding (model.resize_token_embeddings(len(tokenizer))) and save, or use the "
                   "model's own tokenizer")


def has_chat_template(source: ModelSource) -> bool:
    """Whether the model carries a chat template (GGUF metadata, chat_template.jinja/json, tokenizer_config.json)."""
    if source.format == "gguf":
        return bool(source.metadata.get("tokenizer.chat_template"))
    if "chat_template.jinja" in source.side_files or "chat_template.json" in source.side_files:
        return True
    path = source.side_files.get("tokenizer_config.json")
    return bool(path and (read_json(path) or {}).get("chat_template"))


def _chat_template(source: ModelSource, report: CheckReport) -> None:
    if not has_chat_template(source):
        report.add(NOTE, "chat-template", "no chat template",
                   "a base model, or the tokenizer config was left out: chat cannot format a conversation",
                   "use 'modelport run --raw' to send plain text (chat needs a template)")


def _pickle(source: ModelSource, report: CheckReport) -> None:
    if source.format != "pytorch":
        return
    path = Path(report.path)
    out = (path if path.is_dir() else path.parent) / "model.safetensors"
    report.add(WARNING, "pickle", "the weights are a pickle (.bin/.pt)",
               "a pickle is unpickled and copied into memory as a whole: slow to load, twice the memory at peak, "
               "and it can carry code", f"modelport convert {shlex.quote(report.path)} {shlex.quote(str(out))}")


def _memory(source: ModelSource, report: CheckReport) -> None:
    """Running memory (the engine `run` would use) against this machine's available memory."""
    try:
        import psutil
        view = view_of_source(source)
    except (ImportError, ModelportError):
        return
    engine = "llama" if source.format == "gguf" else "hf"
    need = running_memory_of_view(view, engine=engine)
    if need is None:
        return
    available = int(psutil.virtual_memory().available)
    report.memory = {"engine": need["engine"], "ctx": need["ctx"], "need": need["total"], "parts": need["parts"],
                     "available": available, "fits": need["total"] <= available}
    if need["total"] <= available:
        return
    best = next((f for f in LADDER if running_memory_of_view(view, engine="llama", ftype=f)["total"] <= available), None)
    fix = (f"quantize to {best}: modelport {'quantize' if source.format == 'gguf' else 'convert'} "
           f"{shlex.quote(report.path)} model-{best}.gguf {'--type' if source.format == 'gguf' else '--quant'} {best}"
           if best else "a smaller context (--ctx) or a machine with more memory: not even Q2_K fits")
    report.memory["best"] = best
    report.add(WARNING, "memory", f"running it takes about {need['total'] / 1e9:.2f} GB ({need['engine']}, ctx "
               f"{need['ctx']}); {available / 1e9:.2f} GB is available",
               "weights, KV cache and compute buffers are larger than the free memory: the system would swap or "
               "kill the process", fix)
