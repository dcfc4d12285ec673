"""modelport's template rendering against transformers' `apply_chat_template` (the oracle): string and ids."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from modelport.core.errors import FormatError, UnsupportedError
from modelport.opening import open as open_model
from modelport.runtime.chat_template import ChatTemplate, gguf_special_tokens, template_for

from .conftest import CHATML, LLAMA3, MISTRAL, SMOLLM2, make_tokenizer

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "  Answer in one word.  "},
               {"role": "user", "content": "What is the capital of France?"}],
    "multi": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
              {"role": "user", "content": "Tell me a story 🙂 about 東京"}],
    "none_value": [{"role": "user", "content": "Hello", "name": None}],
}
TEMPLATES = {"chatml": CHATML, "smollm2": SMOLLM2, "llama3": LLAMA3, "mistral": MISTRAL}
BOS = {"chatml": "<|im_start|>", "smollm2": "<|im_start|>", "llama3": "<s>", "mistral": "<s>"}
EOS = {"chatml": "<|im_end|>", "smollm2": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def folder(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp(name)
    # llama3/mistral tokenizers add BOS to plain text: the template's own BOS must not be doubled.
    make_tokenizer(path, TEMPLATES[name], bos=BOS[name], eos=EOS[name], add_bos=name in ("llama3", "mistral"))
    return name, path


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_render_equals_transformers(folder, conversation, generation_prompt):
    name, path = folder
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    messages = CONVERSATIONS[conversation]
    template = ChatTemplate(TEMPLATES[name], dict(tok.special_tokens_map))
    ours = template.render(messages, add_generation_prompt=generation_prompt)
    theirs = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert ours == theirs
    ids = tok.encode(ours, add_special_tokens=False)
    assert ids == list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                               return_dict=False))
    if name in ("llama3", "mistral"):
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id      # one BOS, not two
        assert tok.encode("x")[0] == tok.bos_token_id                                   # though plain text gets one


def test_default_system_prompt_and_tojson(tmp_path):
    tok_dir = tmp_path / "t"
    make_tokenizer(tok_dir, SMOLLM2)
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    template = ChatTemplate(SMOLLM2, dict(tok.special_tokens_map))
    text = template.render(CONVERSATIONS["user"])
    assert "You are a helpful AI assistant named SmolLM" in text
    llama3 = ChatTemplate(LLAMA3, {"bos_token": "<s>"})
    extra = {"b": [1, 2], "a": "é<>"}
    rendered = llama3.render(CONVERSATIONS["user"], extra=extra)
    assert rendered.endswith(json.dumps(extra, ensure_ascii=False, indent=2))   # no HTML escaping, unicode kept


def test_raise_exception_is_a_clear_error():
    template = ChatTemplate(LLAMA3, {"bos_token": "<s>"})
    with pytest.raises(UnsupportedError, match="roles must alternate"):
        template.render([{"role": "assistant", "content": "hi"}])


def test_sandbox_refuses_attribute_escapes():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(FormatError, match="unsafe"):
        ChatTemplate(evil).render(CONVERSATIONS["user"])
    mutate = "{% set x = messages.append({'role': 'x'}) %}{{ messages | length }}"
    with pytest.raises(FormatError, match="unsafe"):
        ChatTemplate(mutate).render(CONVERSATIONS["user"])
    with pytest.raises(FormatError, match="namespace"):
        ChatTemplate("{% set ns = namespace(_x=1) %}").render([])


def test_syntax_error_names_the_file(tmp_path):
    with pytest.raises(FormatError, match="does not parse"):
        ChatTemplate("{% for x in %}", origin="here")


def test_template_sources(tmp_path, tiny):
    # tokenizer_config.json (a list of named templates takes 'default'), then chat_template.jinja wins.
    source = open_model(tiny)
    assert template_for(source).source == json.loads((tiny / "tokenizer_config.json").read_text())["chat_template"]
    folder = tmp_path / "m"
    folder.mkdir()
    for f in tiny.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert template_for(open_model(folder)).source == "D"
    (folder / "chat_template.jinja").write_text("J{{ bos_token }}")
    template = template_for(open_model(folder))
    assert template.source == "J{{ bos_token }}" and template.render([]) == "J<|im_start|>"


def test_gguf_specials_from_metadata():
    meta = {"tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"], "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 7}
    assert gguf_special_tokens(meta) == {"bos_token": "<s>", "eos_token": "</s>"}   # out-of-range id ignored
