"""HDF5 and Keras weights (`.h5`, `.hdf5`, Keras 3 `.keras`): h5py for parsing, our policy on top.

h5py does the HDF5 parsing (docs/formats.md §3); what it does not do is decide what is safe. This module
refuses external storage, external links and virtual datasets (they read other files), caps declared
sizes against stored sizes (shape bombs), disables filter-plugin loading, and memory-maps contiguous
unfiltered datasets straight from the file (also inside a stored `.keras` zip member). Keras configs
are summarised as JSON data and never given to Keras.

Names: Keras 2 weights come from the `layer_names`/`weight_names` attributes (split `name0`, `name1`…
attributes joined), `:0` dropped and `/` turned into `.`; everything else is the dataset's group path
with `/` turned into `.`. The writer puts one dataset per tensor at the root (creation order tracked),
keeps the exact name in a `modelport_name` attribute, and stores dtypes HDF5 lacks (bf16, fp8, int4…)
as raw unsigned integers with a `modelport_dtype` attribute that the reader honours.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import struct
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core import dtypes
from ..core.errors import FormatError, UnsafeFileError, UnsupportedError, require
from ..core.source import ModelSource, loads_json, tensor_list
from ..core.tensor import TensorRef
from ..core.zipmember import check_member
from .registry import ZIP_ERRORS, FormatSpec, zip_names

MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_DEPTH = 64
OPTIMIZER = "optimizer_weights"     # a Keras 2 full model's optimizer state: its group, and its tensors' name prefix
MAX_OBJECTS = 1_000_000
CONFIG_CAP = 16 * 1024 * 1024
BOMB_RATIO = 1000          # declared bytes may exceed stored bytes this much (compression, fill values)
BOMB_FLOOR = 64 * 1024 * 1024
_NATIVE = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64", "C64", "C128"}
_KNOWN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}     # gzip, shuffle, fletcher32, szip, nbit, scaleoffset, lzf
_KERAS_MODULES = re.compile(r"^(keras|tf_keras|tensorflow\.keras|keras_hub|keras_nlp|keras_cv|builtins)(\.|$)")


def safe_h5py():
    """h5py, with HDF5's plugin loading switched off; every h5py use (reader, writer, scanner) goes through it."""
    import h5py

    try:  # a file must not make HDF5 load shared libraries from HDF5_PLUGIN_PATH
        h5py.h5pl.set_loading_state(0)
    except Exception:  # pragma: no cover - very old HDF5
        pass
    return h5py


# --- a damaged file that HDF5 loops or crashes on -----------------------------------------------------

PREFLIGHT_SECONDS = 10.0    # walking links and reading attributes takes milliseconds on any real file
PREFLIGHT_MEMORY = 1024     # files whose verdict is kept: scan, open and inspect of one file fork only once
_preflight_seen: dict = {}  # file identity -> None (it passed) or the refusal's message


