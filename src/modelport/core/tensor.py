"""`TensorRef`: a named tensor that reads nothing until asked.

Readers build one per tensor from the file's header: name, dtype, shape, byte size and a loader.
`read()` returns a NumPy array, a zero-copy view of the memory-mapped file where the layout allows
(contiguous, aligned, little-endian). Transforms (cast, rename, permute, quantize) wrap a ref in a
new ref with a new loader, so a conversion stays a lazy stream until a writer pulls each tensor.

Block-quantized refs (GGUF Q4_K, ...) also carry `raw_loader`: their stored blocks, untouched, which is
what a writer copies so that a quantized tensor stays byte-identical, and what `read_raw()` returns.
"""

from __future__ import annotations

import builtins
import errno
import math
import mmap
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable

import numpy as np

from .dtypes import DType
from .errors import FormatError, UnsupportedError

VERBATIM = "verbatim"          # TensorRef.extra flag a reader sets: see `TensorRef.stored_range`
_COPY_CHUNK = 64 << 20         # bytes per copy_file_range / write call (each then handed to writeback)
_WRITEBACK_MIN = 4 << 20       # writes smaller than this are not pushed to disk early
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY)


def map_bytes(path, start: int, nbytes: int) -> np.ndarray:
    """A read-only uint8 view of `nbytes` at `start`, mapped on demand.

    One mapping per read, released with the array: touched pages leave the process with the tensor,
    so streaming a whole model keeps resident memory at about one tensor.
    """
    if nbytes == 0:
        return np.empty(0, np.uint8)
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with builtins.open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), start - base + nbytes, access=mmap.ACCESS_READ, offset=base)
    return np.frombuffer(mapped, np.uint8, count=nbytes, offset=start - base)


def copy_range(src: str | os.PathLike, offset: int, nbytes: int, out_fd: int) -> None:
    """Append `nbytes` of `src` from `offset` to the file open at `out_fd` (at its current position), file to
    file in the kernel (`copy_file_range`: no pass through this process's memory, a reflink where the file
    system can), falling back to `sendfile`, then to 64 MB reads."""
    with builtins.open(src, "rb") as f:
        fd_in, pos, left = f.fileno(), offset, nbytes
        os.posix_fadvise(fd_in, offset, nbytes, os.POSIX_FADV_SEQUENTIAL)   # read ahead what is not cached
        for copy in (_kernel_copy, _sendfile_copy, _read_copy):
            try:
                while left:
                    start = _tell(out_fd)
                    n = copy(fd_in, out_fd, pos, left)
                    if n <= 0:
                        raise FormatError(f"file changed while open (ends before byte {pos + left})", src)
                    start_writeback(out_fd, start, n)
                    pos, left = pos + n, left - n
                return
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing `nbytes` at `offset` to disk now (POSIX_FADV_DONTNEED on dirty pages
    starts their writeback without waiting for it), so that the disk works while the writer goes on and the
    output's final fsync has little left to wait for. Small writes are left to the kernel's own timing."""
    if offset >= 0 and nbytes >= _WRITEBACK_MIN:
        try:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        except OSError:     # a pipe or a file system without page cache: nothing to start
            pass


def _tell(fd: int) -> int:
    """`fd`'s position, or -1 where it has none (a pipe)."""
    try:
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return -1


def _kernel_copy(fd_in: int, fd_out: int, pos: int, left: int) -> int:
    return os.copy_file_range(fd_in, fd_out, min(left, _COPY_CHUNK), pos)


def _sendfile_copy(fd_in: int, fd_out: int, pos: int, left: int) -> int:
    return os.sendfile(fd_out, fd_in, pos, min(left, _COPY_CHUNK))


def _read_copy(fd_in: int, fd_out: int, pos: int, left: int) -> int:
    data = os.pread(fd_in, min(left, 1 << 26), pos)
    write_all(fd_out, data)
    return len(data)


