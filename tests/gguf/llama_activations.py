"""The oracle for `modelport imatrix`: what llama-imatrix collects, from llama.cpp itself through llama-cpp-python.

The scheduler's eval callback (`cb_eval`, the hook llama-imatrix uses) sees every MUL_MAT and MUL_MAT_ID; as
llama-imatrix does, a MUL_MAT of a `blk.*` weight with at least 16 F32 rows adds the squared rows of its input to that
weight's sums, and a MUL_MAT_ID (stacked experts) adds each token's input to the row of every expert the token was
routed to (the ids in its third source), counting tokens per expert. Shared by tests/gguf/test_imatrix.py and
bench/imatrix.py; needs no llama.cpp build, only the llama_cpp package.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np


def _tensor_struct():
    class Tensor(ctypes.Structure):
        pass

    Tensor._fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                       ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                       ("flags", ctypes.c_int32), ("src", ctypes.POINTER(Tensor) * 10),
                       ("view_src", ctypes.POINTER(Tensor)), ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
                       ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]
    return Tensor


def _view(t, dtype, count: int) -> np.ndarray:
    ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_int32
    return np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctype)), shape=(count,))


def llama_cpp_imatrix(gguf: Path, text: str, ctx: int, chunks: int = 0,
                      threads: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run `gguf` on `text` in chunks of `ctx` tokens (BOS first when the vocabulary adds one, each chunk from an empty
    cache) and return GGUF name -> (sums float64 of shape (n_mat, ncols), token counts int64 of shape (n_mat,))."""
    import llama_cpp

    Tensor = _tensor_struct()
    base = ctypes.CDLL(str(sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so*"))[0]))
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    sums: dict[str, list] = {}

    @ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
    def callback(ptr, ask, user):
        try:
            return collect(ptr, ask)
        except Exception as exc:          # a ctypes callback must not raise: report it and stop the decode
            print(f"eval callback: {exc!r}", file=sys.stderr)
            return False

    def collect(ptr, ask):
        t = ctypes.cast(ptr, ctypes.POINTER(Tensor)).contents
        op = base.ggml_op_name(t.op)
        if op not in (b"MUL_MAT", b"MUL_MAT_ID"):
            return False if ask else True
        w, x = t.src[0].contents, t.src[1].contents
        name = w.name.decode()
        if ask:
            return op == b"MUL_MAT_ID" or (name.startswith("blk.") and x.ne[1] >= 16 and x.type == 0)
        floats = _view(x, np.float32, (x.ne[3] * x.nb[3]) // 4)
        if op == b"MUL_MAT":
            a = floats[: x.ne[1] * x.nb[1] // 4].reshape(x.ne[1], x.nb[1] // 4)[:, :x.ne[0]].astype(np.float64)
            entry = sums.setdefault(name, [np.zeros((1, x.ne[0])), np.zeros(1, np.int64)])
            entry[0][0] += (a * a).sum(axis=0)
            entry[1][0] += int(x.ne[1])
            return True
        ids = t.src[2].contents                        # [n_expert_used, n_tokens] int32, maybe not contiguous
        n_expert, n_used, n_tokens = int(w.ne[2]), int(ids.ne[0]), int(ids.ne[1])
        id_vals = _view(ids, np.int32, (ids.nb[1] * n_tokens) // 4)
        entry = sums.setdefault(name, [np.zeros((n_expert, x.ne[0])), np.zeros(n_expert, np.int64)])
        for slot in range(n_used):
            for row in range(n_tokens):
                ex = int(id_vals[(row * ids.nb[1] + slot * ids.nb[0]) // 4])
                start = ((slot % x.ne[1]) * x.nb[1] + row * x.nb[2]) // 4
                v = floats[start:start + x.ne[0]].astype(np.float64)
                entry[0][ex] += v * v
                entry[1][ex] += 1
        return True

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = ctx
    params.n_threads = params.n_threads_batch = threads
    params.cb_eval = ctypes.cast(callback, llama_cpp.ggml_backend_sched_eval_callback)
    lctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(ctx, 0, 1)
    try:
        raw = text.encode()
        ids = (llama_cpp.llama_token * (len(raw) + 16))()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), ids, len(ids), True, False)
        tokens = list(ids[:n])
        add_bos = llama_cpp.llama_vocab_get_add_bos(vocab)
        for i in range(min(chunks or n // ctx, n // ctx)):
            chunk = tokens[i * ctx:(i + 1) * ctx]
            if add_bos:
                chunk[0] = llama_cpp.llama_vocab_bos(vocab)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(lctx), True)
            for k, tok in enumerate(chunk):     # every position an output, as llama-imatrix asks: otherwise the
                batch.token[k], batch.pos[k] = tok, k          # last layer's FFN runs on the last token only
                batch.n_seq_id[k], batch.seq_id[k][0], batch.logits[k] = 1, 0, True
            batch.n_tokens = ctx
            if llama_cpp.llama_decode(lctx, batch) != 0:
                raise RuntimeError(f"llama_decode failed on chunk {i}")
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(lctx)
        llama_cpp.llama_model_free(model)
    return {k: (v[0], v[1]) for k, v in sums.items()}