def _file_identity(path: Path, window: tuple[int, int] | None) -> tuple:
    """What tells one version of a file from another without reading it: a file rewritten in place gets a new
    ctime (and usually size and mtime), a replaced one a new inode."""
    import os

    stat = os.stat(path)
    return (os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, window)


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def preflight(path: Path, window: tuple[int, int] | None = None, timeout: float | None = None) -> None:
    """Refuse a file on which the HDF5 library loops forever or crashes, before this process reads it.

    A damaged global heap (where variable-length strings, hence every Keras attribute, live) can send HDF5's C
    code into an endless loop that no signal interrupts, or into a segmentation fault. A forked child walks every
    link and reads every attribute first; if it does not finish in `timeout` seconds it is killed and the file
    refused, and so is a file the child crashed on. The child's other failures (Python exceptions) are left to
    the reader, which turns them into its own errors. `window`: (start, size) of a stored zip member.
    The parent waits on a pipe that the child's exit closes (no polling), and the verdict on an unchanged file is
    remembered, so the scan and the reads that follow it cost one fork."""
    import ctypes
    import os
    import resource
    import select
    import signal
    import sys
    import time

    if not hasattr(os, "fork"):   # Windows: no child to sacrifice; the reader runs unguarded
        return
    key = _file_identity(path, window)
    if key in _preflight_seen:
        if _preflight_seen[key] is not None:
            raise FormatError(_preflight_seen[key], path)
        return
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # pragma: no cover - the child; its end of the pipe closes when it exits, however it ends
        code = 0
        try:
            os.close(read_end)
            if sys.platform == "linux":    # dies with this process, whatever ends it
                ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))    # PR_SET_PDEATHSIG
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))     # a crash here leaves no core file behind
            h5py = safe_h5py()
            with h5py.File(_RangeFile(path, *window) if window else path, "r") as f:
                def touch(_name, obj=None):
                    for key in (obj if obj is not None else f).attrs:
                        (obj if obj is not None else f).attrs.get(key)
                touch(None)
                f.visititems(touch)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    timeout = PREFLIGHT_SECONDS if timeout is None else timeout
    deadline = time.monotonic() + timeout
    waiting = select.poll()         # poll, not select: a process with many files open has descriptors past 1024
    waiting.register(read_end, select.POLLIN | select.POLLHUP)
    try:
        while True:
            if waiting.poll(max(0, math.ceil(1000 * (deadline - time.monotonic())))):
                # the child exited (its end closed): reap it
                _, status = os.waitpid(pid, 0)
                pid = 0
                verdict = None
                if os.WIFSIGNALED(status):     # a damaged heap can make HDF5 crash as well as loop
                    verdict = (f"HDF5 crashed reading the file's structure ({_signal_name(os.WTERMSIG(status))}); "
                               "refused")
                break
            if time.monotonic() >= deadline:
                verdict = (f"HDF5 did not finish reading the file's structure in {timeout:g} s "
                           "(a damaged heap or link loop); refused")
                break
    finally:     # refused, interrupted or timed out by a caller: the child never outlives the wait
        os.close(read_end)
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if len(_preflight_seen) >= PREFLIGHT_MEMORY:
        _preflight_seen.pop(next(iter(_preflight_seen)))
    _preflight_seen[key] = verdict
    if verdict is not None:
        raise FormatError(verdict, path)


# --- detection ----------------------------------------------------------------------------

def detect(path: Path, head: bytes) -> bool:
    if any(head[o:o + 8] == MAGIC for o in (0, 512, 1024, 2048)):
        return True
    if head[:4] == b"PK\x03\x04":
        names = zip_names(path) or []
        return "config.json" in names and "model.weights.h5" in names
    return False


# --- zip member access (Keras 3) ----------------------------------------------------------

