"""The one place tests, bench and the demo get tiny Hugging Face models: built offline, seeded, by the real libraries.

It lives in `tests/` (not in the shipped `modelport` package, which must not carry test helpers) as a plain
module: pytest puts the repo root on sys.path (`pythonpath = ["."]`), and `bench/*.py` and `scripts/demo.py`
add the repo root themselves, so all three import it as `tests.factory`.

Three parts, the last built from the first two:
- `random_model(arch, seed, **config)`: a transformers model of a family with exactly these config fields
  (library defaults for the rest), initialised after `torch.manual_seed(seed)`; `save_model` writes it.
- Tokenizers trained with `tokenizers` on small corpora: `train_tokenizer` in five styles (GPT-2 byte-level
  BPE, Llama 3, Qwen2, SentencePiece-style like Llama 2's tokenizer.json, Gemma) and `chat_tokenizer`, a
  small byte-level BPE with a chat template, for the runtime tests.
- Whole folders: `make_model` (a family + a tokenizer style, norms perturbed so mistakes show in the
  logits: the GGUF tests) and `chat_model` (the runtime tests' tiny llama with a chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# family -> (config class, model class) in transformers
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM"),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM"),
}

#: The mixture-of-experts families `make_model` makes: 4 experts, 2 per token (the Qwen ones: expert FFN half the dense).
MOE_FIELDS = dict(num_experts_per_tok=2)
#: The routers' parameter names (transformers' modules), scaled up by `make_model`.
ROUTERS = ("mlp.gate.weight", "block_sparse_moe.gate.weight", "mlp.router.weight")


def config(arch: str, **fields):
    """The transformers config of family `arch` with exactly these fields."""
    import transformers

    return getattr(transformers, FAMILIES[arch][0])(**fields)


def random_model(arch: str, seed: int | None = 0, **fields):
    """A random model of family `arch` (config fields as given), in eval mode; `seed=None` leaves the RNG alone."""
    import torch
    import transformers

    cfg = config(arch, **fields)
    if seed is not None:
        torch.manual_seed(seed)
    return getattr(transformers, FAMILIES[arch][1])(cfg).eval()


def save_model(model, folder: Path, weights: str = "safetensors") -> Path:
    """`save_pretrained` (safetensors + config.json), or with weights="bin" a PyTorch pickle folder as older
    checkpoints ship: config.json + pytorch_model.bin (a torch.save of the state dict)."""
    folder = Path(folder)
    if weights == "safetensors":
        model.save_pretrained(folder)
    elif weights == "bin":
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(weights)
    return folder


CORPUS = [
    "The quick brown fox jumps over the lazy dog. I've been told he's there, you're sure? We'll see.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Übermut, schön.",
    "Le vif renard brun saute par-dessus le chien paresseux. Où est l'hôtel? C'était très bien.",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела? нещо на Български",
    "我想在apple工作，敏捷的棕色狐狸跳过了懒狗。今天天气很好。",
    "素早い茶色の狐がのろまな犬を飛び越える。こんにちは世界。",
    "def main(x):\n    return [i * 2 for i in range(x)]  # 3.14 1234 56789\n\tprint('ok')\n",
    "Numbers 3 33 333 3333 33333, emojis 🚀 🦙🦙 ✅ and symbols ------======= !!!??? ''' ```",
    "Ελληνικά: η γρήγορη καφέ αλεπού. עברית: שלום עולם. العربية: مرحبا بالعالم. हिन्दी: नमस्ते दुनिया",
]

TEST_TEXT = ("Hello world! I'm testing: Größe, naïve café, Привет мир, 你好世界, こんにちは, 🚀🦙 ✅\n"
             "  def f(x):\n\treturn x**2  # 12345 3.14159\n\n"
             "Ελληνικά, עברית, العربية, हिन्दी. ------ ''' \"\"\" I've we'll THEY'RE   spaces    end")

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
          " + message['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _corpus(n: int = 30) -> list[str]:
    return CORPUS * n


def train_tokenizer(style: str, vocab_size: int = 600, extra_specials: list[str] | None = None):
    """A trained `tokenizers.Tokenizer` in one of three styles: gpt2, llama3, spm."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if style == "gpt2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_corpus(), trainer)
        return tok
    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_corpus(), trainer)
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
        return tok
    if style == "qwen2":   # Qwen2: the digit-by-digit split regex, byte-level BPE, no BOS
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_corpus(), trainer)
        return tok
    if style in ("spm", "gemma"):   # gemma: SentencePiece without the space prefix
        tok = _spm_tokenizer(vocab_size, prefix=style == "spm")
        if extra_specials:
            tok.add_special_tokens(extra_specials)
        return tok
    raise ValueError(style)


