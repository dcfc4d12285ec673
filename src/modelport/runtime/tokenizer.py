"""A model folder's own tokenizer through transformers, shared by every engine that runs a folder's graph or
weights outside llama.cpp (transformers, onnxruntime) and by `embed`: the same ids, specials, stop tokens and
chat template whichever engine runs the model, so their answers can be compared token for token.

Loaded with `local_files_only` and never `trust_remote_code`; transformers' and tokenizers' own warnings stay
off stderr unless `show_logs(True)` (the CLI's `--verbose`/`--debug`).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import FormatError, MissingDependencyError
from ..core.source import ModelSource
from .base import Engine
from .chat_template import ChatTemplate, template_for

_logs = {"show": False}


def show_logs(show: bool) -> None:
    """Let transformers' logging and Python warnings from loading a model through (or keep them quiet: default)."""
    _logs["show"] = show


@contextlib.contextmanager
def library_logs(transformers):
    """transformers at warning level with Python warnings shown when `show_logs(True)`, else errors only."""
    if _logs["show"]:
        transformers.logging.set_verbosity_warning()
    else:
        transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        if not _logs["show"]:
            warnings.simplefilter("ignore")
        yield


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "hf", "reading a model folder's tokenizer") from None
    return transformers


def load_tokenizer(folder: Path, **kwargs):
    """`AutoTokenizer.from_pretrained(folder)`, offline and without remote code; a folder it cannot read is one
    FormatError naming the folder."""
    tf = import_transformers()
    try:
        with library_logs(tf):
            return tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"transformers could not load the tokenizer ({str(exc).splitlines()[0]})", folder) from None


def token_ids(*values: Any) -> set[int]:
    """Ids from config values that may be an int, a list of ints or None (eos_token_id is all three)."""
    found: set[int] = set()
    for value in values:
        items: Iterable[Any] = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        found.update(int(v) for v in items if isinstance(v, int) and not isinstance(v, bool))
    return found


class TokenizerEngine(Engine):
    """An engine whose text side is a transformers tokenizer: tokenize, detokenize, vocabulary, BOS, stop ids
    and the chat template, set once by `use_tokenizer`."""

    tokenizer: Any = None

    def use_tokenizer(self, tokenizer, source: ModelSource, eos_ids: set[int]) -> None:
        """Adopt `tokenizer`; stop on its EOS and `eos_ids` (the generation config's); the chat template is the
        model's own (`template_for`), else the tokenizer's."""
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        self.add_bos = self.bos_id is not None and tokenizer.encode("")[:1] == [self.bos_id]
        self.stop_ids = frozenset(token_ids(tokenizer.eos_token_id) | eos_ids)
        self.template = template_for(source)
        if self.template is None and source.format != "gguf" and isinstance(tokenizer.chat_template, str):
            self.template = ChatTemplate(tokenizer.chat_template, origin=str(source.path))
        if self.template is not None:
            self.template.special_tokens = dict(tokenizer.special_tokens_map)

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def vocabulary(self) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))]