class _RangeFile(io.RawIOBase):
    """A read-only, seekable window [start, start+size) of a file, for h5py's file-object driver."""

    def __init__(self, path: Path, start: int, size: int):
        self._f = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes start: local header + name + local extra (docs/formats.md §0.4)."""
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    require(len(local) == 30 and local[:4] == b"PK\x03\x04", f"zip member {info.filename!r}: bad local header", path)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    require(start + info.compress_size <= path.stat().st_size, f"zip member {info.filename!r} runs past the end of the file", path)
    return start


def _read_member_json(z: zipfile.ZipFile, name: str, path: Path):
    info = z.getinfo(name)
    require(info.file_size <= CONFIG_CAP, f"{name} is {info.file_size} bytes; too large for a config", path)
    check_member(info, path.stat().st_size, path)
    return loads_json(z.read(name).decode("utf-8"), path, name)


# --- Keras config as data -----------------------------------------------------------------

def keras_summary(config) -> dict:
    """Layer count, layer classes and risky entries (Lambda bytecode, foreign modules) of a model config."""
    classes: Counter = Counter()
    flagged: list[str] = []
    layers = 0

    def walk(node, depth=0, in_layers=False, in_lambda=False):
        nonlocal layers
        if depth > 200:
            return
        if isinstance(node, dict):
            cls = node.get("class_name")
            if in_layers and isinstance(cls, str):
                classes[cls] += 1
                layers += 1
            lam = cls in ("Lambda", "__lambda__") or "function_type" in node
            if lam and not in_lambda:    # once per layer: its function entry and module are the same finding
                cfg = node.get("config") if isinstance(node.get("config"), dict) else {}
                flagged.append(f"Lambda layer {cfg.get('name', node.get('name', '?'))} (Python bytecode)")
            module = node.get("module")
            if isinstance(module, str) and not _KERAS_MODULES.match(module) and not (lam or in_lambda):
                flagged.append(f"{module}.{cls or node.get('registered_name', '?')} (code outside Keras)")
            for key, value in node.items():
                walk(value, depth + 1, key == "layers" and isinstance(value, list), in_lambda or lam)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1, in_layers, in_lambda)

    walk(config)
    top = config.get("class_name") if isinstance(config, dict) else None
    return {"model_class": top, "layers": layers,
            "layer_classes": dict(classes.most_common()), "flagged": list(dict.fromkeys(flagged))}


def _parse_config_text(text, path: Path):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or len(text) > CONFIG_CAP:
        return None
    try:
        return loads_json(text, path, "the Keras config")
    except FormatError:   # a config is a description only: unreadable, it is left out
        return None


# --- walking the file ---------------------------------------------------------------------

def _small_attr(obj, key: str, cap: int | None = None):
    """An attribute's value, refusing (FormatError) one whose stored size is over `cap` before reading it."""
    import h5py

    cap = CONFIG_CAP if cap is None else cap
    aid = h5py.h5a.open(obj.id, key.encode())
    try:
        size = aid.get_storage_size()
    except RuntimeError:  # variable-length strings report 0; count their elements instead
        size = math.prod(aid.shape or ()) * aid.dtype.itemsize
    if size > cap:
        raise FormatError(f"attribute {key!r} of {obj.name!r} holds {size} bytes (cap {cap})", obj.file.filename)
    return obj.attrs[key]


def _attr_names(obj, key: str) -> list[str] | None:
    """A name-list attribute, joining Keras' split chunks `key0`, `key1`, … when the plain one is absent."""
    attrs = obj.attrs
    if key in attrs:
        values = [_small_attr(obj, key)]
    elif f"{key}0" in attrs:
        values, i = [], 0
        while f"{key}{i}" in attrs and i < 100_000:
            values.append(_small_attr(obj, f"{key}{i}"))
            i += 1
    else:
        return None
    out: list[str] = []
    for value in values:
        arr = np.atleast_1d(np.asarray(value))
        if arr.dtype.kind in "fiu" and arr.size == 0:
            continue  # layers without weights store an empty float64 array
        for item in arr.reshape(-1):
            out.append(item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item))
    return out


def _natural_key(path: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("/"))


def _require_hard(h5py, group, name: str, where: str, path: Path) -> None:
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise UnsafeFileError(f"{where!r} is an external link to {link.filename!r}:{link.path!r}; refused", path)
    require(isinstance(link, h5py.HardLink), f"{where!r} is a soft link; refused on a weight path", path)


