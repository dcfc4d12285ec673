"""Atomic outputs: write beside the target under a temporary name, then rename.

A failed or interrupted conversion leaves nothing behind, an existing output is never half
overwritten, and a file memory-mapped elsewhere is never truncated under its reader.

Temporaries are named `.NAME.modelport-PID-XXXX.tmp` beside the output NAME: an error, Ctrl-C or
SIGTERM removes them on the way out; a process killed outright (SIGKILL, power loss) leaves one, and
the next write of the same output removes it once its PID is gone. A full disk (ENOSPC, a quota, a
file size limit) is a one-line error naming the output, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ModelportError, OutputExistsError

TEMP_MARK = "modelport"
#: errno values that mean "no room for the output": the disk, a quota, or RLIMIT_FSIZE.
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _name_the_output(exc: BaseException, tmp: Path, final: Path) -> None:
    """An error raised about the temporary name should name the output the user asked for."""
    if isinstance(exc, ModelportError) and exc.path and exc.path.startswith(str(tmp)):
        exc.path = str(final) + exc.path[len(str(tmp)):]


def write_failure(exc: BaseException, final: Path) -> ModelportError | None:
    """The one-line error for an OS error met while writing `final` (None: not a write failure)."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        return ModelportError(f"cannot write the output: {os.strerror(exc.errno)} (the disk is full or a size limit "
                              "was reached); nothing was left behind", final)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ModelportError(f"cannot write the output: {os.strerror(exc.errno)}", final)
    return None


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output(path: Path, force: bool) -> None:
    """Refuse to replace an existing output unless forced."""
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError("already exists; use --force to replace it", path)


def temp_prefix(path: Path) -> str:
    return f".{path.name}.{TEMP_MARK}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process: alive
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporaries that earlier writes of `path` left when killed (their process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{TEMP_MARK}-(\d+)-[^.]*\.tmp$")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _prepare(path: Path, force: bool) -> None:
    check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)


#: False inside `scratch_outputs()`: outputs are still atomic (written beside, renamed into place) but not fsynced.
_durable = [True]


@contextlib.contextmanager
def scratch_outputs() -> Iterator[None]:
    """For this process, during the block: outputs skip their fsyncs. Only for throwaway outputs a crash may lose
    (`modelport tour` writes ~4 GB of them, and waiting for the disk was much of its time); every other caller keeps
    the default, durable outputs."""
    before = _durable[0]
    _durable[0] = False
    try:
        yield
    finally:
        _durable[0] = before


def fsync_path(path: Path) -> None:
    if not _durable[0]:
        return
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (the directory entry itself)."""
    if not _durable[0]:
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _cleaning(tmp: Path, final: Path, named: Path | None = None) -> Iterator[None]:
    """On any failure (Ctrl-C included) remove `tmp`; an OS write failure becomes a one-line error about `final`;
    an error about a path under `tmp` names it under `named` (default `final`) instead."""
    try:
        yield
    except BaseException as exc:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _name_the_output(exc, tmp, named or final)
        friendly = write_failure(exc, final)
        if friendly is not None:
            raise friendly from None
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it into place."""
    path = Path(path)
    _prepare(path, force)
    tmp = None
    with _cleaning(path.parent / f".{path.name}.{TEMP_MARK}-pending.tmp", path):
        fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    with _cleaning(tmp, path):
        os.chmod(tmp, 0o666 & ~current_umask())   # mkstemp makes 0600; the output gets what any new file gets
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    _prepare(path, force)
    with _cleaning(path.parent / f".{path.name}.{TEMP_MARK}-pending.tmp", path):
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
    with _cleaning(tmp, path):
        os.chmod(tmp, 0o777 & ~current_umask())   # mkdtemp makes 0700
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                fsync_path(f)
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()


@contextlib.contextmanager
def atomic_files(paths: list[Path], force: bool = False) -> Iterator[Path]:
    """Several files that make one output (a split GGUF): yield a temporary folder beside them in which the
    caller writes each under its final name; on success each is fsynced and renamed into place, the first
    last, so that the set is complete whenever its first file (the one readers open) exists."""
    paths = [Path(p) for p in paths]
    first = paths[0]
    for p in paths:
        _prepare(p, force)
    with _cleaning(first.parent / f".{first.name}.{TEMP_MARK}-pending.tmp", first):
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(first), suffix=".tmp", dir=first.parent))
    with _cleaning(tmp, first, named=first.parent):
        yield tmp
        for p in paths:
            fsync_path(tmp / p.name)
        for p in reversed(paths):
            os.replace(tmp / p.name, p)
        fsync_dir(first.parent)
        tmp.rmdir()
