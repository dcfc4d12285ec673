"""Header checks for the non-pickle formats: what would harm a reader, found with the core's readers.

Each check returns nothing and reports through `emit(severity, what, why, offset, member)`. The
strict readers in `modelport.formats` already reject lying lengths, out-of-range or overlapping
offsets, overflows and trailing bytes; here their `FormatError` becomes a finding. What the readers
do not judge (Keras configs naming code, TF graph ops, ONNX external paths) is checked here, always
as data: configs are JSON, graphs are protobuf fields, nothing goes through Keras or TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..core import protobuf as pb
from ..core.errors import ModelportError
from ..formats import gguf, hdf5
from ..formats import onnx as onnx_format
from ..formats import safetensors as st
from .findings import DANGEROUS, SUSPICIOUS

_HARM = "a reader that trusts this header would read or allocate out of bounds"


def check_safetensors(path: Path, emit, reader_checks: bool = True) -> None:
    if not reader_checks:  # every finding here is a malformed header, which the reader refuses itself
        return
    try:
        start, header = st.read_header(path)
        st.parse_entries(path, start, header)
    except ModelportError as exc:
        emit(SUSPICIOUS, "safetensors header", f"{exc.message}; {_HARM}.", None, None, malformed=True)


def check_gguf(path: Path, emit) -> None:
    try:
        header = gguf.read_header(path)
    except ModelportError as exc:
        emit(SUSPICIOUS, "GGUF header", f"{exc.message}; {_HARM}.", None, None, malformed=True)
        return
    if header.tensors:
        last = header.tensors[-1]
        end = last.offset + last.nbytes
        padded = -(-end // header.alignment) * header.alignment
        if header.size > padded:
            emit(SUSPICIOUS, "GGUF trailing bytes", f"{header.size - padded} bytes after the last tensor are "
                 "not described by the header (hidden data).", padded, None)


_BAD_TF_OPS = {
    "ReadFile": "reads a file", "WriteFile": "writes a file", "MatchingFiles": "lists files",
    "PyFunc": "calls Python", "EagerPyFunc": "calls Python", "PyFuncStateless": "calls Python",
    "ImmutableConst": "memory-maps a file", "ShardedFilename": "builds file names",
    "Save": "writes a file", "SaveV2": "writes a file", "SaveSlices": "writes a file",
    "RestoreV2": "reads files", "Restore": "reads files", "RestoreSlice": "reads files",
    "MergeV2Checkpoints": "writes files", "DeleteSessionTensor": "", "LoadAndRemapMatrix": "reads files",
    "DebugIdentityV2": "writes debug files", "DebugIdentity": "writes debug files",
    "PrintV2": "writes to files or streams", "Print": "writes to streams", "WriteScalarSummary": "writes files",
    "CreateSummaryFileWriter": "writes files", "CreateSummaryDbWriter": "writes files",
    "ExperimentalSnapshotDataset": "writes files", "SnapshotDataset": "writes files",
    "TFRecordDataset": "reads files", "FixedLengthRecordDataset": "reads files", "TextLineDataset": "reads files",
    "LMDBDataset": "reads files", "DatasetToTFRecord": "writes files", "SaveDataset": "writes files",
    "LoadDataset": "reads files", "DecodeProtoV2": "", "Fingerprint": "",
}
# Restoring variables is what every SavedModel does; these ops are normal there and not reported.
_SAVEDMODEL_NORMAL = {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin"}
_DANGER_TF = {"PyFunc", "EagerPyFunc", "PyFuncStateless", "WriteFile", "ReadFile", "ImmutableConst"}


def tf_graph_ops(buf, saved_model: bool, path=None, start: int = 0, end: int | None = None) -> dict[str, int]:
    """Every op (name -> first offset) of every graph and function in a SavedModel (SavedModel > MetaGraphDef
    > GraphDef) or a GraphDef (GraphDef > NodeDef.op, FunctionDefLibrary > FunctionDef > NodeDef.op), read
    with the core's bounds-checked protobuf walker. Raises ModelportError when the bytes are not that message."""
    seen: dict[str, int] = {}
    top = {(1, pb.VARINT), (2, pb.LEN)} if saved_model else {(1, pb.LEN), (2, pb.LEN), (3, pb.LEN), (4, pb.VARINT)}

    def sub(a, b, number):
        return [(x, y) for f, w, x, y in pb.fields(buf, a, b, path) if f == number and w == pb.LEN]

    def node_def(a, b):
        for x, y in sub(a, b, 2):   # NodeDef.op
            seen.setdefault(bytes(buf[x:y]).decode("utf-8", "replace"), x)

    def graph_def(a, b):
        for x, y in sub(a, b, 1):           # GraphDef.node
            node_def(x, y)
        for x, y in sub(a, b, 2):           # GraphDef.library
            for fx, fy in sub(x, y, 1):     # FunctionDefLibrary.function
                for nx, ny in sub(fx, fy, 3):   # FunctionDef.node_def
                    node_def(nx, ny)

    end = len(buf) if end is None else end
    for f, w, _a, _b in pb.fields(buf, start, end, path):
        if (f, w) not in top:
            raise ModelportError(f"top-level field {f} (wire type {w}) is not part of a "
                                 f"{'SavedModel' if saved_model else 'GraphDef'}", path)
    if saved_model:
        for a, b in sub(start, end, 2):         # SavedModel.meta_graphs
            for x, y in sub(a, b, 2):           # MetaGraphDef.graph_def
                graph_def(x, y)
    else:
        graph_def(start, end)
    return seen