def _scan(h5py, h5file, path: Path) -> tuple[list, dict, dict]:
    """One C-level pass over links and objects: ([(path, DatasetID)], hard aliases, soft links).

    The high-level API costs ~1 ms per object; this keeps `open` fast on files with thousands of
    datasets. External (and user-defined) links are refused; soft links become aliases."""
    fid = h5file.id
    tracked = bool(h5py.h5o.open(fid, b"/").get_create_plist().get_link_creation_order())
    index = h5py.h5.INDEX_CRT_ORDER if tracked else h5py.h5.INDEX_NAME
    links: list = []
    try:
        fid.links.visit(lambda name, info: links.append((name, info.type)) if len(links) <= MAX_OBJECTS else True,
                        idx_type=index, info=True)
    except (KeyError, ValueError):  # a subgroup without creation-order tracking
        links.clear()
        tracked = False
        fid.links.visit(lambda name, info: links.append((name, info.type)) if len(links) <= MAX_OBJECTS else True, info=True)
    require(len(links) <= MAX_OBJECTS, f"more than {MAX_OBJECTS} links", path)
    objects: dict = {}
    h5py.h5o.visit(fid, lambda name, info: objects.__setitem__(name, (info.type, info.addr)), info=True)
    seen: dict = {}
    datasets, hard_aliases, soft = [], {}, {}
    for raw, kind in links:
        where = raw.decode("utf-8", "replace")
        require(where.count("/") <= MAX_DEPTH, f"groups nested deeper than {MAX_DEPTH}", path)
        if kind == h5py.h5l.TYPE_EXTERNAL:
            target = fid.links.get_val(raw)
            raise UnsafeFileError(f"{where!r} is an external link to {target[0].decode(errors='replace')!r}; refused", path)
        if kind == h5py.h5l.TYPE_SOFT:
            soft[where] = fid.links.get_val(raw).decode("utf-8", "replace")
            continue
        if kind != h5py.h5l.TYPE_HARD:
            raise UnsafeFileError(f"{where!r} is a user-defined link (type {kind}); refused", path)
        if raw in objects:
            otype, addr = objects[raw]
        else:
            info = h5py.h5o.get_info(fid, raw)
            otype, addr = info.type, info.addr
        if addr in seen:
            if otype == h5py.h5o.TYPE_DATASET:
                hard_aliases[where] = seen[addr]
            continue
        seen[addr] = where
        if otype == h5py.h5o.TYPE_DATASET:
            datasets.append((where, h5py.h5d.open(fid, raw)))
    if not tracked:
        datasets.sort(key=lambda d: _natural_key(d[0]))
    return datasets, hard_aliases, soft


def _attr(h5py, dsid, key: str):
    if not h5py.h5a.get_num_attrs(dsid) or not h5py.h5a.exists(dsid, key.encode()):
        return None
    value = _small_attr(h5py.Dataset(dsid), key, 1 << 16)
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _dataset_dtype(h5py, dsid) -> tuple[dtypes.DType | None, np.dtype]:
    """(canonical dtype, stored numpy dtype); canonical None for datasets that hold no tensor."""
    stored = dsid.dtype
    for key in ("modelport_dtype", "dtype"):
        tag = _attr(h5py, dsid, key)
        if tag is not None:
            want = dtypes.DTYPES.get(tag) if key == "modelport_dtype" else _from_numpy_name(tag)
            if want is not None and want.numpy is not None and stored.itemsize == want.numpy.itemsize \
                    and stored.kind in "uiV" and not stored.names:
                return want, stored
    if stored.names or stored.kind in "OSUV" or stored.subdtype is not None:
        return None, stored
    return dtypes.from_numpy(stored), stored


def _from_numpy_name(name: str) -> dtypes.DType | None:
    import ml_dtypes

    try:
        dt = np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    except TypeError:
        return None
    return dtypes.from_numpy(dt)


def _check_dataset(h5py, dsid, name: str, nbytes: int, path: Path) -> int | None:
    """Policy checks; returns the data offset inside the HDF5 file when it can be memory-mapped."""
    plist = dsid.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise UnsafeFileError(f"dataset {name!r} is a virtual dataset (reads other files); refused", path)
    if plist.get_external_count():
        files = [plist.get_external(i)[0].decode(errors="replace") for i in range(min(plist.get_external_count(), 3))]
        raise UnsafeFileError(f"dataset {name!r} keeps its data in external file(s) {files}; refused", path)
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in _KNOWN_FILTERS]
    if unknown:
        raise UnsupportedError(f"dataset {name!r} uses HDF5 filter(s) {unknown}, which need plugins; refused", path)
    stored = dsid.get_storage_size() if nbytes > BOMB_FLOOR else nbytes
    if nbytes > BOMB_RATIO * max(stored, 1):
        raise FormatError(f"dataset {name!r} declares {nbytes} bytes but stores {stored}; refused (shape bomb)", path)
    if layout == h5py.h5d.CONTIGUOUS and not filters:
        return dsid.get_offset()
    return None


