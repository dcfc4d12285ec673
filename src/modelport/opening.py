"""`open()`: any model file, shard index or Hugging Face folder, by content, after the scanner.

Formats register in `modelport.formats.registry` with a detector that looks at the file's bytes;
the reader is picked by content, never by extension. A Hugging Face folder is opened through its
weight files (an index if there is one), its config, tokenizer and other side files kept alongside.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import locate
from .core.source import ModelSource
from .formats import registry
from .security import guard


def open(path: str | os.PathLike, *, format: str | None = None, trust: bool = False) -> ModelSource:  # noqa: A001
    """Open a model file, a shard index or a Hugging Face folder by content.

    The scanner runs first: a file that would run code or harm a reader is refused, and a merely
    suspicious one (imports outside the allowlist, an archive we can't look inside) needs `trust`.
    A path that does not exist may be a model's name: `modelport.locate` looks in the local stores.
    """
    path = Path(path)
    if not path.exists():
        path = locate.require(os.fspath(path))
    guard(path, trust=trust)
    if path.is_dir():
        return registry.open_folder(path)
    source = registry.open_file(path, format=format)
    if source.format == "gguf" and len(source.files) > 1:    # a split GGUF opened from one part: scan the others
        try:
            for part in source.files:
                if part.resolve() != path.resolve():
                    guard(part, trust=trust)
        except BaseException:
            source.close()
            raise
    return source