def detect_tf_graph(buf, start: int = 0, end: int | None = None) -> str | None:
    """"tf-savedmodel" or "tf-graphdef" when the bytes parse as one whose ops are all plain names, whatever
    the file is called (TensorFlow parses fields in any order, so no first-bytes test is enough)."""
    for kind, saved in (("tf-savedmodel", True), ("tf-graphdef", False)):
        try:
            ops = tf_graph_ops(buf, saved, None, start, end)
        except (ModelportError, IndexError, ValueError):
            continue
        if ops and all(op.isidentifier() for op in ops):
            return kind
    return None


def check_tf_graph(path: Path, emit, saved_model: bool, buf=None, start: int = 0, end: int | None = None) -> None:
    """The ops a graph runs: file, Python and debug-output ops are findings. Both readings of the bytes
    (SavedModel and GraphDef) are tried; the ops of each that parses are judged."""
    buf = path.read_bytes() if buf is None else buf
    seen: dict[str, int] = {}
    parsed = False
    for saved in dict.fromkeys((saved_model, not saved_model)):
        try:
            seen.update(tf_graph_ops(buf, saved, path, start, end))
            parsed = True
        except (ModelportError, IndexError, ValueError) as exc:
            if saved == saved_model:
                error = getattr(exc, "message", str(exc))
    if not parsed:
        emit(SUSPICIOUS, "TF graph protobuf", f"the graph does not parse ({error}); a loader may read it "
             "differently.", None, None, malformed=True)
    for op, at in seen.items():
        if op in _BAD_TF_OPS and op not in _SAVEDMODEL_NORMAL:
            sev = DANGEROUS if op in _DANGER_TF else SUSPICIOUS
            emit(sev, f"TF op {op}", f"the graph contains {op}, which {_BAD_TF_OPS[op] or 'reaches outside the model'} "
                 "when the model runs.", at, None)


def check_keras_metadata(buf, emit, member: str | None) -> bool:
    """`keras_metadata.pb` of a Keras SavedModel (SavedMetadata > SavedObject.metadata, a JSON layer config per
    object): Keras rebuilds layers from it, Lambda bytecode included. False when the bytes are not one."""
    configs = []
    try:
        for f, w, a, b in pb.fields(buf, 0, len(buf)):
            if (f, w) != (1, pb.LEN):
                return False
            for g, v, x, y in pb.fields(buf, a, b):
                if (g, v) not in {(2, pb.VARINT), (3, pb.LEN), (4, pb.LEN), (5, pb.LEN), (6, pb.LEN)}:
                    return False
                if g == 5:
                    configs.append(json.loads(bytes(buf[x:y]).decode("utf-8")))
    except (ModelportError, ValueError, UnicodeDecodeError):
        return False
    if not configs:
        return False
    for config in configs:
        check_keras_config(config, emit, member)
    return True


def check_hf_config(config, emit, member: str | None) -> None:
    """A transformers config that names custom code: `auto_map` points at Python files that
    `trust_remote_code=True` imports and runs."""
    if not isinstance(config, dict):
        return
    auto_map = config.get("auto_map")
    if auto_map:
        first = next(iter(auto_map.values()), "") if isinstance(auto_map, dict) else auto_map
        emit(SUSPICIOUS, f"auto_map {str(first)[:80]!r}", "the config names custom Python code that transformers "
             "imports and runs when loaded with trust_remote_code=True (modelport never does).", None, member)
    template = config.get("chat_template")
    texts = [template] if isinstance(template, str) else \
        [t.get("template") for t in template if isinstance(t, dict)] if isinstance(template, list) else []
    for text in texts:
        hit = isinstance(text, str) and re.search(r"__\w+__|\|\s*attr\b|\bimport\b|\bos\.|popen|subprocess", text)
        if hit:
            emit(SUSPICIOUS, f"chat template reaches {hit.group(0)!r}", "a chat template has no reason to touch "
                 "Python internals; this is how Jinja sandbox escapes start (modelport renders it sandboxed).",
                 None, member)
            break
    if config.get("trust_remote_code") is True:
        emit(SUSPICIOUS, "trust_remote_code: true", "the config asks loaders to run the repository's own Python "
             "code (modelport never does).", None, member)


