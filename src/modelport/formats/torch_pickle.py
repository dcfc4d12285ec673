"""A restricted unpickler for torch checkpoints: it builds tensor descriptions and plain data, nothing else.

Why our own: `pickle.load` runs whatever the file names, and `torch.load(weights_only=True)` needs torch.
Two passes over the in-memory pickle bytes:

1. `prescan` walks the opcodes with `pickletools.genops` (which executes nothing): it finds where the
   pickle ends, checks that every length-prefixed argument is really present (so the C unpickler never
   allocates for a `LONG4`/`BINBYTES8` length the bytes cannot back), caps memo indices, refuses opcodes
   a torch checkpoint never needs, and lists every global with its byte position.
2. `RestrictedUnpickler` (a `pickle.Unpickler` subclass) then builds the object. `find_class` answers
   only from an allowlist, with inert stand-ins: the rebuild functions record (storage, offset, size,
   stride, dtype) and never touch data; storage types and dtypes are name tokens. `persistent_load`
   accepts only `("storage", type, key, location, numel[, view])` tuples. Everything else is refused
   with an `UnsafeFileError` naming the global and where it is.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from dataclasses import dataclass, field

from ..core import dtypes
from ..core.errors import FormatError, UnsafeFileError, UnsupportedError

MAX_MEMO = 1 << 22          # memo slots; the C unpickler sizes its memo table by the largest index
MAX_KEY = 4096              # storage key / location string length

# Opcodes a checkpoint never needs: code-calling protocol-0/1 forms, extension registry, out-of-band buffers.
_REFUSED_OPS = {"INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER", "READONLY_BUFFER", "PERSID"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}

# Legacy typed storage class names -> torch dtype attribute name.
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
}
UNTYPED = "UntypedStorage"

# Allowed by torch's weights-only unpickler but describing tensors we cannot represent as plain arrays.
_UNSUPPORTED_REBUILDS = {
    "_rebuild_qtensor": "quantized tensors", "_rebuild_sparse_tensor": "sparse tensors",
    "_rebuild_sparse_csr": "sparse tensors", "_rebuild_nested_tensor": "nested tensors",
    "_rebuild_meta_tensor_no_storage": "meta tensors (no data)", "_rebuild_wrapper_subclass": "tensor subclasses",
    "_rebuild_device_tensor_from_numpy": "device tensors", "_rebuild_device_tensor_from_cpu_tensor": "device tensors",
    "_rebuild_xla_tensor": "XLA tensors", "_rebuild_mtia_tensor": "MTIA tensors",
}


# --- inert stand-ins ----------------------------------------------------------------------------

class _Frozen:
    """Base of every stand-in: the pickle's BUILD opcode cannot set attributes on it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise FormatError(f"pickle tries to set state on {self!r:.60}")


class _Call(_Frozen):
    """An allowed callable, wrapped so the pickle cannot change it (BUILD on a function sets attributes)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", "callable")


class StorageType(_Frozen):
    """`torch.FloatStorage` & co as a name token; `dtype` is None for `UntypedStorage` (bytes)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str | None):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class TorchDType(_Frozen):
    """A `torch.<dtype>` global as a name token."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"torch.{self.name}"


@dataclass(eq=False)
class Storage(_Frozen):
    """One persistent storage: record `key`, `numel` elements of `stype` (bytes if untyped).

    Legacy files may name a view of a root storage: then `root` is that storage and `elem_offset`
    is where this view starts in it, in elements."""

    key: str
    stype: StorageType
    numel: int
    location: str
    root: Storage | None = None
    elem_offset: int = 0


@dataclass(eq=False)
class PickledTensor(_Frozen):
    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str | None          # torch dtype name; None means "the storage's dtype" (v1/v2)
    parameter: bool = False


class _StateDict(dict):
    """`collections.OrderedDict` stand-in: a dict that ignores the `_metadata` state torch attaches."""

    def __setstate__(self, state):
        pass


class _Marker(_Frozen):
    """`torch.Tensor` / `torch.nn.parameter.Parameter` when named as a type, never instantiated."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_TENSOR_TYPES = {("torch", "Tensor"), ("torch.nn.parameter", "Parameter"), ("torch.nn.parameter", "Buffer")}


def _ints(value, what) -> tuple:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FormatError(f"tensor {what} is not a tuple of integers: {value!r:.80}")
    return tuple(value)


def _tensor(storage, offset, size, stride, dtype=None) -> PickledTensor:
    if not isinstance(storage, Storage):
        raise FormatError("a tensor's storage is not a persistent storage reference")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise FormatError(f"tensor storage offset is not an integer: {offset!r:.80}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise FormatError(f"tensor size {size} and stride {stride} differ in length")
    if dtype is not None and not isinstance(dtype, TorchDType):
        raise FormatError(f"tensor dtype is not a torch dtype: {dtype!r:.80}")
    return PickledTensor(storage, offset, size, stride, dtype.name if dtype is not None else None)


def _rebuild_v1(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, PickledTensor):
        raise FormatError("a Parameter wraps something that is not a tensor")
    data.parameter = True
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _Marker) or not isinstance(func, _Call) or not isinstance(args, tuple):
        raise FormatError("tensor subclass rebuild with unexpected arguments")
    return func(*args)