def open_for_writing(path: str | os.PathLike):
    """An unbuffered binary file for a writer that writes big arrays and kernel copies (`copy_range`) itself.

    An existing empty file (the atomic output's fresh temporary) is not truncated again: on ext4 a truncate to
    zero makes close() start writing the whole file back (auto_da_alloc), a second flush before the output's fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
        return os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def write_all(fd: int, data) -> None:
    """Write every byte of `data` (bytes or a contiguous array) at `fd`'s position: `os.write` may write less
    (Linux stops at about 2 GB a call; a disk filling up stops sooner, then raises ENOSPC)."""
    view = memoryview(data).cast("B")
    written = 0
    start = _tell(fd) if len(view) >= _WRITEBACK_MIN else -1
    while written < len(view):
        n = os.write(fd, view[written:written + _COPY_CHUNK])
        start_writeback(fd, start + written, n)
        written += n


def as_float32(arr: np.ndarray, chunk_bytes: int = 32 << 20) -> np.ndarray:
    """`arr` as float32 (itself when it already is). A view of a memory-mapped file is converted a block of rows
    at a time, each block's pages handed back to the page cache once read (MADV_DONTNEED): the peak is the float32
    copy, not the copy plus the whole mapped source."""
    arr = np.asarray(arr)
    if arr.dtype == np.float32:
        return arr
    mapped = _mapping_of(arr)
    if mapped is None or arr.ndim == 0 or not arr.flags.c_contiguous:
        return arr.astype(np.float32)
    out = np.empty(arr.shape, np.float32)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    step = max(1, chunk_bytes // arr.itemsize)
    mm, base_addr = mapped
    start_addr = arr.ctypes.data - base_addr
    page = mmap.PAGESIZE
    for i in range(0, flat_in.size, step):
        flat_out[i:i + step] = flat_in[i:i + step]
        lo = start_addr + i * arr.itemsize
        hi = start_addr + min(i + step, flat_in.size) * arr.itemsize
        lo, hi = -(-lo // page) * page, hi // page * page     # whole pages inside the block only
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return out


def _mapping_of(arr: np.ndarray) -> tuple[mmap.mmap, int] | None:
    """The read-only mmap an array views (and the mapping's address), if any."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):       # np.frombuffer keeps a memoryview of the mmap
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or len(base) == 0:
        return None
    return base, np.frombuffer(base, np.uint8, count=1).ctypes.data


@dataclass
class TensorRef:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    loader: Callable[[], np.ndarray] = field(repr=False)
    nbytes: int = -1                        # bytes on disk; computed from dtype and shape when -1
    file: str | None = None                 # the file the bytes live in
    offset: int | None = None               # absolute byte offset in `file`, where the layout has one
    storage: Hashable | None = field(default=None, repr=False)
    """Identity of the underlying storage and view (file, key, offset, shape, strides) for formats where
    tensors can alias (torch views, tied weights). Two refs with equal `storage` are the same tensor."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    raw_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    """Returns the tensor's stored bytes as uint8 (rows along the last axis, or flat), untouched. Every ref of a
    block-quantized type must have it (a writer copies the blocks from it); readers may set it for others too."""

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        if self.nbytes < 0:
            self.nbytes = self.dtype.nbytes(self.numel)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def read(self) -> np.ndarray:
        """The tensor's values (block-quantized types come back dequantized as float32)."""
        return self.loader()

    def read_raw(self) -> np.ndarray:
        """The stored blocks of a block-quantized tensor as uint8, not dequantized (see `raw_loader`)."""
        if self.raw_loader is None:
            raise UnsupportedError(f"tensor {self.name!r}: {self.dtype.name} tensor without its raw blocks", self.file)
        return self.raw_loader()

    def stored_range(self) -> tuple[str, int] | None:
        """(file, offset) when `file` holds exactly this tensor's bytes as a writer stores them (little-endian,
        C order, whole-byte elements) at offset .. offset + nbytes, so that a writer may copy them file to file
        (`copy_range`); None otherwise. Only a reader sets it (the `verbatim` flag), and `derive()` clears `file`
        and `offset`, so a cast or otherwise transformed ref never qualifies."""
        if self.file is None or self.offset is None or not self.extra.get(VERBATIM) or self.dtype.bits % 8:
            return None
        return self.file, self.offset

    def derive(self, loader: Callable[[], np.ndarray], **changes) -> TensorRef:
        """A new lazy ref computed from this one (new loader; dtype/shape/name as changed).

        The raw blocks stay only while the dtype does: a ref cast or dequantized to another type has none."""
        if changes.get("dtype", self.dtype) != self.dtype:
            changes.setdefault("raw_loader", None)
        changes.setdefault("nbytes", -1)
        changes.setdefault("file", None)
        changes.setdefault("offset", None)
        return replace(self, loader=loader, **changes)


def cast(ref: TensorRef, dtype: DType) -> TensorRef:
    """Cast a floating tensor to another float dtype lazily; others pass through unchanged."""
    if not ref.dtype.is_float or ref.dtype == dtype or ref.dtype.is_quantized:
        return ref
    target = dtype.numpy

    def load() -> np.ndarray:
        return np.asarray(ref.read()).astype(target)

    return ref.derive(load, dtype=dtype, storage=None)