def _loader(state: dict, name: str, h5name: str, dtype: dtypes.DType, stored: np.dtype, shape, mmap_at):
    path = state["path"]

    def load() -> np.ndarray:
        if mmap_at is not None:
            if "map" not in state:
                state["map"] = np.memmap(path, dtype=np.uint8, mode="r")
            raw = state["map"][mmap_at:mmap_at + math.prod(shape) * stored.itemsize]
            arr = raw.view(stored).reshape(shape)
        else:
            try:
                arr = np.asarray(state["file"]()[h5name][()])
            except (OSError, ValueError, KeyError) as exc:
                raise FormatError(f"dataset {name!r}: HDF5 read failed ({exc})", path) from None
            arr = arr.reshape(shape)
        if stored.byteorder == ">":
            arr = arr.astype(stored.newbyteorder("="))
        if arr.dtype != dtype.numpy:
            same_bits = arr.dtype.itemsize == dtype.numpy.itemsize and arr.dtype.kind in "uiV"
            arr = arr.view(dtype.numpy) if same_bits else arr.astype(dtype.numpy)
        return arr
    return load


def _listed_weights(h5py, group, where: str, path: Path, prefix: str = "") -> list[tuple[str, str, object]]:
    """(tensor name, hdf5 path, DatasetID) of the datasets a Keras 2 group lists in its `weight_names`."""
    entries = []
    for wname in _attr_names(group, "weight_names") or []:
        at = f"{where}/{wname}"
        require(wname in group, f"weight {wname!r} of {where!r} is missing", path)
        node = group
        for part in wname.split("/"):  # every link on the way must be a plain hard link
            _require_hard(h5py, node, part, at, path)
            node = node[part]
        require(isinstance(node, h5py.Dataset), f"weight {at!r} is not a dataset", path)
        entries.append((prefix + re.sub(r":\d+$", "", wname).replace("/", "."), node.name, node.id))
    return entries


def _optimizer_weights(h5py, h5file, path: Path) -> list[tuple[str, str, object]]:
    """A Keras 2 full-model file's optimizer state (`optimizer_weights/`, listed in its `weight_names`): Adam's
    m and v, the iteration count, … named `optimizer_weights.<weight name>` as the other weights are."""
    if not isinstance(h5file.get(OPTIMIZER, getlink=True), h5py.HardLink) or not isinstance(h5file[OPTIMIZER], h5py.Group):
        return []
    return _listed_weights(h5py, h5file[OPTIMIZER], OPTIMIZER, path, prefix=OPTIMIZER + ".")


def _collect(h5file, path: Path, map_base: int | None, state: dict) -> tuple[dict, dict, dict]:
    """(tensors, aliases, details) of an open HDF5 file."""
    h5py = safe_h5py()
    details: dict = {}
    entries: list[tuple[str, str, object]] = []      # (tensor name, hdf5 path, DatasetID)
    hard_aliases: dict = {}
    soft: dict = {}
    root_w = None
    if isinstance(h5file.get("model_weights", getlink=True), h5py.HardLink) and "layer_names" in h5file["model_weights"].attrs:
        root_w = h5file["model_weights"]
        details["layout"] = "keras2 model"
    elif _attr_names(h5file, "layer_names") is not None:
        root_w = h5file
        details["layout"] = "keras2 weights"
    if root_w is not None:
        layers = _attr_names(root_w, "layer_names") or []
        details["keras_layers"] = len(layers)
        for layer in layers:
            require(layer in root_w, f"layer {layer!r} listed in layer_names is missing", path)
            _require_hard(h5py, root_w, layer, layer, path)
            entries.extend(_listed_weights(h5py, root_w[layer], layer, path))
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):  # weight names only unique per layer: use the full path
            base = root_w.name.rstrip("/") + "/"
            entries = [(re.sub(r":\d+$", "", h5[len(base):] if h5.startswith(base) else h5.lstrip("/")).replace("/", "."), h5, d)
                       for _, h5, d in entries]
        optimizer = _optimizer_weights(h5py, h5file, path)
        if optimizer:
            details["optimizer_weights"] = len(optimizer)
            entries.extend(optimizer)
    else:
        datasets, hard_aliases, soft = _scan(h5py, h5file, path)
        for where, dsid in datasets:
            name = _attr(h5py, dsid, "modelport_name") or where.replace("/", ".")
            entries.append((name, "/" + where, dsid))
        details["layout"] = "keras3 weights" if any("/vars/" in "/" + w for w, _ in datasets) else "datasets"
        if soft:
            details["soft_links"] = len(soft)

    tensors: dict[str, TensorRef] = {}
    skipped = []
    by_h5: dict[str, str] = {}
    for name, h5name, dsid in entries:
        dtype, stored = _dataset_dtype(h5py, dsid)
        if dtype is None or dtype.numpy is None:
            skipped.append(name)
            continue
        require(name not in tensors, f"two datasets map to the tensor name {name!r}", path)
        shape = tuple(dsid.shape) if dsid.shape is not None else ()
        nbytes = math.prod(shape) * stored.itemsize
        offset = _check_dataset(h5py, dsid, name, nbytes, path)
        mmap_at = None
        if offset is not None:
            mmap_at = offset + (map_base or 0)
            require(mmap_at + nbytes <= state["size"],
                    f"dataset {name!r}: data at {mmap_at}+{nbytes} runs past the end of the file ({state['size']} bytes)", path)
        tensors[name] = TensorRef(name, dtype, shape, _loader(state, name, h5name, dtype, stored, shape, mmap_at),
                                  nbytes=nbytes, file=str(state["path"]), offset=mmap_at,
                                  extra={"hdf5_path": h5name})
        by_h5[h5name] = name
    aliases = {}
    for where, target in hard_aliases.items():
        if "/" + target in by_h5:
            aliases[where.replace("/", ".")] = by_h5["/" + target]
    for where, target in soft.items():
        if target in by_h5:
            aliases[where.replace("/", ".")] = by_h5[target]
    if skipped:
        details["skipped_non_numeric"] = skipped[:20]
    return tensors, aliases, details


