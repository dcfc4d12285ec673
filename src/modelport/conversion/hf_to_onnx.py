"""Hugging Face model (folder, weights + config, or GGUF) → a runnable ONNX folder (`convert MODEL OUT --to onnx`).

The folder: `model.onnx` with its weights in `model.onnx.data` (always external: no 2 GB protobuf limit; a tied
weight is one parameter, stored once), config.json, generation_config.json, tokenizer files, chat_template.jinja,
a sentence-transformers folder's modules.json and 1_Pooling/, and `modelport_onnx.json`, which tells an engine
the graph's kind and geometry without parsing it. The graph and its proof are in `onnx_graph`.

The model is loaded by transformers from safetensors in float32 (`trust_remote_code=False`, eager attention:
the exact reference, and the one every family's softcapping and sliding windows run in). A source that is not
already an HF safetensors folder is first written as one in a temporary folder beside the output, by the
existing routes (GGUF → HF dequantizes; weights + config streams tensor by tensor), so no pickle is ever
unpickled. Export holds one float32 copy of the model; verification adds onnxruntime's (peak: about two copies,
reported as `peak_rss_bytes`). `--verify` (the default) proves the graph against the
PyTorch model before the folder is renamed into place: a failed check leaves no output. `--quantize int8`
adds `model_int8.onnx` (onnxruntime's dynamic quantization) with its agreement with the float graph.
"""

from __future__ import annotations

import contextlib
import gc
import json
import resource
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import pooling
from ..core.atomic import atomic_dir
from ..core.errors import CheckFailed, MissingDependencyError, UnsupportedError
from ..core.source import ModelSource, read_json
from ..families import REGISTRY
from ..opening import open as open_model
from ..writing import ConvertResult, report_phase
from . import onnx_graph as graph
from .gguf_to_hf import write_gguf_as_hf
from .hf_to_gguf import NEEDS_CONFIG, model_config
from .route import Request
from .weights import WeightsRoute, copy_side_files

MODEL_FILE, INT8_FILE, MANIFEST = "model.onnx", "model_int8.onnx", "modelport_onnx.json"
QUANTIZE_CHOICES = ("int8",)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_kind(config: dict) -> str:
    """"causal-lm" for a *ForCausalLM / *LMHeadModel or a registered family's model_type, else "encoder"."""
    archs = config.get("architectures") or []
    if archs:
        return "causal-lm" if any(a.endswith(CAUSAL_SUFFIXES) for a in archs) else "encoder"
    known = {t for cls in REGISTRY for t in cls.model_types}
    return "causal-lm" if config.get("model_type") in known else "encoder"


#: sentence-transformers pooling modes the graph builds (onnx_graph.pool), by their config names.
GRAPH_POOLING = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}


def declared_pooling(folder: Path) -> graph.Pooling | None:
    """The pooling a sentence-transformers folder declares (read by `modelport.pooling`, as `embed` reads it) as
    the graph builds it, or None for a folder that declares none. The graph builds one mode at a time."""
    declared = pooling.declared_pooling(folder)
    if declared.origin in (pooling.Pooling().origin, "modules.json"):   # no modules.json, or no Pooling module in it
        return None
    modes = [GRAPH_POOLING.get(mode) for mode in declared.modes]
    if len(modes) != 1 or modes[0] is None:
        raise UnsupportedError("the pooling must be exactly one of mean, cls, max (found "
                               f"{', '.join(declared.modes)})", folder / declared.origin)
    return graph.Pooling(modes[0], normalize=declared.normalize)


