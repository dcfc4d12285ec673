"""An Ollama `Modelfile` beside every GGUF modelport writes.

Ollama does not run Jinja: its TEMPLATE is a Go text/template over `.Messages` (each with `.Role`, `.Content`).
No library translates one into the other, and a general translation is not possible, so we recognise the
common chat formats by their markers (ChatML, Llama 3, Llama 2 / Mistral [INST], Phi-3, Gemma) and write
Ollama's equivalent template for each. Anything else gets no TEMPLATE (Ollama then uses the raw prompt) and
a comment that says so. Stop tokens come from the format and the end-of-sequence token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# (name, markers that must all appear in the Jinja template, Ollama template, stop strings)
_FORMATS: tuple[tuple[str, tuple[str, ...], str, tuple[str, ...]], ...] = (
    ("llama3", ("<|start_header_id|>", "<|eot_id|>"),
     "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
     "{{ .Content }}<|eot_id|>\n"
     "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
     ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ("chatml", ("<|im_start|>", "<|im_end|>"),
     "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
     "{{ .Content }}<|im_end|>\n"
     "{{ end }}<|im_start|>assistant\n",
     ("<|im_start|>", "<|im_end|>")),
    ("phi3", ("<|assistant|>", "<|end|>"),
     "{{- range .Messages }}<|{{ .Role }}|>\n"
     "{{ .Content }}<|end|>\n"
     "{{ end }}<|assistant|>\n",
     ("<|end|>", "<|user|>", "<|assistant|>")),
    ("gemma", ("<start_of_turn>", "<end_of_turn>"),
     "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
     "{{ .Content }}<end_of_turn>\n"
     "{{ end }}<start_of_turn>model\n",
     ("<start_of_turn>", "<end_of_turn>")),
    ("llama2", ("[INST]", "[/INST]"),
     "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]"
     "{{ else if eq .Role \"assistant\" }} {{ .Content }}</s>{{ end }}{{ end }}",
     ("[INST]", "[/INST]")),
)


def chat_format(template: str | None) -> str | None:
    """The name of the common chat format a Jinja template follows, or None."""
    if not template:
        return None
    for name, markers, _, _ in _FORMATS:
        if all(m in template for m in markers):
            return name
    return None


def modelfile_path(gguf_path: str | os.PathLike) -> Path:
    p = Path(gguf_path)
    return p.with_name(p.stem + ".Modelfile")


def _plain(v):
    if type(v).__name__ == "GGUFValue":   # gguf-py's typed value, as the converter builds metadata
        v = v.value
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _quote(s: str) -> str | None:
    if any(c in s for c in '"\n\\'):
        return None
    return f'"{s}"'


def render(gguf_path: str | os.PathLike, metadata: dict[str, Any], from_ref: str | None = None) -> str:
    """The Modelfile text for a GGUF with this metadata (`from_ref` overrides the FROM line)."""
    gguf_path = Path(gguf_path)
    arch = metadata.get("general.architecture")
    template = metadata.get("tokenizer.chat_template")
    template = template if isinstance(template, str) else None
    fmt = chat_format(template)
    lines = [f"# Ollama Modelfile written by modelport for {gguf_path.name}",
             f"# use: ollama create <name> -f {gguf_path.stem}.Modelfile",
             f"FROM {from_ref or './' + gguf_path.name}", ""]
    stops: list[str] = []
    if fmt is not None:
        _, _, go_template, fmt_stops = next(f for f in _FORMATS if f[0] == fmt)
        lines += [f"# chat template: {fmt} (translated from the model's Jinja template)",
                  f'TEMPLATE """{go_template}"""', ""]
        stops += fmt_stops
    elif template:
        lines += ["# The model's Jinja chat template is not one of the common formats modelport translates",
                  "# (chatml, llama3, llama2/mistral, phi3, gemma); write a TEMPLATE by hand if you chat with it.", ""]
    else:
        lines += ["# The model has no chat template: prompts are passed through as they are.", ""]
    tokens = metadata.get("tokenizer.ggml.tokens")
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if tokens is not None and eos is not None:
        toks = _plain(tokens)
        eos = int(_plain(eos))
        if 0 <= eos < len(toks) and toks[eos] not in stops:
            stops.append(toks[eos])
    for s in stops:
        q = _quote(s)
        if q:
            lines.append(f"PARAMETER stop {q}")
    ctx = metadata.get(f"{arch}.context_length") if isinstance(arch, str) else None
    if ctx is not None:
        lines.append(f"PARAMETER num_ctx {min(int(_plain(ctx)), 4096)}")
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.9"]
    return "\n".join(lines) + "\n"


def write_modelfile(path: str | os.PathLike, gguf_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(render(gguf_path, metadata), encoding="utf-8")
    return path