def _root_info(h5file) -> tuple[dict, dict | None]:
    meta = {}
    for key in ("keras_version", "backend"):
        if key in h5file.attrs:
            v = _small_attr(h5file, key, 1 << 16)
            meta[key] = v.decode() if isinstance(v, bytes) else str(v)
    if "modelport_metadata" in h5file.attrs:
        parsed = _parse_config_text(_small_attr(h5file, "modelport_metadata"), Path("."))
        if isinstance(parsed, dict):
            meta.update({str(k): str(v) for k, v in parsed.items()})
    config = _parse_config_text(_small_attr(h5file, "model_config"), Path(".")) if "model_config" in h5file.attrs else None
    return meta, config


def open_hdf5(path: Path) -> ModelSource:
    h5py = safe_h5py()
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(4)
    keras_zip = head == b"PK\x03\x04"
    state: dict = {"path": path, "size": size}
    details: dict = {}
    keras_config = None
    metadata: dict = {}
    closers = []
    try:
        if keras_zip:
            try:
                z = zipfile.ZipFile(path)
            except ZIP_ERRORS as exc:
                raise FormatError(f"not a valid .keras zip ({exc})", path) from None
            with z:
                names = z.namelist()
                require(len(names) == len(set(names)), "the .keras zip has duplicate member names", path)
                require("model.weights.h5" in names, "the .keras zip has no model.weights.h5", path)
                keras_config = _read_member_json(z, "config.json", path)
                if "metadata.json" in names:
                    meta_json = _read_member_json(z, "metadata.json", path)
                    if isinstance(meta_json, dict):
                        metadata.update({k: str(v) for k, v in meta_json.items() if isinstance(v, (str, int, float))})
                info = z.getinfo("model.weights.h5")
                check_member(info, size, path)
                if info.compress_type == zipfile.ZIP_STORED:
                    start = _member_data_offset(path, info)
                    require(info.file_size == info.compress_size, "stored member sizes disagree", path)
                    fileobj = _RangeFile(path, start, info.file_size)
                    map_base = start
                else:  # deflated: HDF5 needs random access, so stream it out to a private temp file
                    tmp = tempfile.NamedTemporaryFile(prefix="modelport-", suffix=".h5", delete=False)
                    with tmp, z.open(info) as src:
                        shutil.copyfileobj(src, tmp, 1 << 20)
                    tmp_path = Path(tmp.name)
                    closers.append(lambda: tmp_path.unlink(missing_ok=True))
                    fileobj, map_base = None, 0
                    state.update(path=tmp_path, size=tmp_path.stat().st_size)
                    details["weights_member"] = "deflated (extracted to a temporary file)"
            preflight(state["path"], None if fileobj is None else (map_base, info.file_size))
            try:
                h5file = h5py.File(fileobj, "r") if fileobj is not None else h5py.File(state["path"], "r")
            except OSError as exc:
                raise FormatError(f"model.weights.h5 is not a readable HDF5 file ({exc})", path) from None
            if fileobj is not None:
                closers.append(fileobj.close)
        else:
            preflight(path)
            try:
                h5file = h5py.File(path, "r")
            except OSError as exc:
                raise FormatError(f"not a readable HDF5 file ({exc})", path) from None
            map_base = 0
        closers.insert(0, h5file.close)
        state["file"] = lambda: h5file
        meta, config = _root_info(h5file)
        metadata.update(meta)
        keras_config = keras_config if keras_config is not None else config
        try:
            tensors, aliases, more = _collect(h5file, path, map_base, state)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"unreadable HDF5 structure ({exc})", path) from None
        details.update(more)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    if keras_zip:
        details["container"] = "keras3 zip"
    if isinstance(keras_config, dict):
        details["keras_model"] = keras_summary(keras_config)
    source = ModelSource(path=path, format="hdf5", tensors=tensors, files=[path], metadata=metadata,
                         aliases=aliases, details=details)
    source.closers = [*closers, lambda: state.pop("map", None)]
    return source


