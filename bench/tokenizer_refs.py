"""GGUF -> HF tokenizers against llama.cpp's own reference vocabularies (real models' tokenizers).

llama.cpp ships `models/ggml-vocab-<name>.gguf` with `.inp` texts and `.out` token ids (made by the models'
Hugging Face tokenizers; llama.cpp's test-tokenizer-0 checks itself against them). For each vocabulary,
modelport rebuilds tokenizer.json from the GGUF alone (`hf_tokenizer.from_gguf`) and tokenizes the texts;
the line says how many match the reference ids, and llama.cpp's own count on the same file (vocab-only load).

    python bench/tokenizer_refs.py [LLAMA_CPP_SOURCE_DIR]

The folder defaults to the llama.cpp vendored in the llama-cpp-python sdist (see docs); it is only read.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from modelport.core.errors import ModelportError  # noqa: E402
from modelport.formats.gguf import open_gguf  # noqa: E402
from modelport.gguf.hf_tokenizer import from_gguf  # noqa: E402

DEFAULT = Path("/work/vendor/llama_cpp_python-0.3.36/vendor/llama.cpp")
SEP = "\n__ggml_vocab_test__\n"


def cases(gguf: Path) -> list[tuple[str, list[int]]]:
    texts = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split(SEP)
    outs = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    texts = texts[:-1] if texts and texts[-1].strip() == "__ggml_vocab_test__" else texts
    return [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]


def main() -> None:
    import llama_cpp

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    for gguf in sorted((root / "models").glob("ggml-vocab-*.gguf")):
        if not gguf.with_name(gguf.name + ".inp").is_file():
            continue
        meta = open_gguf(gguf).metadata
        name = f"{meta.get('tokenizer.ggml.model')}/{meta.get('tokenizer.ggml.pre', '-')}"
        todo = cases(gguf)
        llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
        cpp = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == ids for t, ids in todo)
        llm.close()
        try:
            tok = from_gguf(meta, gguf).tokenizer
        except ModelportError as e:
            print(f"{gguf.name:34} {name:24} llama.cpp {cpp}/{len(todo)}  modelport: {e}", flush=True)
            continue
        ours = [(t, ids, tok.encode(t, add_special_tokens=False).ids) for t, ids in todo]
        bad = [(t, ids, got) for t, ids, got in ours if got != ids]
        print(f"{gguf.name:34} {name:24} llama.cpp {cpp}/{len(todo)}  modelport {len(todo) - len(bad)}/{len(todo)}"
              + (f"  first miss: {bad[0][0][:40]!r}" if bad else ""), flush=True)


if __name__ == "__main__":
    main()