@contextlib.contextmanager
def hf_folder(source: ModelSource, request: Request) -> Iterator[Path]:
    """An HF safetensors folder with config and tokenizer for `source`: its own folder, or one written by the
    GGUF → HF or weights route into a temporary folder beside the output (removed after)."""
    if source.format == "safetensors" and source.path.is_dir() and source.config is not None:
        yield source.path
        return
    config, side = (None, {}) if source.format == "gguf" else model_config(source, request.config)
    if source.format != "gguf" and config is None:
        raise UnsupportedError(NEEDS_CONFIG.replace("GGUF", "ONNX"), source.path)
    request.dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{request.dst.name}.hf-", dir=request.dst.parent) as tmp:
        folder = Path(tmp) / "hf"
        if source.format == "gguf":
            write_gguf_as_hf(source, folder, progress=request.progress)
        else:
            WeightsRoute().run(source, Request(folder, to="hf", dequantize=True, progress=request.progress))
            if not (folder / "config.json").is_file():
                (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            for name, path in side.items():
                if not (folder / name).exists():
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    (folder / name).write_bytes(path.read_bytes())
        yield folder


def load(folder: Path, kind: str):
    """The model in float32 through transformers, local files only, no remote code, eager attention."""
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "onnx", "exporting to ONNX") from None
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    transformers.logging.set_verbosity_error()
    try:
        with graph.quiet():
            model = auto.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                         trust_remote_code=False, attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedError(f"transformers cannot load this model ({str(exc).splitlines()[0][:300]})", folder) from None
    return model.eval()


def write_chat_template(folder: Path) -> None:
    """chat_template.jinja from tokenizer_config.json when the template is only there (older folders)."""
    target, config_path = folder / "chat_template.jinja", folder / "tokenizer_config.json"
    if target.exists() or not config_path.is_file():
        return
    template = read_json(config_path).get("chat_template")
    if isinstance(template, str):
        target.write_text(template)


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def special_ids(model) -> tuple[int, set[int]]:
    """The pad id the verify inputs use and the ids generate() stops on."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos = eos if eos is not None else model.config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else next(iter(sorted(stops)), 0)
    return int(pad), {int(s) for s in stops}


def data_bytes(folder: Path, model_file: str) -> int:
    """A graph's size on disk: the .onnx file and its external data."""
    return sum(p.stat().st_size for p in folder.glob(f"{model_file}*"))


def export_folder(source: ModelSource, request: Request, folder: Path, out: Path) -> dict:
    """Export the HF `folder` into the (temporary) output `out`; returns the manifest."""
    config = read_json(folder / "config.json")
    kind = model_kind(config)
    pooling = declared_pooling(folder) if kind == "encoder" else None
    report_phase(request.progress, "loading model")
    model = load(folder, kind)
    parameters = {id(p): p for p in model.parameters()}
    model_bytes = sum(p.numel() * 4 for p in parameters.values())
    report_phase(request.progress, "exporting to ONNX")
    manifest: dict = {"kind": kind, "opset": graph.OPSET, "source": str(source.path), "model": MODEL_FILE,
                      "files": {"float32": MODEL_FILE}}
    if kind == "causal-lm":
        geo = graph.export_causal(model, out / MODEL_FILE)
        manifest.update(num_layers=geo.num_layers, num_key_value_heads=geo.num_key_value_heads, head_dim=geo.head_dim,
                        vocab_size=geo.vocab_size, inputs=["input_ids", "attention_mask", "position_ids",
                                                           *graph.past_names(geo.num_layers)],
                        outputs=["logits", *graph.present_names(geo.num_layers)])
    else:
        inputs = graph.export_encoder(model, out / MODEL_FILE, pooling)
        manifest.update(inputs=inputs, outputs=graph.encoder_outputs(model, pooling),
                        hidden_size=int(model.config.hidden_size))
        if pooling is not None:
            manifest["pooling"] = {"mode": pooling.mode, "normalize": pooling.normalize}
    pad, eos = special_ids(model)
    vocab = int(model.config.get_text_config().vocab_size)
    manifest["parameters"] = sum(p.numel() for p in parameters.values())
    manifest["tensors"] = len(parameters)
    reference = None
    if request.verify:
        report_phase(request.progress, "verifying with onnxruntime")
        if kind == "causal-lm":
            reference = graph.causal_reference(model, geo, pad)
        else:
            wrapper = graph.encoder_wrapper(model, manifest["outputs"], pooling, "token_type_ids" in manifest["inputs"])
            reference = graph.encoder_reference(wrapper, manifest["inputs"], vocab, pad)
            del wrapper
    # onnxruntime loads its own copy of the weights: drop ours first. (Measured with torch 2.13: the exported program
    # still keeps the weights alive from inside torch, so the peak is about two copies; see the report's figures.)
    del model, parameters
    gc.collect()
    if reference is not None:
        if kind == "causal-lm":
            check = graph.check_causal(out / MODEL_FILE, geo, reference, eos)
        else:
            check = graph.check_encoder(out / MODEL_FILE, manifest["outputs"], reference)
        manifest["verify"] = verification_record(check)
        if not check.passed:
            raise CheckFailed(f"verify failed: {verify_summary(manifest['verify'])}; nothing written", request.dst)
    if request.quantize:
        report_phase(request.progress, "quantizing to int8")
        graph.quantize_int8(out / MODEL_FILE, out / INT8_FILE)
        if kind == "causal-lm":
            agreement = graph.agreement_causal(out / MODEL_FILE, out / INT8_FILE, geo, pad)
        else:
            agreement = graph.agreement_encoder(out / MODEL_FILE, out / INT8_FILE, manifest["inputs"],
                                                manifest["outputs"][-1], vocab, pad)
        manifest["files"]["int8"] = INT8_FILE
        manifest["int8"] = {"file": INT8_FILE, "bytes": data_bytes(out, INT8_FILE),
                            "float_bytes": data_bytes(out, MODEL_FILE), **agreement}
    manifest["model_bytes"] = model_bytes
    manifest["peak_rss_bytes"] = peak_rss()
    return manifest


