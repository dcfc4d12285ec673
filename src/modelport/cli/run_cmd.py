"""`modelport run MODEL -p PROMPT`: one answer, streamed; the chat template rendered by modelport.

`--json-schema FILE` / `--json-object`: the answer is JSON (runtime.structured masks every token); an answer
that still is not the JSON asked for (cut by --max-tokens, --ctx or --stop) is printed, then one line on
stderr says why, exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from .. import runtime
from ..core.errors import CheckFailed, FormatError, ModelportError, UnsupportedError
from ..runtime.structured import check_json, check_schema, json_constraint
from .options import (
    ctx_option,
    engine_option,
    generation_settings,
    max_tokens_option,
    quiet_libraries,
    read_text,
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
        json_schema: Path | None = typer.Option(None, "--json-schema", metavar="FILE",
                                                help="Answer with JSON that validates against this JSON schema "
                                                     "(enforced token by token)."),
        json_object: bool = typer.Option(False, "--json-object", help="Answer with a JSON object (any keys)."),
        as_json: bool = typer.Option(False, "--json", help="Print the full result (text, token counts, timings) as JSON."),
        trust: bool = trust_option(),
    ) -> None:
        """Answer one prompt, streaming tokens as they come."""
        quiet_libraries()
        settings = generation_settings(max_tokens, temperature, top_p, top_k, seed, stop, ignore_eos=ignore_eos)
        if json_schema is not None and json_object:
            raise UnsupportedError("give --json-schema or --json-object, not both")
        structured = json_schema is not None or json_object
        schema = read_schema(json_schema) if json_schema is not None else None
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
            constraint = json_constraint(eng, schema) if structured else None
            result = runtime.stream_answer(eng, ids, settings, on_text=None if as_json else write, constraint=constraint)
        problem = structured_problem(result, schema, settings.max_tokens) if structured else None
        if as_json:
            data = result.to_dict()
            data.update(model=str(model), prompt=prompt, sampling=vars(settings.sampling), stop=stop or [])
            if structured:
                data["structured"] = {"schema": str(json_schema) if json_schema else "json_object",
                                      "valid": problem is None, "problem": problem}
            print_json(data)
        else:
            write("\n")
        if problem:
            raise CheckFailed(problem)


def read_schema(path: Path) -> dict:
    """The JSON schema in `path`, checked before any model loads: a bad file is one line naming it (exit 2)."""
    try:
        schema = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise FormatError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", path) from None
    try:
        return check_schema(schema)
    except ModelportError as exc:
        raise type(exc)(exc.message, path) from None


def structured_problem(result: runtime.Generation, schema: dict | None, max_tokens: int) -> str | None:
    """Why a structured answer is not the JSON asked for (None when it is): cut short by --max-tokens or the
    context before the grammar could finish, or cut at a --stop string."""
    if result.stop_reason == "length":
        return f"the answer reached --max-tokens {max_tokens} before its JSON was complete (raise --max-tokens)"
    if result.stop_reason == "context":
        return "the context filled before the JSON was complete (raise --ctx or shorten the prompt)"
    if result.stop_reason == "cancelled":
        return "the answer was stopped before its JSON was complete"
    return check_json(result.text, schema)[1]
