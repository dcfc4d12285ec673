"""`modelport run MODEL -p PROMPT`: one answer, streamed; the chat template rendered by modelport."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .. import runtime
from ..core.errors import UnsupportedError
from .options import (
    ctx_option,
    engine_option,
    generation_settings,
    max_tokens_option,
    quiet_libraries,
    seed_option,
    stop_option,
    temperature_option,
    top_k_option,
    top_p_option,
)
from .output import print_json, trust_option, write


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Path = typer.Argument(..., help="GGUF file, Hugging Face folder, weights file with a config beside it, or "
                                                "ONNX export folder (its model_int8.onnx for the int8 graph)."),
        prompt: str | None = typer.Option(None, "-p", "--prompt", help="The prompt (read from stdin when left out)."),
        system: str | None = typer.Option(None, "--system", help="System message (else the template's own default)."),
        max_tokens: int = max_tokens_option(256, "Most tokens to generate."),
        temperature: float = temperature_option(),
        top_p: float = top_p_option(),
        top_k: int = top_k_option(),
        seed: int | None = seed_option(),
        engine: str = engine_option(),
        ctx: int | None = ctx_option(),
        raw: bool = typer.Option(False, "--raw", help="Send the prompt as plain text, without the chat template."),
        ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Do not stop at end-of-turn tokens (benchmarks)."),
        stop: list[str] | None = stop_option(),
        as_json: bool = typer.Option(False, "--json", help="Print the full result (text, token counts, timings) as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Answer one prompt, streaming tokens as they come."""
        quiet_libraries()
        settings = generation_settings(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos=ignore_eos)
        if prompt is None:
            if sys.stdin.isatty():
                raise UnsupportedError("give a prompt with -p, or pipe it on stdin")
            prompt = sys.stdin.read()
        with runtime.load(model, engine=engine, ctx=ctx, trust=trust, needs_template=not raw) as eng:
            if raw:
                if system is not None:
                    raise UnsupportedError("--system needs the chat template; leave out --raw")
                ids = eng.tokenize(prompt, add_special=True)
            else:
                messages = ([{"role": "system", "content": system}] if system is not None else [])
                ids = eng.chat_ids(messages + [{"role": "user", "content": prompt}])
            result = runtime.stream_answer(eng, ids, settings, on_text=None if as_json else write)
        if as_json:
            data = result.to_dict()
            data.update(model=str(model), prompt=prompt, sampling=vars(settings.sampling), stop=stop or [])
            print_json(data)
        else:
            write("\n")
