"""Options and helpers that several commands share, declared once so that no command imports another."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..core.errors import ModelportError
from ..runtime import GenerationSettings, Sampling, llama_engine
from ..runtime.tokenizer import show_logs as show_transformers_logs

# Set once by `main` from `--debug` / `-v` (before the command runs): the libraries' own logs go through.
_library_logs = {"show": False}


def show_library_logs(show: bool) -> None:
    """`--verbose`/`--debug`: let llama.cpp's, transformers' and tokenizers' own logs and warnings through."""
    _library_logs["show"] = show
    llama_engine.show_logs(show)
    show_transformers_logs(show)


def engine_option():
    return typer.Option("auto", "--engine", help="auto (llama.cpp for GGUF, onnxruntime for ONNX exports, transformers "
                                                 "otherwise), llama, hf or onnx.")


def ctx_option():
    return typer.Option(None, "--ctx", help="Context length (default: the model's).")


def max_tokens_option(default: int, help: str):  # noqa: A002 - typer's own name for it
    return typer.Option(default, "--max-tokens", "-n", help=help)


def temperature_option():
    return typer.Option(0.0, "--temperature", "-t", help="0 picks the likeliest token (greedy).")


def top_p_option():
    return typer.Option(1.0, "--top-p", help="Nucleus sampling: keep the smallest set of tokens with this much probability.")


def top_k_option():
    return typer.Option(0, "--top-k", help="Keep only the k likeliest tokens (0: all).")


def seed_option():
    return typer.Option(None, "--seed", help="Seed for sampling (same seed, same answer).")


def stop_option():
    return typer.Option(None, "--stop", help="End the answer where this text appears (repeatable; not printed).")


def generation_settings(max_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None,
                        stop: list[str] | None, ignore_eos: bool = False) -> GenerationSettings:
    """The options above as the runtime takes them; the runtime checks the values (a bad one exits 2)."""
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    return GenerationSettings(max_tokens=max_tokens, sampling=sampling, stop=tuple(stop or ()), ignore_eos=ignore_eos)


def quiet_libraries() -> None:
    """Keep the engines' own progress bars, logs and warnings off the terminal (set before they are imported),
    unless `--verbose`/`--debug` asked for them."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")   # else tokenizers warns when a process forks
    if not _library_logs["show"]:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def read_text(path: Path) -> str:
    """A UTF-8 text file given on the command line (`--text`, `--prompt-file`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelportError(f"cannot read ({exc.strerror})", path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelportError("the text is not UTF-8", path) from None


def split_max_size_option():
    return typer.Option(None, "--split-max-size", help="GGUF output: cut into llama.cpp split files "
                                                       "(NAME-00001-of-0000N.gguf) of at most this much tensor data "
                                                       "(e.g. 2GB, 500M), as gguf-split does.")


def split_max_tensors_option():
    return typer.Option(None, "--split-max-tensors", help="GGUF output: at most this many tensors per split file.")
