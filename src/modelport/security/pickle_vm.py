"""A symbolic pickle machine: every import and call a loader would make, found without running one.

Why our own machine: `pickle.Unpickler` executes as it goes, and the scanners that only list GLOBAL
opcodes miss names built on the stack (STACK_GLOBAL from memoized strings), calls on objects made
while loading, attribute mutation through BUILD, extension codes and pickles nested inside pickles.
`pickletools.genops` decodes the opcodes; this module tracks the stack, the mark stack and the memo
with symbolic values, so each import is resolved however it was built. Nothing is ever imported,
called or unpickled; a truncated or corrupt stream becomes a finding at the offset where it broke.
"""

from __future__ import annotations

import io
import math
import pickletools
import re
from dataclasses import dataclass, field
from typing import Callable

from . import rules
from .findings import DANGEROUS, SAFE, SUSPICIOUS

BIG = 64 << 20            # bytes arguments larger than this stay in the buffer, never copied
MAX_OPS = 1_000_000       # real checkpoints need thousands; past this the pickle is reported, not walked on
MAX_NESTING = 4           # pickles inside pickles inside ...
MAX_LINE = 1 << 20        # protocol-0 text arguments longer than this are corrupt

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C

Emit = Callable[..., None]   # (severity, what, why, offset, location suffix, malformed=False)


class _Stream:
    """A read-only file-like view of buf[start:end] for genops: bounded reads, bounded lines, no big copies."""

    def __init__(self, buf, start: int, end: int):
        self.buf, self.pos, self.end = buf, start, end

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int = -1):
        if n < 0:
            n = self.end - self.pos
        n = min(n, self.end - self.pos)
        start, self.pos = self.pos, self.pos + n
        if n > BIG:
            return _Big(self.buf, start, n)
        return bytes(self.buf[start:start + n])

    def readline(self) -> bytes:
        stop = min(self.end, self.pos + MAX_LINE)
        i = self.buf.find(b"\n", self.pos, stop)
        stop = stop if i < 0 else i + 1
        data, self.pos = bytes(self.buf[self.pos:stop]), stop
        return data


def _open(buf, start: int, end: int):
    """(stream, base offset): an in-memory copy for pickle-sized regions (C-speed reads), else a bounded view."""
    if end - start <= BIG:
        return io.BytesIO(bytes(buf[start:end])), start
    return _Stream(buf, start, end), 0


@dataclass
class _Big:
    """A bytes argument too large to copy: its place in the buffer."""
    buf: object
    start: int
    n: int

    def __len__(self) -> int:
        return self.n


# Symbolic values ---------------------------------------------------------------------------------

@dataclass(eq=False)
class Const:
    value: object


@dataclass(eq=False)
class Glob:
    name: str
    severity: str
    offset: int


@dataclass(eq=False)
class Obj:
    callee: object
    args: object
    offset: int


@dataclass(eq=False)
class Seq:
    kind: str
    items: list = field(default_factory=list)


class _Unknown:
    pass


UNKNOWN = _Unknown()

_CONST_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
              "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
              "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT"}
_SEQ_OPS = {"LIST": "list", "TUPLE": "tuple", "DICT": "dict", "FROZENSET": "set"}
_EMPTY_OPS = {"EMPTY_LIST": "list", "EMPTY_TUPLE": "tuple", "EMPTY_DICT": "dict", "EMPTY_SET": "set"}


class _Malformed(Exception):
    pass


@dataclass
class PickleResult:
    end: int                  # offset just past STOP (or where the walk stopped)
    complete: bool            # reached STOP
    value: object = None      # the symbolic result (for the legacy torch magic number)
    ops: int = 0
    imports: int = 0          # imports made before the walk ended (a loader makes them too, even if it then fails)