def _size(*args):
    return tuple(args[0]) if args else ()


def _device(*args):
    return ":".join(str(a) for a in args)


def _encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


_CALLABLES = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_v1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): _StateDict,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
}


def allowed(module: str, name: str):
    """The stand-in for an allowed global, or None; `UnsupportedError` for torch tensor kinds we cannot read."""
    if (module, name) in _CALLABLES:
        return _Call(_CALLABLES[(module, name)])
    if (module, name) in _TENSOR_TYPES:
        return _Marker(f"{module}.{name}")
    if module in ("torch", "torch.storage", "torch.cuda") and (name in STORAGE_DTYPES or name == UNTYPED):
        return StorageType(name, STORAGE_DTYPES.get(name))
    if module == "torch" and dtypes.by_code("torch", name) is not None:
        return TorchDType(name)
    if module in ("torch._utils", "torch._tensor") and name in _UNSUPPORTED_REBUILDS:
        raise UnsupportedError(f"the file holds {_UNSUPPORTED_REBUILDS[name]} ({module}.{name}); modelport reads plain tensors only")
    return None


# --- pass 1: opcode scan ------------------------------------------------------------------------

class _Window:
    """The part of a stream a pickle may still use, for genops: a string opcode's length comes from the pickle
    itself, and a buffered file's `read(n)` allocates n bytes first, so every read is clamped to what is left."""

    def __init__(self, stream, end: int):
        self.stream, self.end = stream, end

    def tell(self) -> int:
        return self.stream.tell()

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.end - self.stream.tell())
        return self.stream.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.stream.readline(max(0, self.end - self.stream.tell()))


@dataclass
class Scan:
    start: int                  # where the pickle starts in the stream given to `prescan`
    end: int                    # one past its STOP opcode
    protocol: int
    globals: list = field(default_factory=list)     # [(position, module, name)]; module None if not static


def prescan(stream, cap: int, base: int = 0) -> Scan:
    """Walk one pickle's opcodes from `stream`'s position without executing anything.

    `base` is added to reported positions so errors name the byte in the file. Raises `FormatError`
    for a truncated or malformed pickle, one longer than `cap`, or opcodes a checkpoint never uses."""
    start = stream.tell()
    stream.seek(0, io.SEEK_END)
    stream = _Window(stream, min(stream.tell(), start + cap + 1))
    stream.stream.seek(start)
    protocol = 0
    scan = Scan(start, start, 0)
    memo: dict[int, object] = {}
    prev = last = None          # the last two values pushed, where they are strings (for STACK_GLOBAL)
    memo_count = 0
    limit = start + cap
    try:
        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            if name in _STRING_OPS:
                prev, last = last, arg if isinstance(arg, str) else None
            elif name in _GET_OPS:
                if not isinstance(arg, int) or arg >= MAX_MEMO:
                    raise FormatError(f"pickle memo index {arg!r} at byte {base + pos - start} is out of range")
                prev, last = last, memo.get(arg)
            elif name in _PUT_OPS or name == "MEMOIZE":
                index = memo_count if name == "MEMOIZE" else arg
                if not isinstance(index, int) or index < 0 or index >= MAX_MEMO:
                    raise FormatError(f"pickle memo index {index!r} at byte {base + pos - start} is out of range")
                if isinstance(last, str):
                    memo[index] = last
                memo_count += 1
            elif name == "GLOBAL":
                module, _, gname = arg.partition(" ")
                scan.globals.append((base + pos - start, module, gname))
                prev = last = None
            elif name == "STACK_GLOBAL":
                scan.globals.append((base + pos - start, prev, last) if isinstance(prev, str) and isinstance(last, str)
                                    else (base + pos - start, None, None))
                prev = last = None
            elif name in _REFUSED_OPS:
                raise FormatError(f"pickle opcode {name} at byte {base + pos - start} is not used by torch checkpoints; refused")
            elif name == "PROTO":
                protocol = arg
            elif name != "FRAME":
                prev = last = None
            if pos > limit:
                raise FormatError(f"pickle longer than the {cap}-byte limit")
        end = stream.tell()
    except FormatError:
        raise
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError, pickle.PickleError) as exc:
        raise FormatError(f"pickle is malformed or truncated ({exc})") from None
    if end - start > cap:
        raise FormatError(f"pickle longer than the {cap}-byte limit")
    scan.end, scan.protocol = end, protocol
    return scan


# --- globals policy -------------------------------------------------------------------------------