def check_keras_config(config, emit, member: str | None) -> None:
    """Lambda layers (marshalled bytecode) and entries naming code outside Keras, in a model config."""
    if not isinstance(config, dict):
        return
    for entry in hdf5.keras_summary(config)["flagged"]:
        if entry.startswith("Lambda"):
            emit(DANGEROUS, entry, "a Lambda layer stores Python bytecode that Keras runs when the model is "
                 "loaded or called.", None, member)
        else:
            emit(SUSPICIOUS, entry, "the config names a function or class outside Keras; Keras imports and "
                 "calls it when the model is loaded.", None, member)


def check_hdf5(path: Path, emit, reader_checks: bool = True) -> None:
    try:
        hdf5.preflight(path)        # HDF5 can loop forever on a damaged heap: a forked child reads it first
        h5py = hdf5.safe_h5py()
        with h5py.File(path, "r") as f:
            for key in ("model_config", "training_config"):
                raw = f.attrs.get(key)
                if raw is None:
                    continue
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                try:
                    config = json.loads(text)
                except ValueError:
                    emit(SUSPICIOUS, f"{key} attribute", "the Keras config is not valid JSON.", None, None)
                    continue
                check_keras_config(config, emit, key)
    except ModelportError as exc:
        emit(SUSPICIOUS, "HDF5", exc.message, None, None, malformed=True)
        return
    except Exception as exc:  # h5py raises OSError/ValueError/KeyError on corrupt files
        emit(SUSPICIOUS, "HDF5", f"h5py cannot read it ({type(exc).__name__}); a loader may read it differently.",
             None, None, malformed=True)
        return
    if not reader_checks:
        return
    try:
        hdf5.open_hdf5(path).close()
    except ModelportError as exc:
        emit(SUSPICIOUS, "HDF5 layout", f"{exc.message}; such layouts read other files or lie about sizes.", None, None,
             malformed=True)
    except Exception:
        pass


def check_onnx(path: Path, emit, reader_checks: bool = True) -> None:
    """External-data entries of an ONNX model: paths that leave the folder, symlinks, ranges past the file
    (graded here, from the core reader's own protobuf walk), then the core reader's checks."""
    found: list = []

    def report(*args, **kwargs):
        found.append(args)
        emit(*args, **kwargs)

    try:
        entries = onnx_format.external_entries(path)
    except ModelportError as exc:
        report(SUSPICIOUS, "ONNX protobuf", f"does not parse ({exc.message}).", None, None, malformed=True)
        return
    folder = path.parent.resolve()
    for name, info in entries:
        loc = info.get("location", "")
        what = f"external data of {name!r}: {loc!r}"
        if not loc or os.path.isabs(loc) or re.match(r"^[A-Za-z]:", loc) or loc.startswith(("\\", "/")):
            report(DANGEROUS, what, "an absolute location makes the loader read any file on the machine.", None, None)
            continue
        parts = re.split(r"[\\/]", loc)
        if ".." in parts:
            report(DANGEROUS, what, "'..' in the location reads a file outside the model folder.", None, None)
            continue
        target = folder / loc
        if target.is_symlink() or any(p.is_symlink() for p in target.parents if folder in p.parents):
            report(DANGEROUS, what, "the location is a symlink, so the loader reads whatever it points to.", None, None)
            continue
        if not target.is_file():
            report(SUSPICIOUS, what, "the external data file is missing.", None, None)
            continue
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            report(SUSPICIOUS, what, "offset or length is not a number.", None, None)
            continue
        size = target.stat().st_size
        if offset < 0 or (length is not None and length < 0) or offset + (length or 0) > size:
            report(SUSPICIOUS, what, f"the range [{offset}, {offset + (length or 0)}) runs past the end of the "
                 f"{size}-byte file.", None, None)
    if not found and reader_checks:
        try:
            onnx_format.open_onnx(path).close()
        except ModelportError as exc:
            report(SUSPICIOUS, "ONNX structure", f"{exc.message}; {_HARM}.", None, None, malformed=True)