def _spm_tokenizer(vocab_size: int, prefix: bool = True):
    """SentencePiece-style BPE like Llama 2's tokenizer.json: <unk> <s> </s>, 256 byte tokens, then merges.

    (tokenizers' Metaspace pre-tokenizer, used by newer conversions, skips the space prefix when the text
    already starts with a space, which SentencePiece and llama.cpp do not; Llama 2's file uses normalizers.)

    The merges are listed the way transformers' SentencePiece converter lists them: every split of a token
    into two vocabulary pieces, ordered by the token's rank, so BPE ranks and SentencePiece scores agree."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, max_token_length=16)
    base.train_from_iterator(_corpus(), trainer)
    trained = sorted(base.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in trained:
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = []
    for t, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i < 259 or len(t) < 2:
            continue
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], left, right))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    # Llama 2's tokenizer.json: the space prefix and the space -> U+2581 replacement are normalizers
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if prefix else [])
                                          + [normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def train_bpe(pre_tokenizer, *, ignore_merges: bool = False, vocab_size: int = 500,
              specials: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    """A byte-level BPE `tokenizers.Tokenizer` trained on CORPUS with any pre-tokenizer (the per-family tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(20), trainer)
    return tok


def vocab_gguf(path: Path, tokenizer_metadata: dict) -> Path:
    """A tensor-less llama GGUF carrying `tokenizer.*` metadata: what `Llama(path, vocab_only=True)` loads."""
    from modelport.formats.gguf import write_gguf

    meta = {"general.architecture": "llama", "llama.context_length": np.uint32(64),
            "llama.embedding_length": np.uint32(32), "llama.block_count": np.uint32(1),
            "llama.feed_forward_length": np.uint32(32), "llama.attention.head_count": np.uint32(2),
            "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5), **tokenizer_metadata}
    write_gguf([], path, metadata=meta)
    return path


_TOKENIZER_SPECIALS = {
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "qwen2": dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    "llama3": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    "spm": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "gemma": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
}


def save_tokenizer(tok, style: str, folder: Path, chat_template: str | None = None):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **_TOKENIZER_SPECIALS[style])
    if chat_template:
        hf.chat_template = chat_template
    hf.save_pretrained(folder)
    return hf


def long_rope(head_dim: int, seed: int = 1) -> dict:
    """Phi-3-128k-style `longrope` scaling for a tiny model: per-frequency factors away from 1, so that using
    the wrong list (or none) shows in the logits."""
    rng = np.random.default_rng(seed)
    half = head_dim // 2
    return {"rope_type": "longrope", "short_factor": [round(float(v), 4) for v in rng.uniform(1.0, 1.5, half)],
            "long_factor": [round(float(v), 4) for v in rng.uniform(1.0, 30.0, half)]}