# --- writer -------------------------------------------------------------------------------

def _h5_name(name: str) -> str:
    safe = name.replace("/", "\u2215")   # division slash: a flat name, never a group path
    return "_" if safe in (".", "") else safe


def write_hdf5(tensors: Iterable[TensorRef], dst: Path, metadata: dict | None = None,
               aliases: dict | None = None, progress=None) -> None:
    h5py = safe_h5py()
    refs = tensor_list(tensors)
    for ref in refs:
        if ref.dtype.is_quantized:
            raise UnsupportedError(f"tensor {ref.name!r}: HDF5 has no {ref.dtype.name}; use --dequantize", dst)
    used: set[str] = set()
    with h5py.File(dst, "w", track_order=True) as f:
        if metadata:
            f.attrs["modelport_metadata"] = json.dumps({str(k): str(v) for k, v in metadata.items()})
        for ref in refs:
            h5 = _h5_name(ref.name)
            require(h5 not in used, f"two tensors map to the HDF5 name {h5!r}", dst, UnsupportedError)
            used.add(h5)
            arr = np.asarray(ref.read())
            if tuple(arr.shape) != ref.shape:
                raise FormatError(f"tensor {ref.name!r}: reader gave shape {arr.shape}, expected {ref.shape}", dst)
            arr = arr.astype(ref.dtype.numpy, order="C", copy=False)
            if ref.dtype.name not in _NATIVE:
                arr = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
            dset = f.create_dataset(h5, data=arr)
            if ref.dtype.name not in _NATIVE:
                dset.attrs["modelport_dtype"] = ref.dtype.name
            if h5 != ref.name:
                dset.attrs["modelport_name"] = ref.name
            del arr
            if progress:
                progress(ref)
        for alias, target in (aliases or {}).items():
            h5 = _h5_name(alias)
            if _h5_name(target) in f and h5 not in f:
                f[h5] = f[_h5_name(target)]  # a hard link: same data, read back as an alias


FORMAT = FormatSpec(
    name="hdf5",
    extensions=(".h5", ".hdf5"),
    detect=detect,
    open=open_hdf5,
    write=write_hdf5,
    description="HDF5 / Keras (.h5, .keras)",
    options={"aliases": ("h5", "keras")},
    # h5py turns HDF5's error stack into these (a damaged heap, link or B-tree: RuntimeError; a missing object: KeyError)
    errors=(RuntimeError, KeyError, TypeError),
)
