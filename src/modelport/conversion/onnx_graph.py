"""A transformers model as an ONNX graph, and the proof that the graph computes what the model does.

The graph has the names optimum and onnxruntime-genai use, so other tools read our exports:

- causal LM: `input_ids`, `attention_mask` [batch, past_sequence + sequence], `position_ids`, and per layer
  `past_key_values.{i}.key/value` [batch, kv_heads, past_sequence, head_dim] → `logits`, `present.{i}.key/value`
  [batch, kv_heads, past_sequence + sequence, head_dim]. An empty past has past_sequence = 0.
- encoder: `input_ids`, `attention_mask`, (`token_type_ids`) → `last_hidden_state`, (`pooler_output`),
  (`sentence_embedding`: the pooling a sentence-transformers folder declares).

`torch.onnx.export(dynamo=True)` traces a wrapper module that takes the past as flat tensors and builds a
transformers `DynamicCache` from them. The cache is built without the config, so every layer keeps its whole
past (sliding-window layers included: the window is applied by the attention mask, which transformers builds
from the config), and `present` is always past + new tokens, as the contract says.

Verification runs onnxruntime against the same PyTorch model: logits on several batch sizes and lengths with
left padding, and a greedy decode through the KV cache against `generate()`, token for token.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UnsupportedError

#: The opset torch's dynamo exporter translates to natively (onnxscript's torchlib): no version converter runs,
#: and onnxruntime has run it since 1.14, so every current onnxruntime, onnxruntime-web and -genai loads it.
OPSET = 18
#: Max |ONNX - PyTorch| of float32 logits, plus this fraction of the largest |logit| (big real models).
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-5
#: (batch, sequence length) of the verify inputs; rows after the first are left-padded to shorter lengths.
VERIFY_SHAPES = ((1, 7), (3, 11))
GREEDY_TOKENS = 12
POOLING_MODES = ("mean", "cls", "max")


@dataclass
class Geometry:
    """What the engine needs to feed an exported causal LM without parsing the graph."""
    num_layers: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int


@dataclass
class Pooling:
    """A sentence-transformers folder's pooling (1_Pooling/config.json) and whether a Normalize module follows."""
    mode: str
    normalize: bool = False


@dataclass
class Verification:
    """onnxruntime against PyTorch on the verify inputs."""
    max_abs_diff: float = 0.0
    tolerance: float = 0.0
    shapes: list[list[int]] = field(default_factory=list)
    greedy_equal: bool | None = None
    greedy_tokens: int = 0
    greedy_first_difference: int | None = None
    outputs: dict[str, float] = field(default_factory=dict)     # encoder: max diff per output

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.greedy_equal is not False


def geometry(config) -> Geometry:
    """Layers, KV heads and head size of a transformers config (gpt2's n_layer/n_head included)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Geometry(layers, int(kv), int(head_dim), int(text.vocab_size))


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def _torch():
    import torch
    return torch


@contextlib.contextmanager
def quiet():
    """torch.onnx prints its steps and warnings on stdout/stderr; modelport shows its own progress instead."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def causal_wrapper(model):
    """The model as a module of flat tensors: (input_ids, attention_mask, position_ids, *past) → (logits, *present)."""
    torch = _torch()
    from transformers import DynamicCache

    class CausalLM(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return CausalLM(model).eval()


def encoder_wrapper(model, outputs: list[str], pooling: Pooling | None, token_types: bool):
    """The encoder as (input_ids, attention_mask[, token_type_ids]) → the named outputs, with the sentence
    embedding computed in the graph when a pooling is declared."""
    torch = _torch()

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"token_type_ids": token_type_ids} if token_types else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            result = [out.last_hidden_state]
            if "pooler_output" in outputs:
                result.append(out.pooler_output)
            if pooling is not None:
                result.append(pool(torch, out.last_hidden_state, attention_mask, pooling))
            return tuple(result)

    return Encoder(model).eval()