_CODE_MODULES = ("os", "posix", "nt", "sys", "subprocess", "builtins", "__builtin__", "runpy", "importlib",
                 "pty", "shutil", "socket", "code", "codeop", "pickle", "_pickle", "marshal", "types",
                 "ctypes", "operator", "functools", "webbrowser", "asyncio", "multiprocessing", "eval", "exec")


def _looks_like_module_pickle(refused: list) -> str | None:
    """The class name if the refused globals are those of a pickled `nn.Module`, else None."""
    if any(m is None or m.split(".")[0] in _CODE_MODULES for _, m, _ in refused):
        return None
    for _, module, name in refused:
        if module == "__main__" or module.startswith("torch.nn.modules") or (
                name[:1].isupper() and not module.startswith(("numpy", "torch._"))):
            return f"{module}.{name}"
    return None


def check_globals(scan: Scan) -> None:
    """Refuse the file before unpickling if any statically named global is not allowed."""
    refused = []
    for pos, module, name in scan.globals:
        if module is None:
            continue
        if allowed(module, name) is None:
            refused.append((pos, module, name))
    if not refused:
        return
    code = [g for g in refused if g[1].split(".")[0] in _CODE_MODULES]
    cls = None if code else _looks_like_module_pickle(refused)
    if cls is not None:
        pos = next(p for p, m, n in refused if f"{m}.{n}" == cls)
        raise UnsafeFileError(
            f"this is a whole pickled model (class '{cls}' at byte {pos}), not a state_dict; loading it would run "
            f"its code. Save the weights instead: torch.save(model.state_dict(), path)")
    pos, module, name = (code or refused)[0]
    raise UnsafeFileError(f"refused global '{module}.{name}' at byte {pos} — the file would run code on load; "
                          f"see 'modelport scan'")


# --- pass 2: the restricted unpickler ---------------------------------------------------------------

class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, scan: Scan):
        super().__init__(io.BytesIO(data))
        self.scan = scan
        self.storages: dict[str, Storage] = {}

    def find_class(self, module, name):
        found = allowed(module, name)
        if found is None:
            pos = next((p for p, m, n in self.scan.globals if (m, n) == (module, name)), None)
            where = f" at byte {pos}" if pos is not None else ""
            raise UnsafeFileError(f"refused global '{module}.{name}'{where} — the file would run code on load; "
                                  f"see 'modelport scan'")
        return found

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise FormatError(f"persistent id {pid!r:.80} is not a torch storage reference")
        stype, key, location, numel = pid[1:5]
        if not isinstance(stype, StorageType):
            raise FormatError(f"storage type {stype!r:.80} is not a torch storage class")
        if not isinstance(key, str) or not isinstance(location, str) or len(key) > MAX_KEY or len(location) > MAX_KEY:
            raise FormatError("storage key or location is not a short string")
        if not isinstance(numel, int) or isinstance(numel, bool) or not 0 <= numel < 1 << 62:
            raise FormatError(f"storage {key!r}: element count {numel!r:.40} is invalid")
        storage = self._root(key, stype, numel, location)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        if (not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in view[1:])):
            raise FormatError(f"storage {key!r}: view description {view!r:.80} is invalid")
        view_key, offset, size = view
        if offset + size > numel:
            raise FormatError(f"storage view {view_key!r} [{offset}, {offset + size}) runs past its storage {key!r} ({numel} elements)")
        return Storage(view_key, stype, size, location, root=storage, elem_offset=offset)

    def _root(self, key, stype, numel, location) -> Storage:
        """One Storage per reference; references to one key must agree on its byte size (an fp8 tensor
        and its uint8 view share a record as `UntypedStorage` and `ByteStorage`)."""
        storage = Storage(key, stype, numel, location)
        known = self.storages.setdefault(key, storage)
        if known is not storage and storage_bytes(known) != storage_bytes(storage):
            raise FormatError(f"storage {key!r} is described twice with different sizes "
                              f"({known.stype.name}[{known.numel}] and {stype.name}[{numel}])")
        return storage


def storage_itemsize(stype: StorageType) -> int:
    if stype.dtype is None:
        return 1
    dtype = dtypes.by_code("torch", stype.dtype)
    return dtype.numpy.itemsize


def storage_bytes(storage: Storage) -> int:
    return storage.numel * storage_itemsize(storage.stype)


def unpickle(data: bytes, scan: Scan) -> tuple[object, dict[str, Storage]]:
    """Build the object of one prescanned pickle; returns (object, storages by key)."""
    check_globals(scan)
    unpickler = RestrictedUnpickler(data, scan)
    try:
        obj = unpickler.load()
    except (UnsafeFileError, UnsupportedError, FormatError):
        raise
    except RecursionError:
        raise FormatError("pickle nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any other failure of the data is a malformed file
        raise FormatError(f"pickle is malformed ({type(exc).__name__}: {str(exc)[:120]})") from None
    return obj, unpickler.storages