class Machine:
    """Walks one pickle from `start` and reports through `emit`."""

    def __init__(self, emit: Emit, depth: int = 0, where: str = ""):
        self.emit, self.depth, self.where = emit, depth, where
        self.imports = 0

    # stack helpers
    def _pop(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Malformed("stack underflow")
        return self.stack.pop()

    def _pop_mark(self) -> list:
        if not self.marks:
            raise _Malformed("no MARK to pop to")
        base = self.marks.pop()
        items = self.stack[base:]
        del self.stack[base:]
        return items

    def _top(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Malformed("stack underflow")
        return self.stack[-1]

    def _import(self, module: str, name: str, pos: int, how: str) -> Glob:
        if all(p.isidentifier() for p in f"{module}.{name}".split(".")):
            self.imports += 1      # a name no import can resolve ("cmake_minimum_required(...") imports nothing
        full = rules.normalize(module, name)
        severity, why = rules.classify(module, name)
        if severity != SAFE:
            self.emit(severity, full, f"{how} imports '{full}': {why}.", pos, self.where)
        return Glob(full, severity, pos)

    def _mutates(self, target, what: str, pos: int) -> None:
        if isinstance(target, Glob):
            self.emit(DANGEROUS, f"{what} on {target.name}",
                      f"{what} changes the imported object '{target.name}' itself (module or class state), "
                      "a known way to redirect later imports.", pos, self.where)

    def _call(self, func, args, pos: int, how: str):
        if isinstance(func, Glob):
            if func.name in rules.PICKLE_LOADERS:
                self._nested(args, pos, func.name)
            if func.name == "_codecs.encode" and isinstance(args, Seq) and args.items \
                    and isinstance(args.items[0], Const) and isinstance(args.items[0].value, str):
                try:
                    return Const(args.items[0].value.encode("latin-1"))
                except UnicodeEncodeError:
                    pass
        elif isinstance(func, Obj):
            name = func.callee.name if isinstance(func.callee, Glob) else "an object"
            self.emit(DANGEROUS, f"{how} on the result of {name}",
                      f"{how} calls an object that was itself produced while loading (a function fetched "
                      "at load time), which is how import indirections reach blocked callables.", pos, self.where)
        else:
            self.emit(SUSPICIOUS, f"{how} on a non-callable",
                      f"{how} calls something that is not an import; a loader would fail or do something odd.",
                      pos, self.where)
        return Obj(func, args, pos)

    def _nested(self, args, pos: int, loader: str) -> None:
        first = args.items[0] if isinstance(args, Seq) and args.items else None
        data = first.value if isinstance(first, Const) else None
        if isinstance(data, str):
            data = data.encode("latin-1", "replace")
        if not isinstance(data, (bytes, bytearray, _Big)):
            return
        where = f"{self.where}>nested pickle @{pos}" if self.where else f"nested pickle @{pos}"
        if self.depth >= MAX_NESTING:
            self.emit(SUSPICIOUS, "deeply nested pickle", "pickles nested this deep are not analysed further.",
                      pos, self.where)
            return
        buf, start, n = (data.buf, data.start, data.n) if isinstance(data, _Big) else (data, 0, len(data))
        scan_stream(buf, start, start + n, self.emit, depth=self.depth + 1, where=where)

    def run(self, buf, start: int, end: int, opened=None) -> PickleResult:
        """Walk the pickle at `start`; `opened` is a (stream, base) from `_open` shared by consecutive pickles."""
        self.stack, self.marks, self.memo = [], [], {}
        stream, base = opened or _open(buf, start, end)
        self._buf, self._stream, self._base, self._end = buf, stream, base, end
        stream.seek(start - base)
        ops, pos, value = 0, start, None
        try:
            for op, arg, pos in pickletools.genops(stream):
                pos += base
                ops += 1
                if ops > MAX_OPS:
                    self.emit(SUSPICIOUS, "oversized pickle", f"more than {MAX_OPS} opcodes; the rest was not analysed.",
                              pos, self.where)
                    return PickleResult(stream.tell() + base, False, None, ops, self.imports)
                if op.name == "STOP":
                    value = self._pop() if self.stack else None
                    return PickleResult(stream.tell() + base, True, value, ops, self.imports)
                self._step(op.name, arg, pos)
        except _Malformed as exc:
            self.emit(SUSPICIOUS, "malformed pickle", f"the opcode stream is inconsistent ({exc}); loaders "
                      "disagree on such input, a known way to hide payloads from scanners.", pos, self.where)
        except Exception as exc:  # genops raises ValueError, struct.error, UnicodeDecodeError, ...
            at = max(stream.tell() + base, pos)
            self.emit(SUSPICIOUS, "truncated or corrupt pickle",
                      f"decoding stopped at byte {at} ({type(exc).__name__}: {str(exc)[:120]}); a loader still "
                      "runs every opcode before that point.", at, self.where, malformed=True)
        return PickleResult(stream.tell() + base, False, None, ops, self.imports)

    def _step(self, name: str, arg, pos: int) -> None:
        push = self.stack.append
        if name in _CONST_OPS:
            push(Const(arg))
        elif name == "NONE":
            push(Const(None))
        elif name in ("NEWTRUE", "NEWFALSE"):
            push(Const(name == "NEWTRUE"))
        elif name in _EMPTY_OPS:
            push(Seq(_EMPTY_OPS[name]))
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in _SEQ_OPS:
            push(Seq(_SEQ_OPS[name], self._pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self._pop() for _ in range(n)][::-1]
            push(Seq("tuple", items))
        elif name in ("APPEND", "SETITEM"):
            values = [self._pop() for _ in range(1 if name == "APPEND" else 2)][::-1]
            target = self._top()
            self._mutates(target, name, pos)
            if isinstance(target, Seq):
                target.items.extend(values)
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            values = self._pop_mark()
            target = self._top()
            self._mutates(target, name, pos)
            if isinstance(target, Seq):
                target.items.extend(values)
        elif name == "POP":
            if len(self.stack) > (self.marks[-1] if self.marks else 0):
                self.stack.pop()
            else:
                self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            push(self._top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[arg] = self._top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self._top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise _Malformed(f"memo key {arg} read before it was written")
            push(self.memo[arg])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            push(self._import(module, attr, pos, "GLOBAL"))
        elif name == "STACK_GLOBAL":
            attr, module = self._pop(), self._pop()
            if isinstance(module, Const) and isinstance(attr, Const) and \
                    isinstance(module.value, str) and isinstance(attr.value, str):
                push(self._import(module.value, attr.value, pos, "STACK_GLOBAL"))
            else:
                self.emit(DANGEROUS, "STACK_GLOBAL with a computed name",
                          "the module or attribute name is produced while loading, so no static list can "
                          "say what gets imported.", pos, self.where)
                push(Glob("<computed>", DANGEROUS, pos))
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            args = self._pop_mark()
            push(self._call(self._import(module, attr, pos, "INST"), Seq("tuple", args), pos, "INST"))
        elif name == "OBJ":
            items = self._pop_mark()
            if not items:
                raise _Malformed("OBJ without a class")
            push(self._call(items[0], Seq("tuple", items[1:]), pos, "OBJ"))
        elif name == "REDUCE":
            args, func = self._pop(), self._pop()
            push(self._call(func, args, pos, "REDUCE"))
        elif name == "NEWOBJ":
            args, cls = self._pop(), self._pop()
            push(self._call(cls, args, pos, "NEWOBJ"))
        elif name == "NEWOBJ_EX":
            _kwargs, args, cls = self._pop(), self._pop(), self._pop()
            push(self._call(cls, args, pos, "NEWOBJ_EX"))
        elif name == "BUILD":
            state = self._pop()
            target = self._top()
            self._mutates(target, "BUILD", pos)
            wrapper = _class_name(target)
            if wrapper in rules.INLINE_ARRAY_WRAPPERS:
                self._skip_joblib_array(state, pos)
            elif wrapper in rules.FILE_ARRAY_WRAPPERS:
                self._check_array_file(state, pos)
            if isinstance(state, Seq) and state.kind == "dict":
                keys = [k.value for k in state.items[0::2] if isinstance(k, Const) and isinstance(k.value, str)]
                special = [k for k in keys if k.startswith("__")]
                if special:
                    self.emit(SUSPICIOUS, f"BUILD sets {special[0]}", "object state that sets special "
                              "attributes can swap an object's class or behaviour while loading.", pos, self.where)
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.emit(SUSPICIOUS, f"{name} extension code {arg}",
                      "extension codes import whatever the loading process registered in copyreg's extension "
                      "registry (empty by default); the import cannot be checked from the file.", pos, self.where)
            push(Glob(f"<extension {arg}>", SUSPICIOUS, pos))
        elif name == "PERSID":
            push(UNKNOWN)
        elif name == "BINPERSID":
            self._pop()
            push(UNKNOWN)
        elif name == "NEXT_BUFFER":
            push(UNKNOWN)
        elif name == "PROTO":
            if not 0 <= arg <= 5:
                self.emit(SUSPICIOUS, f"protocol {arg}", "an unknown pickle protocol.", pos, self.where)
        elif name in ("FRAME", "READONLY_BUFFER"):
            pass
        else:  # pragma: no cover - genops knows no other opcodes
            raise _Malformed(f"unhandled opcode {name}")


    def _skip_joblib_array(self, state, pos: int) -> None:
        """joblib writes an array's bytes (or, for object arrays, a whole pickle) right after the wrapper's
        BUILD, inside the pickle stream: skip the bytes, analyse the pickle, then walk on."""
        fields = _dict_of(state)
        shape, dtype = fields.get("shape"), _dtype_descr(fields.get("dtype"))
        dims = [d.value for d in shape.items] if isinstance(shape, Seq) else None
        if dims is None or not all(isinstance(d, Const) for d in shape.items) or dtype is None \
                or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise _Malformed("a joblib array wrapper whose shape or dtype cannot be read, so the array bytes "
                             "that follow cannot be skipped")
        at = self._stream.tell() + self._base
        if dtype == "object":
            where = f"{self.where}>joblib object array @{pos}" if self.where else f"joblib object array @{pos}"
            inner = Machine(self.emit, self.depth + 1, where).run(self._buf, at, self._end, (self._stream, self._base))
            if not inner.complete:
                raise _Malformed("the pickled object array inside the joblib stream does not end")
            at = inner.end
        else:
            align = fields.get("numpy_array_alignment_bytes")
            if isinstance(align, Const) and align.value is not None:
                if at >= self._end:
                    raise _Malformed("the joblib array padding runs past the end")
                at += 1 + self._buf[at]
            at += math.prod(dims) * dtype
        if at > self._end:
            raise _Malformed(f"the joblib array bytes run past the end of the stream (to byte {at})")
        self._stream.seek(at - self._base)

    def _check_array_file(self, state, pos: int) -> None:
        """joblib < 0.10 names a sibling .npy file that the loader opens: it must stay in the folder."""
        name = _dict_of(state).get("filename")
        name = name.value if isinstance(name, Const) else None
        if not isinstance(name, str) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) \
                or ".." in re.split(r"[\\/]", name):
            self.emit(DANGEROUS, f"joblib array file {name!r}", "an array wrapper names a file outside the "
                      "pickle's folder (or no plain name), which the loader opens.", pos, self.where)


def _class_name(obj) -> str | None:
    """The class an object was built from: NEWOBJ/REDUCE on a class, or copyreg._reconstructor(cls, ...)."""
    if not isinstance(obj, Obj) or not isinstance(obj.callee, Glob):
        return None
    if obj.callee.name == "copyreg._reconstructor" and isinstance(obj.args, Seq) and obj.args.items \
            and isinstance(obj.args.items[0], Glob):
        return obj.args.items[0].name
    return obj.callee.name


def _dict_of(state) -> dict:
    """The string-keyed entries of a symbolic dict (the state a BUILD sets)."""
    if isinstance(state, Seq) and state.kind == "tuple" and state.items:   # (state, slotstate)
        state = state.items[0]
    if not (isinstance(state, Seq) and state.kind == "dict"):
        return {}
    items = state.items
    return {k.value: v for k, v in zip(items[0::2], items[1::2]) if isinstance(k, Const) and isinstance(k.value, str)}


def _dtype_descr(dtype) -> int | str | None:
    """Item size of a pickled numpy dtype (`numpy.dtype('f8', False, True)`), "object", or None when unknown."""
    if not (isinstance(dtype, Obj) and isinstance(dtype.callee, Glob) and dtype.callee.name == "numpy.dtype"
            and isinstance(dtype.args, Seq) and dtype.args.items and isinstance(dtype.args.items[0], Const)):
        return None
    descr = dtype.args.items[0].value
    descr = descr.decode("latin-1") if isinstance(descr, bytes) else descr
    m = re.fullmatch(r"([biufcmMSUVO])(\d+)", descr) if isinstance(descr, str) else None
    if not m:
        return None
    if m.group(1) == "O":
        return "object"
    return int(m.group(2)) * (4 if m.group(1) == "U" else 1)


def scan_stream(buf, start: int, end: int, emit: Emit, *, depth: int = 0, where: str = "",
                max_pickles: int | None = None, trailing_ok: bool = False) -> list[PickleResult]:
    """Walk consecutive pickles in buf[start:end] (a loader can read them one after another).

    After the last complete pickle, remaining bytes are parsed as further pickles; bytes that are not
    a pickle are reported as hidden trailing data unless `trailing_ok` (legacy torch files carry raw
    storage bytes there). `max_pickles` stops after that many pickles.
    """
    results: list[PickleResult] = []
    pos = start
    opened = _open(buf, start, end)
    while pos < end:
        if max_pickles is not None and len(results) >= max_pickles:
            break
        if results:
            rest = bytes(buf[pos:min(end, pos + 4096)])
            if not rest.strip(b"\x00 \t\r\n"):
                if end - pos <= 4096:
                    break
            if trailing_ok:
                # only follow on when the next bytes really start a pickle
                if rest[:1] != b"\x80":
                    break
            elif rest[:1] != b"\x80" and not decodes_as_pickle(buf, pos, end, opened=opened):
                emit(SUSPICIOUS, "data after the pickle",
                     f"{end - pos} bytes follow the pickle's STOP and are not a pickle; a second load() on the "
                     "same stream, or another tool, may read them.", pos, where)
                break
        result = Machine(emit, depth, where).run(buf, pos, end, opened)
        results.append(result)
        if not result.complete or result.end <= pos:
            break
        pos = result.end
    return results


def decodes_as_pickle(buf, start: int, end: int, max_ops: int = 1_000_000, opened=None) -> bool:
    """Whether buf[start:] decodes as a pickle up to STOP: the test that tells a pickle from other bytes where
    the first bytes are weak evidence (protocol 0/1 lookalikes, data after a pickle, torch data members).

    A stream still decoding after `max_ops` opcodes counts as a pickle, so the full walk reports it."""
    try:
        stream, base = opened or _open(buf, start, end)
        stream.seek(start - base)
        for n, (op, _arg, _pos) in enumerate(pickletools.genops(stream)):
            if op.name == "STOP" or n >= max_ops:
                return True
    except Exception:
        return False
    return False


def looks_like_pickle(head: bytes) -> bool:
    """A cheap content test: protocol 2+ header, or a protocol 0/1 stream that starts like one."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    return head[:1] in (b"(", b"c", b"}", b"]", b")", b"N", b"I", b"L", b"S", b"V", b"X", b"U", b"T",
                        b"G", b"F", b"J", b"K", b"M", b"i", b"\x8c")
