"""transformers, for Hugging Face folders, single weight files with a config beside them, and GGUF.

Loading: a folder of safetensors goes through `from_pretrained` (the library's own path); any other
weight file (a .bin/.pt, a lone .safetensors, ...) is built from its config with `from_config` and
filled from modelport's own pickle-free readers, so no checkpoint is ever unpickled. A GGUF goes
through transformers' GGUF loader (dequantized to float32), which is how the same file can be run
in both engines. Remote code is never trusted; nothing is downloaded. Weights run in float32 on
CPU (bf16 matmuls are slow there and round differently).
"""

from __future__ import annotations

import inspect

import numpy as np

from ..core.errors import FormatError, MissingDependencyError
from ..core.source import ModelSource, safe_member
from .chat_template import folder_of
from .tokenizer import TokenizerEngine, library_logs, token_ids


def _import():
    try:
        import torch
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "torch", "running a model with transformers") from None
    return torch, transformers


class HFEngine(TokenizerEngine):
    name = "transformers"

    def __init__(self, source: ModelSource, ctx: int | None = None):
        super().__init__()
        torch, tf = _import()
        self._torch = torch
        common = dict(local_files_only=True, trust_remote_code=False)
        with library_logs(tf):
            self._load(tf, torch, source, common)
        self.model.eval()
        config = self.model.config
        self.n_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self.n_ctx = int(ctx or getattr(config, "max_position_embeddings", None) or 2048)
        self.use_tokenizer(self.tokenizer, source, token_ids(getattr(self.model.generation_config, "eos_token_id", None)))
        params = inspect.signature(self.model.forward).parameters
        self._has_logits_to_keep = "logits_to_keep" in params
        self._cache_arg = "cache" if "cache" in params else "past_key_values"   # renamed in transformers 5.x
        self._cache = None

    def _load(self, tf, torch, source: ModelSource, common: dict) -> None:
        path = source.path
        try:
            if source.format == "gguf":
                self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, **common)
                self.model = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                     dtype=torch.float32, **common)
            else:
                folder = folder_of(source)
                if not safe_member(folder, "config.json", "config").is_file():
                    raise FormatError("transformers needs config.json beside the weights", folder)
                self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), **common)
                if path.is_dir() and source.format == "safetensors":
                    self.model = tf.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **common)
                else:
                    self.model = self._from_tensors(tf, torch, source, folder, common)
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(f"transformers could not load this model ({str(exc).splitlines()[0]})", path) from None

    @staticmethod
    def _from_tensors(tf, torch, source: ModelSource, folder, common):
        config = tf.AutoConfig.from_pretrained(str(folder), **common)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        expected = model.state_dict()
        state = {}
        for name, ref in source.tensors.items():
            if name not in expected:
                raise FormatError(f"tensor {name!r} is not part of a {type(model).__name__}", source.path)
            if tuple(ref.shape) != tuple(expected[name].shape):
                raise FormatError(f"tensor {name!r} has shape {tuple(ref.shape)}, the config wants "
                                  f"{tuple(expected[name].shape)}", source.path)
            state[name] = torch.from_numpy(np.array(ref.read(), dtype=np.float32))
        missing = set(model.load_state_dict(state, strict=False).missing_keys)
        model.tie_weights()
        tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
        if missing - tied:
            raise FormatError(f"missing tensors: {', '.join(sorted(missing - tied)[:5])}", source.path)
        return model

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        torch = self._torch
        if self._cache is None:
            from transformers import DynamicCache
            self._cache = DynamicCache(config=self.model.config)
        kwargs = {"logits_to_keep": 0 if all_logits else 1} if self._has_logits_to_keep else {}
        kwargs[self._cache_arg] = self._cache
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True, **kwargs)
        logits = out.logits[0].float()
        return logits.numpy().copy() if all_logits else logits[-1].numpy().copy()

    def _truncate(self, n: int) -> int:
        if n == 0 or self._cache is None:
            self._cache = None
            return 0
        if n < len(self._cached):
            try:
                self._cache.crop(n - len(self._cached))
            except (ValueError, NotImplementedError):   # caches that cannot be cut back start over
                self._cache = None
                return 0
        return n
