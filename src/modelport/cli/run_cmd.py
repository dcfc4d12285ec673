"""`modelport run MODEL -p PROMPT`: one answer, streamed; the chat template rendered by modelport."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import UnsupportedError
from .output import print_json, trust_option


def engine_option():
    return typer.Option("auto", "--engine", help="auto (llama.cpp for GGUF, transformers otherwise), llama or hf.")


def sampling_from(temperature: float, top_p: float, top_k: int, seed: Optional[int]):
    from ..runtime import Sampling
    return Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


def quiet_libraries() -> None:
    """Keep the engines' own progress bars and warnings off the terminal (set before they are imported)."""
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def stop_option():
    return typer.Option(None, "--stop", help="End the answer where this text appears (repeatable; not printed).")


def write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, or weights file with a config beside it."),
        prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="The prompt (read from stdin when left out)."),
        system: Optional[str] = typer.Option(None, "--system", help="System message (else the template's own default)."),
        max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most tokens to generate."),
        temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 picks the likeliest token (greedy)."),
        top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: keep the smallest set of tokens with this much probability."),
        top_k: int = typer.Option(0, "--top-k", help="Keep only the k likeliest tokens (0: all)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling (same seed, same answer)."),
        engine: str = engine_option(),
        ctx: Optional[int] = typer.Option(None, "--ctx", help="Context length (default: the model's)."),
        raw: bool = typer.Option(False, "--raw", help="Send the prompt as plain text, without the chat template."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at end-of-turn tokens (benchmarks)."),
        stop: Optional[list[str]] = stop_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the full result (text, token counts, timings) as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Answer one prompt, streaming tokens as they come."""
        quiet_libraries()
        from .. import runtime
        if max_tokens < 1:
            raise UnsupportedError(f"--max-tokens must be at least 1, not {max_tokens}")
        if prompt is None:
            if sys.stdin.isatty():
                raise UnsupportedError("give a prompt with -p, or pipe it on stdin")
            prompt = sys.stdin.read()
        sampling = sampling_from(temperature, top_p, top_k, seed)
        with runtime.load(model, engine=engine, ctx=ctx, trust=trust) as eng:
            if raw:
                if system is not None:
                    raise UnsupportedError("--system needs the chat template; leave out --raw")
                ids = eng.tokenize(prompt, add_special=True)
            else:
                messages = ([{"role": "system", "content": system}] if system is not None else [])
                ids = eng.chat_ids(messages + [{"role": "user", "content": prompt}])
            result = eng.complete(ids, on_text=None if as_json else write, max_tokens=max_tokens,
                                  sampling=sampling, ignore_eos=ignore_eos, stop=stop or ())
        if as_json:
            data = result.to_dict()
            data.update(model=str(model), prompt=prompt, sampling=vars(sampling), stop=stop or [])
            print_json(data)
        else:
            write("\n")