def pool(torch, hidden, mask, pooling: Pooling):
    """sentence-transformers' Pooling (mean over the real tokens, the first token, or the max over them), then
    its Normalize (L2, eps 1e-12 as torch.nn.functional.normalize)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling.mode == "mean":
        out = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling.mode == "cls":
        out = hidden[:, 0]
    else:
        out = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    if pooling.normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out


def _export(module, args: tuple, dst: Path, input_names, output_names, dynamic_shapes, what: str) -> None:
    """torch.onnx.export (dynamo), then onnxscript's optimizer with one change: a node that reads a weight is never
    constant-folded (folding a Transpose of a small weight would store a second copy of it, and a tied weight twice),
    so every weight keeps its parameter name and is stored once, in `dst`.data."""
    torch = _torch()
    import onnxscript.optimizer

    weights = {f"model.{name}" for name, _ in module.model.named_parameters(remove_duplicate=False)}   # tied: both names

    def should_fold(node):
        return False if any(v is not None and v.name in weights for v in node.inputs) else None

    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=False)
            onnxscript.optimizer.optimize_ir(program.model, should_fold=should_fold)
            program.save(str(dst), external_data=True)
    except Exception as exc:   # the exporter raises many kinds; the user gets one line naming the model kind
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UnsupportedError(f"torch.onnx.export cannot export this {what}: {first[:300]}") from None


def export_causal(model, dst: Path) -> Geometry:
    """Export a causal LM with KV cache and dynamic batch / sequence / past axes to `dst` (+ `dst`.data)."""
    torch = _torch()
    geo = geometry(model.config)
    batch, seq, past = 2, 3, 4    # sample sizes: none 0 or 1, which torch.export would specialize
    ids = torch.randint(0, geo.vocab_size, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    positions = torch.arange(past, past + seq).repeat(batch, 1)
    cache = tuple(torch.zeros(batch, geo.num_key_value_heads, past, geo.head_dim) for _ in range(2 * geo.num_layers))
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
    p = torch.export.Dim("past_sequence", min=0)
    shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: torch.export.Dim.AUTO},
              "position_ids": {0: b, 1: s}, "past": tuple({0: b, 2: p} for _ in cache)}   # *past: a tuple
    names = ["input_ids", "attention_mask", "position_ids", *past_names(geo.num_layers)]
    _export(causal_wrapper(model), (ids, mask, positions, *cache), dst, names,
            ["logits", *present_names(geo.num_layers)], shapes, f"{type(model).__name__} with a KV cache")
    name_axes(dst, {"attention_mask": {1: "past_sequence + sequence"}})
    return geo


def encoder_outputs(model, pooling: Pooling | None) -> list[str]:
    outputs = ["last_hidden_state"]
    if getattr(model, "pooler", None) is not None:
        outputs.append("pooler_output")
    if pooling is not None:
        outputs.append("sentence_embedding")
    return outputs


def uses_token_types(model) -> bool:
    import inspect
    return "token_type_ids" in inspect.signature(model.forward).parameters and getattr(
        model.config, "type_vocab_size", 0) > 0


def export_encoder(model, dst: Path, pooling: Pooling | None) -> list[str]:
    """Export a BERT-style encoder with dynamic batch and sequence axes; returns its input names."""
    torch = _torch()
    outputs = encoder_outputs(model, pooling)
    token_types = uses_token_types(model)
    batch, seq = 2, 5
    ids = torch.randint(0, int(model.config.vocab_size), (batch, seq))
    args = [ids, torch.ones(batch, seq, dtype=torch.long)]
    names = ["input_ids", "attention_mask"]
    if token_types:
        args.append(torch.zeros(batch, seq, dtype=torch.long))
        names.append("token_type_ids")
    b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: b, 1: s} for name in names}
    _export(encoder_wrapper(model, outputs, pooling, token_types), tuple(args), dst, names, outputs, shapes,
            type(model).__name__)
    return names


def name_axes(path: Path, axes: dict[str, dict[int, str]]) -> None:
    """Give graph inputs' dynamic axes readable names (the exporter names a derived axis like `s53`)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.input:
        for axis, name in axes.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.dim_param:
                dim.dim_param = name
    onnx.save(model, str(path))


