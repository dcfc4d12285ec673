"""Tiny models for the runtime tests, made at test time by the real libraries (offline).

A byte-level BPE tokenizer trained with `tokenizers` on a few sentences, a tokenizer_config.json
with a chat template, and a random `LlamaForCausalLM` saved by transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import modelport

# The subprocess runs the modelport under test (a worktree's src/ first on the path), not whichever is installed.
SOURCE_ROOT = str(Path(modelport.__file__).resolve().parents[1])

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

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

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]"]

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "What is the capital of France? Tell me a story about a dragon and a knight.",
    "system user assistant Be brief. Hello, how are you today? I am fine, thank you!",
    "Ünïcödé tëxt: café, naïve, 東京, emoji 🙂 and numbers 12345.",
] * 4


def make_tokenizer(folder: Path, template: str | None, bos: str = "<|im_start|>", eos: str = "<|im_end|>",
                   add_bos: bool = False) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if add_bos:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 512}
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def make_model(folder: Path, template: str | None = CHATML, seed: int = 0, **tok_kwargs) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab = make_tokenizer(folder, template, **tok_kwargs)
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=t.token_to_id(tok_kwargs.get("bos", "<|im_start|>")),
                         eos_token_id=t.token_to_id(tok_kwargs.get("eos", "<|im_end|>")), tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():   # sharper logits than the tiny init, so sampled text varies with the seed
        model.lm_head.weight.mul_(40)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random llama with a chatml template, saved as a Hugging Face folder (safetensors)."""
    return make_model(tmp_path_factory.mktemp("tiny") / "model")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(*args, stdin: str | None = None, env_extra: dict | None = None, pre: str = "", timeout: float = 600) -> Run:
    """The real CLI in a subprocess; `pre` is Python run first (e.g. to make a package unimportable)."""
    code = f"{pre}\nfrom modelport.cli.main import main\nmain()"
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": SOURCE_ROOT, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)
    return Run(proc.returncode, proc.stdout, proc.stderr)
