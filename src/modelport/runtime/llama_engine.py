"""llama.cpp through llama-cpp-python, for GGUF files.

llama-cpp-python's `Llama` loads the model and owns the context; we drive its context and batch
directly (`llama_decode`, `llama_get_logits_ith`) instead of `Llama.eval`/`create_chat_completion`
so that prompts arrive as token ids rendered by `chat_template.py`, every position's logits are
available for `compare`/`perplexity` without `logits_all` (which allocates n_ctx x vocab floats),
and sampling is the shared one. Threads: all cores this process may use. Context: `--ctx`, else
the model's own length.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

from ..core.errors import FormatError, MissingDependencyError, UnsupportedError
from ..core.source import ModelSource
from .base import Engine, cores
from .chat_template import gguf_special_tokens, template_for

# llama.cpp logs from C (model loading, cache notes such as "llama_kv_cache_iswa: using full-size SWA cache"),
# some of them past llama-cpp-python's `verbose=False`: our own callback drops them unless `show_logs(True)`.
_logs = {"show": False, "callback": None}


def show_logs(show: bool) -> None:
    """Let llama.cpp's own log lines through to stderr (the CLI's `--verbose`/`--debug`), or drop them (default)."""
    _logs["show"] = show


def _forward_log(level: int, text: bytes, user_data) -> None:
    if _logs["show"] and text:
        sys.stderr.write(text.decode("utf-8", errors="replace"))
        sys.stderr.flush()


def install_log_callback(llama_cpp) -> None:
    """Route llama.cpp's logging through `_forward_log` (the ctypes callback is kept alive here)."""
    if _logs["callback"] is None:
        _logs["callback"] = llama_cpp.llama_log_callback(_forward_log)
    llama_cpp.llama_log_set(_logs["callback"], ctypes.c_void_p(0))


class LlamaEngine(Engine):
    name = "llama.cpp"

    def __init__(self, source: ModelSource, ctx: int | None = None, threads: int | None = None):
        super().__init__()
        if source.format != "gguf":
            raise UnsupportedError(f"llama.cpp runs GGUF files, not {source.format} "
                                   "(convert with 'modelport convert', or use --engine hf)", source.path)
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependencyError("llama-cpp-python", "llama", "running a GGUF with llama.cpp") from None
        self._lib = llama_cpp
        install_log_callback(llama_cpp)
        config = source.config or {}
        n_ctx = int(ctx or config.get("max_position_embeddings") or 4096)
        threads = threads or cores()
        try:
            self.llm = llama_cpp.Llama(model_path=str(source.path), n_ctx=n_ctx, n_batch=min(512, n_ctx),
                                       n_threads=threads, n_threads_batch=threads, verbose=_logs["show"])
        except ValueError as exc:
            raise FormatError(f"llama.cpp could not load this file ({exc})", source.path) from None
        self.threads = threads
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.bos_id = self.llm.token_bos() if self.llm.token_bos() >= 0 else None
        self.add_bos = bool(self.llm.tokenize(b"", add_bos=True, special=True))
        self._tokens = source.metadata.get("tokenizer.ggml.tokens")
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        stops = {i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        for key in ("eos", "eot", "eom"):
            value = source.metadata.get(f"tokenizer.ggml.{key}_token_id")
            if value is not None and 0 <= int(value) < self.n_vocab:
                stops.add(int(value))
        self.stop_ids = frozenset(stops)
        self.template = template_for(source)
        if self.template is not None:
            self.template.special_tokens = gguf_special_tokens(source.metadata)
        self._sequences: list[LlamaSequences] = []     # multi-sequence contexts on this model, closed with it

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def detokenize(self, ids: list[int]) -> str:
        return self.llm.detokenize(list(ids), special=False).decode("utf-8", errors="replace")

    def vocabulary(self) -> list[str]:
        if self._tokens is not None:
            return [str(t) for t in self._tokens.tolist()]
        return [self.llm._model.token_get_text(i) for i in range(self.n_vocab)]

    def _decode(self, ids: list[int], all_logits: bool) -> np.ndarray:
        ctx, batch, width = self.llm._ctx, self.llm._batch, self.n_vocab
        n_past = len(self._cached)
        rows = []
        for start in range(0, len(ids), self.llm.n_batch):
            chunk = ids[start:start + self.llm.n_batch]
            batch.set_batch(chunk, n_past=n_past, logits_all=all_logits)
            try:
                ctx.decode(batch)
            except RuntimeError as exc:
                raise UnsupportedError(f"llama.cpp failed to run the tokens ({exc})") from None
            n_past += len(chunk)
            if all_logits:
                rows.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), width)).copy())
        if all_logits:
            return np.concatenate(rows)
        return np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(width,)).copy()

    def _truncate(self, n: int) -> int:
        if n == 0 or not self.llm._ctx.kv_cache_seq_rm(-1, n, -1):   # recurrent models cannot cut back
            self.llm._ctx.kv_cache_clear()
            return 0
        return n

    def open_sequences(self, parallel: int) -> LlamaSequences:
        """A second llama.cpp context on the same loaded weights that holds `parallel` independent sequences,
        each with this engine's context length (for `runtime.batching.Batcher`). run/chat keep the first one."""
        sequences = LlamaSequences(self, parallel)
        self._sequences = [s for s in self._sequences if s.ctx] + [sequences]
        return sequences

    def close(self) -> None:
        for sequences in getattr(self, "_sequences", ()):
            sequences.close()                       # before the model they point into
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None