def _family_fields(arch: str, *, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, eos: int,
                   rope_theta: float, rope_scaling: dict | None, max_positions: int, common: dict) -> dict:
    """Config fields of `make_model`'s models, family by family (each one's own norm eps, head dim, windows)."""
    geometry = dict(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=kv_heads)
    if arch == "llama":
        return dict(geometry, max_position_embeddings=max_positions, rms_norm_eps=1e-5, rope_theta=rope_theta, **common)
    if arch == "smollm3":   # four layers: the fourth has no RoPE
        return dict(geometry, num_hidden_layers=max(layers, 4), max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                    rope_theta=rope_theta, pad_token_id=eos, **common)
    if arch == "qwen2":
        return dict(geometry, max_position_embeddings=max_positions, rms_norm_eps=1e-6, rope_theta=rope_theta, **common)
    if arch == "qwen3":     # head_dim 32 with hidden 256 / 4 heads: llama.cpp must read attention.key_length
        return dict(geometry, head_dim=hidden // heads // 2, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                    rope_theta=rope_theta, **common)
    if arch == "gpt2":
        return dict(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                    **{k: v for k, v in common.items() if k != "tie_word_embeddings"})
    if arch == "phi3":
        rope = {"rope_theta": rope_theta, **(rope_scaling or {})}
        if rope_scaling:    # long rope: the factors are relative to the pretraining context, 512 here
            rope["original_max_position_embeddings"] = 512
        return dict(geometry, max_position_embeddings=max_positions, original_max_position_embeddings=512,
                    pad_token_id=eos, sliding_window=None, rms_norm_eps=1e-5, rope_parameters=rope, **common)
    if arch in ("gemma", "gemma2"):
        extra = dict(query_pre_attn_scalar=hidden // heads, sliding_window=256) if arch == "gemma2" else {}
        return dict(geometry, head_dim=hidden // heads, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                    pad_token_id=0, **{**common, "tie_word_embeddings": True}, **extra)
    if arch == "gemma3":    # six layers (the sixth is global), a window the test text overflows, linear RoPE scaling
        return dict(geometry, num_hidden_layers=max(layers, 6), head_dim=hidden // heads,
                    query_pre_attn_scalar=hidden // heads, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                    pad_token_id=0, sliding_window=32,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                    **{**common, "tie_word_embeddings": True})
    if arch == "olmo2":     # post-norms only, Q/K norms over the whole projection
        return dict(geometry, max_position_embeddings=max_positions, rms_norm_eps=1e-6, rope_theta=rope_theta,
                    pad_token_id=eos, **common)
    if arch == "mixtral":
        return dict(geometry, num_local_experts=4, max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                    rope_theta=rope_theta, **MOE_FIELDS, **common)
    if arch == "qwen2_moe":     # every layer sparse, a shared expert with its sigmoid gate
        return dict(geometry, num_experts=4, moe_intermediate_size=ffn // 2, shared_expert_intermediate_size=ffn,
                    decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False, max_position_embeddings=max_positions,
                    rms_norm_eps=1e-6, rope_theta=rope_theta, **MOE_FIELDS, **common)
    if arch == "qwen3_moe":     # llama.cpp's qwen3moe always normalizes the top-k weights, as Qwen3-30B-A3B does
        return dict(geometry, head_dim=hidden // heads // 2, num_experts=4, moe_intermediate_size=ffn // 2,
                    norm_topk_prob=True, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                    rope_theta=rope_theta, **MOE_FIELDS, **common)
    if arch == "olmoe":         # llama.cpp's OLMoE has no grouped-query attention
        return dict(geometry, num_key_value_heads=heads, num_experts=4, max_position_embeddings=max_positions, rms_norm_eps=1e-5,
                    rope_theta=rope_theta, pad_token_id=eos, **MOE_FIELDS, **common)
    if arch == "gpt_oss":       # sliding window on even layers (narrower than the test text), sinks; plain RoPE:
        # llama.cpp rounds the YaRN correction range, transformers' gpt-oss does not (truncate=False)
        return dict(geometry, head_dim=hidden // heads, num_local_experts=4, sliding_window=32,
                    layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
                    max_position_embeddings=max_positions, rms_norm_eps=1e-5, pad_token_id=eos,
                    rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, **MOE_FIELDS, **common)
    raise ValueError(arch)


def make_model(folder: Path, arch: str, style: str, *, hidden: int = 256, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, ffn: int = 512, tied: bool = False, vocab_pad: int = 0, chat_template: str | None = None,
               seed: int = 0, dtype=None, rope_theta: float = 10000.0, init: float = 0.05,
               rope_scaling: dict | None = None, max_positions: int = 512) -> Path:
    """Save a random transformers model of `arch` (llama, smollm3, qwen2, qwen3, gpt2, phi3, gemma, gemma2, gemma3,
    olmo2; mixture of experts: mixtral, qwen2_moe, qwen3_moe, olmoe, gpt_oss)
    with a `style` tokenizer in `folder`, its 1-D weights (norms, biases) moved away from their init.
    (`max_positions` sets every family's context; phi3's long rope stays relative to 512.)"""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(style, extra_specials=PHI3_SPECIALS if arch == "phi3" else None)
    save_tokenizer(tok, style, folder, chat_template)
    n_vocab = tok.get_vocab_size() + vocab_pad
    bos = tok.token_to_id(_TOKENIZER_SPECIALS[style]["bos_token"] or _TOKENIZER_SPECIALS[style]["eos_token"])
    eos = tok.token_to_id(_TOKENIZER_SPECIALS[style]["eos_token"])
    common = dict(vocab_size=n_vocab, bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=tied, initializer_range=init)
    fields = _family_fields(arch, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn, eos=eos,
                            rope_theta=rope_theta, rope_scaling=rope_scaling, max_positions=max_positions, common=common)
    model = random_model(arch, seed, **fields)
    with torch.no_grad():   # norms away from 1 so that a wrong norm or missing tensor shows in the logits
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("_bias"):      # gpt-oss keeps its experts' biases as (experts, rows)
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith(ROUTERS):    # decisive routers: no near-tie where float rounding could pick another expert
                p.mul_(10)
    if dtype is not None:
        model = model.to(dtype)
    return save_model(model, folder)


# ------------------------------------------------------------------ the runtime tests' chat model

CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]"]

CHAT_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "What is the capital of France? Tell me a story about a dragon and a knight.",
    "system user assistant Be brief. Hello, how are you today? I am fine, thank you!",
    "Ünïcödé tëxt: café, naïve, 東京, emoji 🙂 and numbers 12345.",
] * 4


def chat_tokenizer(folder: Path, template: str | None, bos: str = "<|im_start|>", eos: str = "<|im_end|>",
                   add_bos: bool = False) -> int:
    """A byte-level BPE (vocab 400, every chat family's specials) saved as tokenizer.json + a hand-written
    tokenizer_config.json carrying `template`; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=CHAT_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CHAT_CORPUS, trainer)
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


def chat_model(folder: Path, template: str | None = CHATML, seed: int = 0, positions: int = 256, **tok_kwargs) -> Path:
    """The runtime tests' tiny llama (hidden 32, 2 layers, 256 positions unless told) with `chat_tokenizer`; its lm_head
    scaled up so that sampled text varies with the seed."""
    import torch
    from tokenizers import Tokenizer

    vocab = chat_tokenizer(folder, template, **tok_kwargs)
    t = Tokenizer.from_file(str(folder / "tokenizer.json"))
    model = random_model("llama", seed, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         bos_token_id=t.token_to_id(tok_kwargs.get("bos", "<|im_start|>")),
                         eos_token_id=t.token_to_id(tok_kwargs.get("eos", "<|im_end|>")), tie_word_embeddings=False)
    with torch.no_grad():   # sharper logits than the tiny init, so sampled text varies with the seed
        model.lm_head.weight.mul_(40)
    return save_model(model, folder)


# ------------------------------------------------------------------ a tiny encoder (embed, ONNX encoder export)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer(vocab_size: int = 300):
    """BERT's tokenizer layout (lowercasing BertNormalizer, WordPiece, [CLS] text [SEP]) trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus(5), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                                                  show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def save_wordpiece(tok, folder: Path):
    """The WordPiece tokenizer saved as transformers saves BERT's (tokenizer.json + tokenizer_config.json)."""
    import transformers

    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                                model_max_length=128).save_pretrained(folder)


def bert_model(folder: Path, pooling: str | None = "mean", normalize: bool = True, seed: int = 0, hidden: int = 32,
               layers: int = 2) -> Path:
    """A random `BertModel` (hidden 32, 2 layers, 128 positions) with a trained WordPiece tokenizer; with `pooling`
    (a sentence-transformers mode: mean, cls, max, mean_sqrt_len, weightedmean, lasttoken) it is a
    sentence-transformers folder: modules.json, 1_Pooling/config.json and, with `normalize`, a Normalize module."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer()
    save_wordpiece(tok, folder)
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=128)
    torch.manual_seed(seed)
    transformers.BertModel(config).eval().save_pretrained(folder)
    if pooling is not None:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        modes = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
        declared = {"word_embedding_dimension": hidden,
                    **{f"pooling_mode_{m}": m.removesuffix("_tokens").removesuffix("_token") == pooling for m in modes}}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(declared, indent=2))
    return folder


def train_unigram(vocab_size: int = 400):
    """A SentencePiece-style Unigram `tokenizers.Tokenizer` laid out like T5's tokenizer.json (Metaspace words,
    SentencePiece's whitespace collapsing, `</s>` after the text), trained on CORPUS."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\A +| +\z"), ""),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(_corpus(20), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return tok