def verification_record(check: graph.Verification) -> dict:
    record = {"max_abs_diff": check.max_abs_diff, "tolerance": check.tolerance, "shapes": check.shapes}
    if check.greedy_equal is not None:
        record.update(greedy_equal=check.greedy_equal, greedy_tokens=check.greedy_tokens)
        if check.greedy_first_difference is not None:
            record["greedy_first_difference"] = check.greedy_first_difference
    if check.outputs:
        record["outputs"] = check.outputs
    return record


def verify_summary(record: dict) -> str:
    text = f"max |onnxruntime - PyTorch| {record['max_abs_diff']:.3g} (tolerance {record['tolerance']:.3g})"
    if "greedy_equal" in record:
        text += (f", greedy decode {'identical' if record['greedy_equal'] else 'differs'} "
                 f"({record['greedy_tokens']} tokens)")
        if "greedy_first_difference" in record:
            text += f" from token {record['greedy_first_difference']}"
    return text


class HfToOnnx:
    """Any model with a config (HF folder, weights + config, GGUF) to an ONNX folder: `--to onnx`."""
    name = "hf-to-onnx"

    def matches(self, source: ModelSource, request: Request) -> bool:
        return request.to == "onnx" or (request.to is None and request.dst.suffix.lower() == ".onnx")

    def run(self, source: ModelSource, request: Request) -> ConvertResult:
        if request.to is None:
            raise UnsupportedError("an ONNX export is a folder (model.onnx, its weights, tokenizer, config): give a "
                                   f"folder name and --to onnx, e.g. {request.dst.with_suffix('')}-onnx --to onnx",
                                   request.dst)
        if request.quant is not None or request.shard_size is not None or request.dtype not in (None, "f32", "float32"):
            raise UnsupportedError("ONNX export takes --quantize int8 (not --quant, --dtype or --shard-size)", request.dst)
        if request.quantize not in (None, *QUANTIZE_CHOICES):
            raise UnsupportedError(f"--quantize {request.quantize}: choose {', '.join(QUANTIZE_CHOICES)}", request.dst)
        with hf_folder(source, request) as folder, atomic_dir(request.dst, request.force) as out:
            manifest = export_folder(source, request, folder, out)
            with open_model(folder) as staged:
                copy_side_files(staged, out, None)
            write_chat_template(out)
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
            written = data_bytes(out, f"{MODEL_FILE}.data")     # the weights; the graph is beside them
        files = [str(request.dst / n) for n in names]
        details = {k: manifest[k] for k in ("kind", "opset", "model_bytes", "peak_rss_bytes", "verify", "int8")
                   if k in manifest}
        return ConvertResult(str(source.path), str(request.dst), "onnx", files, manifest["tensors"], written,
                             verified=bool(request.verify), details=details)