# ------------------------------------------------------------------ onnxruntime side

def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def left_padded(rng: np.random.Generator, batch: int, length: int, vocab: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (batch × length) whose rows after the first are left-padded to shorter lengths, and their mask."""
    ids = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(1, batch):
        pad_len = (row * length) // (batch + 1)
        ids[row, :pad_len] = pad
        mask[row, :pad_len] = 0
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    """position ids as transformers' generate() makes them: count of real tokens so far, 1 on the padding."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


def empty_past(geo: Geometry, batch: int) -> dict[str, np.ndarray]:
    return {n: np.zeros((batch, geo.num_key_value_heads, 0, geo.head_dim), np.float32) for n in past_names(geo.num_layers)}


def run_causal(sess, geo: Geometry, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits of a whole (padded) batch from an empty past."""
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask), **empty_past(geo, len(ids))}
    return sess.run(["logits"], feeds)[0]


def greedy(sess, geo: Geometry, ids: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """`steps` greedy tokens per row, one at a time through the graph's KV cache."""
    names = present_names(geo.num_layers)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask), **empty_past(geo, len(ids))}
    out = []
    for _ in range(steps):
        logits, *present = sess.run(["logits", *names], feeds)
        token = logits[:, -1].argmax(-1).astype(np.int64)
        out.append(token)
        mask = np.concatenate([mask, np.ones((len(ids), 1), np.int64)], axis=1)
        feeds = {"input_ids": token[:, None], "attention_mask": mask,
                 "position_ids": (feeds["position_ids"][:, -1:] + 1).astype(np.int64),
                 **dict(zip(past_names(geo.num_layers), present))}
    return np.stack(out, axis=1)


def _until_eos(tokens, eos: set[int]) -> list[int]:
    out = []
    for t in tokens:
        out.append(int(t))
        if int(t) in eos:
            break
    return out


@dataclass
class Reference:
    """What PyTorch computed on the verify inputs, kept so that the model can be dropped before onnxruntime loads
    the graph."""
    batches: list[tuple[dict[str, np.ndarray], list[np.ndarray]]]   # (inputs, expected outputs) per shape
    prompt: tuple[np.ndarray, np.ndarray] | None = None             # greedy decode: ids, mask
    generated: np.ndarray | None = None                             # generate()'s new tokens


def causal_reference(model, geo: Geometry, pad: int, seed: int = 0) -> Reference:
    """transformers' logits on left-padded batches, and its greedy `generate()` from a left-padded prompt pair."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    batches = []
    for batch, length in VERIFY_SHAPES:
        ids, mask = left_padded(rng, batch, length, geo.vocab_size, pad)
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           position_ids=torch.from_numpy(positions(mask))).logits.float().numpy()
        batches.append(({"input_ids": ids, "attention_mask": mask}, [logits]))
    ids, mask = left_padded(rng, 2, 6, geo.vocab_size, pad)
    with torch.no_grad(), quiet():
        generated = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                   do_sample=False, max_new_tokens=GREEDY_TOKENS, pad_token_id=pad)
    return Reference(batches, (ids, mask), generated[:, ids.shape[1]:].numpy())


def check_causal(path: Path, geo: Geometry, ref: Reference, eos: set[int]) -> Verification:
    """onnxruntime against the reference: max logit difference on the real (unpadded) positions, and the greedy
    decode through the graph's KV cache token for token (each row up to its first end-of-sequence token)."""
    sess = session(path)
    result = Verification()
    worst_logit = 0.0
    for inputs, (want,) in ref.batches:
        got = run_causal(sess, geo, inputs["input_ids"], inputs["attention_mask"])
        real = inputs["attention_mask"].astype(bool)    # padded positions' logits mean nothing
        result.max_abs_diff = max(result.max_abs_diff, float(np.abs(got[real] - want[real]).max()))
        worst_logit = max(worst_logit, float(np.abs(want[real]).max()))
        result.shapes.append(list(inputs["input_ids"].shape))
    result.tolerance = LOGIT_ATOL + LOGIT_RTOL * worst_logit
    ids, mask = ref.prompt
    got_tokens = greedy(sess, geo, ids, mask, GREEDY_TOKENS)
    result.greedy_equal = True
    for row in range(len(ids)):
        want, got = _until_eos(ref.generated[row], eos), _until_eos(got_tokens[row], eos)
        result.greedy_tokens += len(want)
        if want != got:
            result.greedy_equal = False
            first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            result.greedy_first_difference = first if result.greedy_first_difference is None else min(
                first, result.greedy_first_difference)
    return result


