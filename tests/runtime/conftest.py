"""The runtime tests' chat templates and their tiny model (`tests.factory.chat_model`: a byte-level BPE
with a chat template and a random `LlamaForCausalLM`, made at test time by the real libraries, offline).

`make_model`, `make_tokenizer` and `run_cli` are the shared helpers under the names these tests use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, run_cli_process  # noqa: F401 - the shared CLI helpers, under this module too
from tests.factory import CHATML  # noqa: F401
from tests.factory import chat_model as make_model
from tests.factory import chat_tokenizer as make_tokenizer  # noqa: F401

# SmolLM2-Instruct's template as its GGUF carries it (default system prompt when none is given).
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama-3 style: writes the BOS itself, trims content, uses namespace/raise_exception/tojson.
LLAMA3 = ("{{- bos_token }}{%- set ns = namespace(sys='') %}"
          "{%- if messages[0]['role'] == 'system' %}{%- set ns.sys = messages[0]['content'] | trim %}"
          "{%- set messages = messages[1:] %}{%- endif %}"
          "{%- if ns.sys %}{{- '<|start_header_id|>system<|end_header_id|>\n\n' + ns.sys + '<|eot_id|>' }}{%- endif %}"
          "{%- for message in messages %}"
          "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
          "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
          "{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
          "{%- if extra is defined %}{{ extra | tojson(indent=2) }}{%- endif %}")

# Mistral-style with a default system prompt and eos_token after assistant turns.
MISTRAL = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
           "{% set loop_messages = messages[1:] %}{% else %}{% set system = 'Be brief.' %}{% set loop_messages = messages %}{% endif %}"
           "{% for message in loop_messages %}{% if message['role'] == 'user' %}"
           "{% if loop.first %}{{ '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
           "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
           "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random llama with a chatml template, saved as a Hugging Face folder (safetensors)."""
    return make_model(tmp_path_factory.mktemp("tiny") / "model")
