"""Errors that reach people.

Every error modelport raises on bad input is a `ModelportError`: the CLI prints it as one line
(`modelport: <file>: <problem>`) and exits with its `exit_code`. Anything else that escapes is a bug.
"""

from __future__ import annotations

import os
import re

#: Switches a message may tell the user to add: `--force` is `force=True` in the Python API.
SWITCHES = {"force", "verify", "dequantize", "trust", "raw", "debug"}


def with_keywords(text: str) -> str:
    """`use --force` → `use --force (force=True)`: a message about an option, in the API's words too."""
    def keyword(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f"{match.group(0)} ({name}=True)" if name in SWITCHES else match.group(0)
    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)\b(?![\w-])", keyword, text)


class ModelportError(Exception):
    """Bad input or usage: one line for a person, exit code 2.

    Messages name options the CLI way (`--force`); `str()` adds the keyword argument for Python callers
    (`--force (force=True)`), `cli_text()` is the line the CLI prints."""

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None

    def cli_text(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def __str__(self) -> str:
        message = with_keywords(self.message)
        return f"{self.path}: {message}" if self.path else message


class FormatError(ModelportError):
    """The file is not what it claims to be, or is corrupt or truncated."""


class UnsafeFileError(ModelportError):
    """The file would run code (or harm the reader) if loaded the usual way; refused."""


class UnsupportedError(ModelportError):
    """A valid request that this format, dtype or conversion cannot serve."""


class OutputExistsError(ModelportError):
    """The output is already there and `--force` was not given."""


class MissingDependencyError(ModelportError):
    """An optional part (an extra) is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs '{package}': pip install 'modelport[{extra}]'")


class CheckFailed(ModelportError):
    """A check ran and found a difference or a problem: exit code 1."""

    exit_code = 1


def require(condition: bool, message: str, path=None, error=FormatError) -> None:
    """Raise `error(message, path)` unless `condition` holds: the one-line guard used by every reader."""
    if not condition:
        raise error(message, path)
