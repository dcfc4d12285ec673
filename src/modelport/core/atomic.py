"""Atomic outputs: write beside the target under a temporary name, then rename.

A failed or interrupted conversion leaves nothing behind, an existing output is never half
overwritten, and a file memory-mapped elsewhere is never truncated under its reader.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ModelportError, OutputExistsError


def _name_the_output(exc: BaseException, tmp: Path, final: Path) -> None:
    """An error raised about the temporary name should name the output the user asked for."""
    if isinstance(exc, ModelportError) and exc.path and exc.path.startswith(str(tmp)):
        exc.path = str(final) + exc.path[len(str(tmp)):]


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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it into place."""
    path = Path(path)
    check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())   # mkstemp makes 0600; the output gets what any new file gets
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_the_output(exc, tmp, path)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` as a whole."""
    path = Path(path)
    check_output(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())   # mkdtemp makes 0700
    try:
        yield tmp
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_output(exc, tmp, path)
        raise