class LlamaSequences:
    """`parallel` sequences decoded together: one `llama_decode` can advance every one of them by a token.

    A context of its own (n_seq_max = parallel) built from the engine's model pointer and its context
    parameters, so the weights are shared and the numerics match the engine's (same threads, batch size, KV
    type, attention). The KV cache is not unified: n_ctx = parallel x the engine's context, one stream per
    sequence, so every slot is guaranteed the whole per-sequence context (a long answer cannot starve the
    others) and each token attends only over its own sequence's cells. The price is memory reserved up front
    for every slot, as llama.cpp's server does with --parallel without --kv-unified. Each sequence is
    identified by its seq_id (0 .. parallel-1); positions are the caller's to track.
    """

    def __init__(self, engine: LlamaEngine, parallel: int):
        lib = engine._lib
        params = lib.llama_context_params.from_buffer_copy(engine.llm.context_params)
        params.n_seq_max = parallel
        params.n_ctx = engine.n_ctx * parallel
        params.kv_unified = False
        self._lib = lib
        self.ctx = lib.llama_init_from_model(engine.llm._model.model, params)
        if not self.ctx:
            raise UnsupportedError(f"llama.cpp could not make a context for {parallel} sequences of "
                                   f"{engine.n_ctx} tokens (try a smaller --ctx or --parallel)")
        self.parallel = parallel
        self.n_ctx = min(engine.n_ctx, lib.llama_n_ctx_seq(self.ctx))
        self.n_batch = lib.llama_n_batch(self.ctx)
        self.n_vocab = engine.n_vocab
        self._memory = lib.llama_get_memory(self.ctx)
        self._capacity = max(self.n_batch, parallel)
        self._batch = lib.llama_batch_init(self._capacity, 0, 1)

    def prefill(self, seq: int, ids: list[int], start: int) -> np.ndarray:
        """Run a chunk of a prompt (at most n_batch tokens) at positions start.. of sequence `seq`; the logits
        of its last token (1-D)."""
        rows = [(seq, token, start + i) for i, token in enumerate(ids)]
        return self._run(rows, outputs=[len(rows) - 1])[0]

    def decode(self, rows: list[tuple[int, int, int]]) -> np.ndarray:
        """One token for each (seq, token, position) row, all in one `llama_decode`; logits per row (2-D)."""
        return self._run(rows, outputs=list(range(len(rows))))

    def _run(self, rows: list[tuple[int, int, int]], outputs: list[int]) -> np.ndarray:
        if not 0 < len(rows) <= self._capacity:
            raise UnsupportedError(f"llama.cpp batch of {len(rows)} tokens (at most {self._capacity})")
        batch, wanted = self._batch, set(outputs)
        for i, (seq, token, pos) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i in wanted
        batch.n_tokens = len(rows)
        code = self._lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise UnsupportedError(f"llama.cpp failed to run the batch (llama_decode returned {code})")
        out = np.empty((len(outputs), self.n_vocab), dtype=np.float32)
        for row, i in enumerate(outputs):
            out[row] = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return out

    def keep(self, seq: int, n: int) -> int:
        """Keep only the first `n` positions of sequence `seq`; how many it kept (0 where a model's state
        cannot be cut back, as a recurrent one's)."""
        if n > 0 and self._lib.llama_memory_seq_rm(self._memory, seq, n, -1):
            return n
        self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)     # removing a whole sequence never fails
        return 0

    def close(self) -> None:
        if self.ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self.ctx)
            self.ctx = None
