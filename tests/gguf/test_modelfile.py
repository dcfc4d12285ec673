"""Ollama Modelfile: the translated TEMPLATE renders the same prompt as the model's Jinja chat template.

No Go toolchain or ollama binary is available to the tests, so the Go templates are rendered by a small
evaluator of the text/template subset the translations use (range/if/else if/else/end, eq, .Role, .Content,
{{- and -}} trimming), written here from the text/template documentation.
"""

from __future__ import annotations

import re

import jinja2
import numpy as np
import pytest

from modelport.gguf import modelfile as M
from tests.factory import CHATML, LLAMA3, PHI3

LLAMA2 = ("{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}"
         "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def go_render(template: str, messages: list[dict]) -> str:
    """Render the text/template subset used by modelfile translations."""
    parts, pos = [], 0
    for m in _ACTION.finditer(template):
        parts.append(("text", template[pos:m.start()]))
        parts.append(("action", m.group(2), bool(m.group(1)), bool(m.group(3))))
        pos = m.end()
    parts.append(("text", template[pos:]))
    for i, p in enumerate(parts):  # trim markers eat the whitespace next to them
        if p[0] == "action":
            if p[2] and parts[i - 1][0] == "text":
                parts[i - 1] = ("text", parts[i - 1][1].rstrip())
            if p[3] and parts[i + 1][0] == "text":
                parts[i + 1] = ("text", parts[i + 1][1].lstrip())

    def parse(i, stop):
        body = []
        while i < len(parts):
            p = parts[i]
            if p[0] == "text":
                body.append(p)
                i += 1
                continue
            act = p[1]
            if act == "end" or act == "else" or act.startswith("else if"):
                if stop:
                    return body, i
                raise AssertionError(act)
            if act.startswith("range ") or act.startswith("if "):
                branches, i = [], i
                cond = act
                while True:
                    sub, i = parse(i + 1, True)
                    branches.append((cond, sub))
                    nxt = parts[i][1]
                    if nxt == "end":
                        i += 1
                        break
                    cond = "if " + nxt[len("else if "):] if nxt.startswith("else if") else "else"
                body.append(("block", branches))
                continue
            body.append(("expr", act))
            i += 1
        return body, i

    def value(expr, ctx):
        if expr == ".Role":
            return ctx["role"]
        if expr == ".Content":
            return ctx["content"]
        m = re.fullmatch(r'eq \.Role "(\w+)"', expr)
        if m:
            return ctx["role"] == m.group(1)
        raise AssertionError(expr)

    def run(body, ctx) -> str:
        out = []
        for node in body:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "expr":
                out.append(str(value(node[1], ctx)))
            else:
                branches = node[1]
                head = branches[0][0]
                if head == "range .Messages":
                    for msg in messages:
                        out.append(run(branches[0][1], msg))
                    continue
                for cond, sub in branches:
                    if cond == "else" or value(cond[3:], ctx):
                        out.append(run(sub, ctx))
                        break
        return "".join(out)

    tree, _ = parse(0, False)
    return run(tree, {})


def _template_of(text: str) -> str:
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    return m.group(1) if m else None


CONV = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize("name,jinja,bos,eos,messages", [
    ("chatml", CHATML, "", "<|im_end|>", CONV),
    ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", CONV),
    ("phi3", PHI3, "<s>", "<|endoftext|>", CONV),
    ("gemma", GEMMA, "<bos>", "<eos>", CONV[1:]),
    ("llama2", LLAMA2, "<s>", "</s>", CONV[1:]),
])
def test_translated_template_renders_like_jinja(tmp_path, name, jinja, bos, eos, messages):
    assert M.chat_format(jinja) == name
    tokens = ["<unk>", bos or "<x>", eos, "a"]
    meta = {"general.architecture": "llama", "llama.context_length": np.uint32(8192), "tokenizer.chat_template": jinja,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.eos_token_id": np.uint32(2)}
    gguf = tmp_path / "m.gguf"
    text = M.render(gguf, meta)
    assert text.splitlines()[2] == "FROM ./m.gguf"
    want = jinja2.Environment().from_string(jinja).render(messages=messages, add_generation_prompt=True,
                                                          bos_token=bos, eos_token=eos)
    want = want[len(bos):] if bos and want.startswith(bos) else want   # llama.cpp/ollama add BOS as a token
    got = go_render(_template_of(text), messages)
    assert got == want and "2+2?" in got and "Hi there" in got
    assert f'PARAMETER stop "{eos}"' in text
    assert "PARAMETER num_ctx 4096" in text


def test_unknown_template_is_left_out_with_a_comment(tmp_path):
    meta = {"general.architecture": "gpt2", "gpt2.context_length": np.uint32(128),
            "tokenizer.chat_template": "{{ messages[0]['content'] }}", "tokenizer.ggml.tokens": ["a", "<|endoftext|>"],
            "tokenizer.ggml.eos_token_id": np.uint32(1)}
    text = M.render(tmp_path / "x.gguf", meta)
    assert "TEMPLATE" not in text.replace("write a TEMPLATE", "")
    assert "not one of the common formats" in text
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER num_ctx 128" in text
    for line in text.splitlines():   # every instruction is one Ollama knows
        if line and not line.startswith("#"):
            assert line.split()[0] in ("FROM", "PARAMETER"), line


def test_modelfile_written_beside_converted_gguf(tmp_path):
    from modelport.gguf.modelfile import modelfile_path, write_modelfile

    gguf = tmp_path / "model-Q4_K_M.gguf"
    path = write_modelfile(modelfile_path(gguf), gguf, {"tokenizer.chat_template": CHATML})
    assert path == tmp_path / "model-Q4_K_M.Modelfile"
    assert 'TEMPLATE """' in path.read_text()