def encoder_inputs(names: list[str], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def encoder_reference(wrapper, input_names: list[str], vocab: int, pad: int, seed: int = 0) -> Reference:
    """The PyTorch wrapper's outputs (the same pooling code the graph has) on right-padded batches."""
    torch = _torch()
    rng = np.random.default_rng(seed)
    batches = []
    for batch, length in VERIFY_SHAPES:
        ids, mask = left_padded(rng, batch, length, vocab, pad)
        feeds = encoder_inputs(input_names, ids[:, ::-1].copy(), mask[:, ::-1].copy())   # encoders pad on the right
        with torch.no_grad():
            out = wrapper(*(torch.from_numpy(feeds[n]) for n in input_names))
        batches.append((feeds, [o.numpy() for o in out]))
    return Reference(batches)


def check_encoder(path: Path, outputs: list[str], ref: Reference) -> Verification:
    """onnxruntime against the reference, every output (the hidden states of padding positions left out)."""
    sess = session(path)
    result = Verification()
    worst = 0.0
    for feeds, wanted in ref.batches:
        got = sess.run(outputs, feeds)
        real = feeds["attention_mask"].astype(bool)
        for name, g, w in zip(outputs, got, wanted):
            if name == "last_hidden_state":
                g, w = g[real], w[real]
            result.outputs[name] = max(result.outputs.get(name, 0.0), float(np.abs(g - w).max()))
            worst = max(worst, float(np.abs(w).max()))
        result.shapes.append(list(feeds["input_ids"].shape))
    result.max_abs_diff = max(result.outputs.values())
    result.tolerance = LOGIT_ATOL + LOGIT_RTOL * worst
    return result


# ------------------------------------------------------------------ int8

def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic int8 quantization: MatMul weights stored as int8 (per tensor), activations quantized
    at run time; weights in `dst`.data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)


def agreement_causal(float_path: Path, int8_path: Path, geo: Geometry, pad: int, seed: int = 0) -> dict[str, float]:
    """The int8 graph against the float one on the verify inputs: top-1 agreement and max logit difference."""
    a, b = session(float_path), session(int8_path)
    rng = np.random.default_rng(seed)
    same = total = 0
    diff = 0.0
    for batch, length in VERIFY_SHAPES:
        ids, mask = left_padded(rng, batch, length, geo.vocab_size, pad)
        x, y = run_causal(a, geo, ids, mask), run_causal(b, geo, ids, mask)
        real = mask.astype(bool)
        same += int((x[real].argmax(-1) == y[real].argmax(-1)).sum())
        total += int(real.sum())
        diff = max(diff, float(np.abs(x[real] - y[real]).max()))
    return {"top1_agreement": same / total, "max_abs_diff": diff}


def agreement_encoder(float_path: Path, int8_path: Path, input_names: list[str], output: str, vocab: int, pad: int,
                      seed: int = 0) -> dict[str, float]:
    """The int8 encoder against the float one: cosine similarity of `output` rows (min) and max difference."""
    a, b = session(float_path), session(int8_path)
    rng = np.random.default_rng(seed)
    cos, diff = 1.0, 0.0
    for batch, length in VERIFY_SHAPES:
        ids, mask = left_padded(rng, batch, length, vocab, pad)
        feeds = encoder_inputs(input_names, ids[:, ::-1].copy(), mask[:, ::-1].copy())
        x, y = a.run([output], feeds)[0], b.run([output], feeds)[0]
        x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
        c = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
        cos, diff = min(cos, float(c.min())), max(diff, float(np.abs(x - y).max()))
    return {"min_cosine": cos, "max_abs_diff": diff}
